"""Training-time augmentation and input normalisation, applied per batch on tensors.

Sources return a few hundred fixed images; recovery and adaptor training see thousands of
batches, so every batch is re-augmented on the fly, on whatever device the batch lives on
(kornia works on tensors, batch-wise). Randomness comes from torch's global generator, so
``torch.manual_seed`` makes a CPU run repeat exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence, get_args

import kornia.augmentation as K
import torch
from torch import nn

from .config import Mixing

SMALL_INPUT_MAX = 64
"""Inputs this size or smaller get CIFAR-style augmentation (pad 4, random crop, flip)."""

RESIZED_CROP_SCALE = (0.25, 1.0)
"""Area range of ImageNet-style random-resized crops; narrower than the usual (0.08, 1) because
a tiny set cannot afford crops that lose most of the object."""


def train_augmentation(image_size: int) -> nn.Module:
    """Per-batch augmentation for images already at ``image_size``; in and out in [0, 1].

    Small inputs: zero-pad 4, random crop back to s x s, horizontal flip (the CIFAR recipe).
    Larger: random-resized crop to s x s (scale 0.25-1) and flip (the ImageNet recipe).
    """
    size = (image_size, image_size)
    if image_size <= SMALL_INPUT_MAX:
        crop: nn.Module = K.RandomCrop(size, padding=4)
    else:
        crop = K.RandomResizedCrop(size, scale=RESIZED_CROP_SCALE)
    return nn.Sequential(crop, K.RandomHorizontalFlip())


def mixing(kind: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Blend each image of a batch with another of the same batch; None for ``none``.

    A method that learns from the teacher's outputs on the very images the student sees (MiR, KD)
    needs no labels for a blended image, so a tiny set of N images offers about N^2 / 2 inputs
    instead of N (the "function matching" of Beyer et al., CVPR 2022). ``mixup``: a pixel-wise
    blend with a weight drawn uniformly from [0, 1] per image (Zhang et al., ICLR 2018); ``cutmix``:
    a rectangle pasted from the partner (Yun et al., ICCV 2019). kornia draws from torch's
    generator, so a seeded run repeats. In and out in [0, 1], N x C x H x W.
    """
    if kind not in get_args(Mixing):
        raise ValueError(f"unknown mixing {kind!r}; known: {', '.join(get_args(Mixing))}")
    if kind == "none":
        return None
    blend = K.RandomMixUpV2(p=1.0) if kind == "mixup" else K.RandomCutMixV2(p=1.0, use_correct_lambda=True)

    def mixed(images: torch.Tensor) -> torch.Tensor:
        return blend(images) if len(images) > 1 else images

    return mixed


def _channel_view(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(images - mean) / std per channel, for N x C x H x W batches in [0, 1]; not in place."""
    return (images - _channel_view(mean, images)) / _channel_view(std, images)


class Normalize(nn.Module):
    """``normalize`` as a module, with mean/std as buffers so ``.to(device)`` carries them."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
