"""Mixed precision for the training loops: bf16 autocast where the hardware does bf16 natively.

Recovery and the adaptor fits spend nearly all their time in convolutions and matrix products.
CPUs with AVX-512 BF16 (or AMX) and recent GPUs run those about twice as fast in bfloat16, and
bf16 keeps float32's exponent range, so no loss scaling is needed. Weights, optimiser state and
the loss stay float32 (autocast only lowers the operands of the heavy ops); on hardware without
native bf16 the emulation is slower than float32, so ``auto`` keeps float32 there.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from synthesizers.precision import native_bf16  # one answer for both packages


def resolve(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` means on ``device``: bf16, or None for plain float32.

    ``bf16`` is honoured everywhere (emulated, slowly, where not native); ``auto`` picks bf16
    only where it is native.
    """
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def name(dtype: torch.dtype | None) -> str:
    """What a report calls the precision a loop ran in."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None, device: str | torch.device) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for float32."""
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
