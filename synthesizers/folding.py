"""A copy of a teacher with each BatchNorm folded into the convolution before it, for inversion.

BN inversion needs the batch statistics of every BatchNorm layer's input. In eval mode a BatchNorm
is a per-channel affine map, y = scale * x + shift, so the convolution that feeds it can absorb it
(torch's ``fuse_conv_bn_eval``), and the statistics of its input follow from those of the folded
convolution's output z = y: mean_x = (mean_z - shift) / scale, var_x = var_z / scale^2. The copy
computes the same function without the BatchNorm's pass over the activation, forward and backward,
which on a small CIFAR network at batch 256 is a large share of an inversion step.

Pairs are found from one recorded forward (the BatchNorm's input is the tensor the convolution has
just returned, and each is called once), as the rest of the toolkit reads models, not by tracing.
A pair is left unfolded where a channel's scale is zero, whose input statistics the output cannot
give back. The copy is given up for the teacher as it is unless its logits on the probe equal the
teacher's: a convolution whose output is also used elsewhere would change what that use sees.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .bn_stats import batchnorm_layers

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class FoldedBatchNorm:
    """A BatchNorm folded into a convolution of the copy: its running statistics, and the per-channel
    affine map from its input to the folded convolution's output."""

    batchnorm: nn.modules.batchnorm._BatchNorm
    scale: torch.Tensor
    shift: torch.Tensor

    def input_moments(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The BatchNorm input's mean and variance from those of the folded output."""
        return (mean - self.shift) / self.scale, var / self.scale.square()


@dataclass
class FoldedTeacher:
    """``model``: the copy to invert through; ``folded``: its convolutions that absorbed a BatchNorm."""

    model: nn.Module
    folded: dict[nn.Module, FoldedBatchNorm]


def fold_batchnorms(teacher: nn.Module, probe: torch.Tensor) -> FoldedTeacher:
    """A copy of ``teacher`` (eval mode) with every foldable BatchNorm folded, checked on ``probe``;
    the teacher itself, nothing folded, where no pair is found or the check fails."""
    pairs, wanted = _pairs(teacher, probe)
    if not pairs:
        return FoldedTeacher(teacher, {})
    names = {module: name for name, module in teacher.named_modules()}
    model = copy.deepcopy(teacher).eval()
    modules = dict(model.named_modules())
    folded = {}
    for conv, batchnorm in pairs:
        scale = (batchnorm.weight if batchnorm.affine else torch.ones_like(batchnorm.running_var)) \
            / torch.sqrt(batchnorm.running_var + batchnorm.eps)
        shift = (batchnorm.bias if batchnorm.affine else torch.zeros_like(scale)) - scale * batchnorm.running_mean
        fused = fuse_conv_bn_eval(modules[names[conv]], modules[names[batchnorm]])
        model.set_submodule(names[conv], fused)
        model.set_submodule(names[batchnorm], nn.Identity())
        folded[fused] = FoldedBatchNorm(batchnorm, scale.detach().float(), shift.detach().float())
    with torch.no_grad():
        if not torch.allclose(model(probe).float(), wanted, rtol=1e-3, atol=1e-3):
            return FoldedTeacher(teacher, {})
    return FoldedTeacher(model, folded)


def _pairs(teacher: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[nn.Module, nn.Module]], torch.Tensor]:
    """(convolution, BatchNorm) pairs where the BatchNorm read exactly what the convolution returned,
    each called once in a forward of ``probe``, and every channel's scale is nonzero; and the
    teacher's logits of that forward (what the folded copy must reproduce)."""
    layers = set(batchnorm_layers(teacher))
    calls: dict[nn.Module, int] = {}
    last: dict[str, object] = {}
    pairs = []

    def record(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        if isinstance(module, CONVOLUTIONS):
            last["conv"], last["output"] = module, output
        elif module in layers and inputs and inputs[0] is last.get("output"):
            pairs.append((last["conv"], module))

    handles = [m.register_forward_hook(record) for m in teacher.modules() if isinstance(m, CONVOLUTIONS) or m in layers]
    try:
        with torch.no_grad():
            logits = teacher.eval()(probe).float()
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, bn) for conv, bn in pairs
            if calls[conv] == calls[bn] == 1 and (not bn.affine or bool((bn.weight != 0).all()))], logits
