"""How far a batch's BatchNorm statistics are from a network's running statistics.

Both BN-statistics inversion (which minimises it) and the synthetic-set quality report (which
reports it) need the same number, so it is measured in one place: forward hooks on every
BatchNorm layer record ||mean_batch - running_mean||_2 + ||var_batch - running_var||_2 for the
layer's input, as in DeepInversion (Yin et al., CVPR 2020, eq. 4).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

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
        mean, var = ChannelMoments.apply(inputs[0])
        self.distances.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def pop(self) -> list[torch.Tensor]:
        """Distances of the last forward (one per layer, in call order), and forget them."""
        distances, self.distances = self.distances, []
        return distances


class ChannelMoments(torch.autograd.Function):
    """Per-channel mean and (biased) variance of an N x C x ... activation, in float32 whatever its dtype.

    Inverting a small CIFAR network spends most of each step here, not in its convolutions (in
    ``x.var`` and its backward, on ResNet-56); written out, the statistics take one pass over a
    channels-last activation (where the channels are the innermost dimension) and the gradient,
    g_mean / n + 2 g_var (x - mean) / n, one more.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.movedim(1, -1).reshape(-1, x.shape[1]).float()  # a view for channels-last float32
        mean = flat.mean(0)
        var = ((flat * flat).mean(0) - mean * mean).clamp_min_(0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        g_var = torch.zeros_like(mean) if g_var is None else g_var
        grad = torch.addcmul((g_mean / n).view(shape), x - mean.view(shape), (2 * g_var / n).view(shape))
        return grad.to(x.dtype)


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
