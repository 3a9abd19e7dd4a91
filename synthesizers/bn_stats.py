"""How far a batch's BatchNorm statistics are from a network's running statistics.

Both BN-statistics inversion (which minimises it) and the synthetic-set quality report (which
reports it) need the same number, so it is measured in one place: forward hooks on every
BatchNorm layer record ||mean_batch - running_mean||_2 + ||var_batch - running_var||_2 for the
layer's input, as in DeepInversion (Yin et al., CVPR 2020, eq. 4).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

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
        self._add(mean, var, module)

    def _folded_hook(self, folded: Any) -> Callable[..., None]:
        """The hook of a convolution that absorbed a BatchNorm (``synthesizers.folding``): the
        BatchNorm's input statistics from the convolution's output."""

        def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._add(*folded.input_moments(*ChannelMoments.apply(output)), folded.batchnorm)

        return hook

    def _add(self, mean: torch.Tensor, var: torch.Tensor, layer: nn.Module) -> None:
        self.distances.append(
            torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(var - layer.running_var)
        )

    def pop(self) -> list[torch.Tensor]:
        """Distances of the last forward (one per layer, in call order), and forget them."""
        distances, self.distances = self.distances, []
        return distances


class ChannelMoments(torch.autograd.Function):
    """Per-channel mean and (biased) variance of an N x C x ... activation, in float32 whatever its dtype.

    Inverting a small CIFAR network spends most of each step here, not in its convolutions. The
    statistics come from torch's batch-norm statistics kernel (``batch_norm_update_stats``, one
    vectorised pass in any layout; with float32 running buffers it accumulates and returns float32
    for bf16 input too), where reducing a float32 copy took several times longer at 32x32. Its
    buffers here are scratch (momentum 0 leaves them as they were). The gradient,
    g_mean / n + 2 g_var (x - mean) / n, is one multiply-add a * x + b in the activation's dtype,
    since mixed-dtype elementwise work is slow on CPU; in bf16 it rounds as the bf16 backward
    around it does.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        scratch = torch.zeros(2, x.shape[1], dtype=dtype, device=x.device)
        mean, var = torch.batch_norm_update_stats(x, scratch[0], scratch[1], 0.0)  # biased variance
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        g_var = torch.zeros_like(mean) if g_var is None else g_var
        scale = 2 * g_var / n
        shift = g_mean / n - scale * mean
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


@contextmanager
def bn_statistics(model: nn.Module, folded: Mapping[nn.Module, Any] | None = None) -> Iterator[BNStatistics]:
    """Hook every BatchNorm layer of ``model`` for the duration of the block, and every convolution
    of ``folded`` (a BatchNorm folded into it, ``synthesizers.folding``) in its BatchNorm's stead."""
    layers = batchnorm_layers(model)
    stats = BNStatistics(layers + [f.batchnorm for f in (folded or {}).values()])
    handles = [layer.register_forward_hook(stats._hook) for layer in layers]
    handles += [conv.register_forward_hook(stats._folded_hook(f)) for conv, f in (folded or {}).items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
