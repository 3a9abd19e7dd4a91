"""What the synthesizers that invert a teacher share: their loss, augmentation and checks.

BN-statistics inversion optimises pixels and the generator optimises a network that makes them,
but both ask the same of an image batch (Yin et al., "Dreaming to Distill", CVPR 2020): every
BatchNorm layer's batch statistics match its running ones (the first layer weighted up), the
teacher classifies each image as its intended class, total variation keeps them smooth; and both
show the teacher a jittered, flipped copy each step. One implementation, so the two cannot drift.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.losses import total_variation
from torch import nn

from .errors import ConfigError


class InversionLoss:
    """The weighted inversion loss of a batch of pixels in [0, 1].

    ``weights`` names the terms: ``ce``, ``bn``, ``tv``, and optionally ``l2`` (input norm) and
    ``competition`` (Adaptive DeepInversion: 1 - Jensen-Shannon divergence between teacher and
    ``student`` at ``temperature``, so images where they disagree are favoured; softened, because on
    images both are sure of the divergence saturates and gives no gradient). Terms are computed in
    float32 even under bf16 autocast.
    """

    def __init__(self, teacher: nn.Module, mean: torch.Tensor, std: torch.Tensor, weights: dict[str, float],
                 first_bn_multiplier: float, student: nn.Module | None = None, temperature: float = 1.0):
        self.teacher, self.student = teacher, student
        self.mean, self.std = mean, std
        self.weights = dict(weights)
        self.first_bn_multiplier = first_bn_multiplier
        self.temperature = temperature

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, stats) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = (pixels - self.mean) / self.std
        stats.pop()
        logits = self.teacher(inputs).float()
        distances = [d.float() for d in stats.pop()]
        terms = {
            "ce": F.cross_entropy(logits, labels),
            "bn": distances[0] * self.first_bn_multiplier + sum(distances[1:]),
            "tv": total_variation(pixels.float(), reduction="mean").mean(),
        }
        if "l2" in self.weights:
            terms["l2"] = inputs.float().flatten(1).norm(dim=1).mean() / math.sqrt(inputs[0].numel())
        if self.student is not None and self.weights.get("competition", 0) > 0:
            t = self.temperature
            terms["competition"] = 1.0 - jensen_shannon(logits / t, self.student(inputs).float() / t)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(loss.detach())
        return loss, values


def jensen_shannon(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence of two predictions (in nats, at most ln 2)."""
    p, q = logits_a.softmax(1), logits_b.softmax(1)
    m = (0.5 * (p + q)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean"))


def jitter_and_flip(size: int, jitter: int, flip: bool) -> nn.Module:
    """The per-step augmentation: a reflect-padded random crop of ``jitter`` pixels at 32 px
    (scaled with the size) and a horizontal flip; kornia draws from torch's global generator."""
    pad = max(1, round(jitter * size / 32)) if jitter else 0
    layers: list[nn.Module] = []
    if pad:
        layers.append(K.RandomCrop((size, size), padding=pad, padding_mode="reflect"))
    if flip:
        layers.append(K.RandomHorizontalFlip())
    return nn.Sequential(*layers)


@contextmanager
def channels_last(model: nn.Module, device: torch.device) -> Iterator[bool]:
    """``model`` in channels-last memory order while the block runs, on CPU (oneDNN's fast layout
    for convolutions), given back contiguous after unless it came channels-last; yields whether
    inputs should be converted too."""
    if device.type != "cpu":
        yield False
        return
    weights = [p for p in model.parameters() if p.dim() == 4]
    if weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        yield True  # already so: nothing to convert, nothing to give back
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        model.to(memory_format=torch.contiguous_format)


@contextmanager
def frozen(*models: nn.Module | None) -> Iterator[None]:
    """No parameter gradients in the models while optimising images (half the backward cost), restored after."""
    params = [p for m in models if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not number(name, value) > 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not number(name, value) >= 0:
            raise ConfigError(f"{name} must be zero or more, got {value}")


def number(name: str, value: Any) -> float:
    """``value`` if it is a number; a ConfigError naming the setting if it is text, a list..."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return value
