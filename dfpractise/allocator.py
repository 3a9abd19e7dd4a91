"""A steady C heap for timing: the same forward must cost the same in any process.

glibc's malloc serves large blocks (a batch's activations) with ``mmap`` and hands them back to
the kernel when freed, until a freed block raises its thresholds; the kernel then zero-fills
fresh pages on every forward. How far the thresholds have risen depends on what the process did
before (a training loop raises them, a fresh ``dfpractise latency`` process has not), and the
page faults slow a large model more than a pruned one: on ResNet-56 at batch 64 the same
pair read a 31% cut in the run that trained it and 40-49% in a fresh process. Fixing both
thresholds before timing (large blocks from the heap, freed memory kept up to
``TRIM_THRESHOLD``) made a fresh process read 32-34%, as the run did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit)."""
TRIM_THRESHOLD = 512 * 1024 * 1024
"""Freed heap memory kept by the process instead of being returned to the kernel, at most."""


@functools.cache
def steady_allocator() -> bool:
    """Fix glibc's malloc thresholds for this process (once); False where there is no glibc.

    The setting stays for the life of the process: the process keeps up to ``TRIM_THRESHOLD`` of
    freed memory, which is the price of timings that do not depend on its history.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None
