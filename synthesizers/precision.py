"""The precision a synthesizer runs its teacher in: fp32, bf16 autocast, or auto (bf16 where native).

Inverting a teacher is forward and backward passes through it, like training; where the hardware
computes bf16 natively (AVX-512 BF16 or AMX CPUs, recent GPUs) bf16 autocast runs them faster, and
the loss terms stay float32. Where bf16 is only emulated it is slower than float32, so ``auto``
keeps float32 there. ``dfpractise.precision`` asks the same question of its training loops, so the
answer is given here, once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions and matrix products natively (fast)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: Any, device: str | torch.device) -> str:
    """"fp32" or "bf16": what ``precision`` means on ``device`` (a ConfigError for anything else)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast of the forward passes for a resolved ``precision`` "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
