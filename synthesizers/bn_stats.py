"""How far a batch's BatchNorm statistics are from a network's running statistics.

Both BN-statistics inversion (which minimises it) and the synthetic-set quality report (which
reports it) need the same number, so it is measured in one place: forward hooks on every
BatchNorm layer record ||mean_batch - running_mean||_2 + ||var_batch - running_var||_2 for the
layer's input, as in DeepInversion (Yin et al., CVPR 2020, eq. 4).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers with running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.running_mean is not None]


class BNStatistics:
    """Collects one distance per BatchNorm layer during each forward of the hooked model."""

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.distances: list[torch.Tensor] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.distances.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def pop(self) -> list[torch.Tensor]:
        """Distances of the last forward (one per layer, in call order), and forget them."""
        distances, self.distances = self.distances, []
        return distances


@contextmanager
def bn_statistics(model: nn.Module) -> Iterator[BNStatistics]:
    """Hook every BatchNorm layer of ``model`` for the duration of the block."""
    stats = BNStatistics(batchnorm_layers(model))
    handles = [layer.register_forward_hook(stats._hook) for layer in stats.layers]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
