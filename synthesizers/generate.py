"""The loop around every synthesizer: labels, batches, per-batch seeds, cache, resume, progress.

Batch ``k`` is generated from a seed derived from ``(seed, k)`` alone, so a batch redone after an
interruption is the batch an uninterrupted run would have made; with the cache re-reading PNGs,
a resumed set equals a one-go set image for image. Progress goes out through two plain callbacks
(``on_step`` and ``log``), so a caller shows it however it likes and this package needs no UI
library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from .base import Synthesizer, balanced_labels
from .cache import ImageCache
from .errors import ConfigError, SynthesisError


class ProgressCallback(Protocol):
    """Called after every inner step: steps done so far, steps in all, and live values to show."""

    def __call__(self, done: int, total: int, **fields: float | str) -> None: ...


@dataclass
class SyntheticSet:
    """What ``synthesize`` returns: the images as saved, their intended classes, the cache."""

    images: torch.Tensor
    labels: torch.Tensor
    folder: Path
    settings: dict[str, Any]
    generated_batches: int  # batches made by this call (0 when everything came from the cache)
    seconds: float  # wall time of this call's generation


def batch_seed(seed: int, index: int) -> int:
    """An independent 63-bit seed for batch ``index`` of a set drawn with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def set_settings(synthesizer: Synthesizer, num_images: int, image_size: int, num_classes: int, seed: int) -> dict[str, Any]:
    """The settings a cache folder is keyed by: the synthesizer's plus the set's shape and seed."""
    return {
        "method": synthesizer.name,
        **synthesizer.settings(),
        "batch_size": synthesizer.batch_size,
        "num_images": num_images,
        "image_size": image_size,
        "num_classes": num_classes,
        "seed": seed,
    }


def synthesize(
    synthesizer: Synthesizer,
    num_images: int,
    image_size: int,
    num_classes: int,
    seed: int,
    folder: str | Path,
    *,
    on_step: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    rebuild: bool = False,
) -> SyntheticSet:
    """Generate (or reuse, or finish) ``num_images`` class-balanced images in ``folder``.

    ``on_step`` hears of every inner step of the batches still to make; ``log`` gets one-line
    notes (how many batches the cache already held).
    """
    if num_images < 1:
        raise ConfigError(f"number of images must be at least 1, got {num_images}")
    if image_size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, got {image_size}")
    settings = set_settings(synthesizer, num_images, image_size, num_classes, seed)
    labels = balanced_labels(num_images, num_classes, seed)
    cache = ImageCache(folder, settings, labels.tolist()).open(rebuild=rebuild)
    size = synthesizer.batch_size
    starts = list(range(0, num_images, size))
    todo = [k for k in range(len(starts)) if not cache.has_batch(k)]
    if len(todo) < len(starts) and log is not None:
        log(f"synthetic cache {cache.folder}: {len(starts) - len(todo)} of {len(starts)} batches already made")
    began = time.perf_counter()
    total = len(todo) * synthesizer.steps_per_batch
    steps = 0
    for done, k in enumerate(todo):
        batch_labels = labels[starts[k]:starts[k] + size]

        def report(**fields: float | str) -> None:
            nonlocal steps
            steps += 1
            if on_step is not None:
                on_step(steps, total, batch=f"{done + 1}/{len(todo)}", **fields)

        tick = time.perf_counter()
        try:
            result = synthesizer.generate(batch_labels, image_size, batch_seed(seed, k), report)
        except SynthesisError as err:
            kept = len(cache.batches)
            raise SynthesisError(
                f"{err}; batch {k + 1} of {len(starts)} stopped, the {kept} finished batches "
                f"are kept in {cache.folder}"
            ) from None
        _check_batch(result.images, len(batch_labels), image_size, synthesizer.name)
        stats = {**result.stats, "seconds": round(time.perf_counter() - tick, 2)}
        cache.write_batch(k, starts[k], result.images, stats)
    images = cache.load_images()
    return SyntheticSet(images, labels, cache.folder, settings, len(todo), time.perf_counter() - began)


def _check_batch(images: torch.Tensor, count: int, image_size: int, name: str) -> None:
    expected = (count, 3, image_size, image_size)
    if tuple(images.shape) != expected:
        raise SynthesisError(f"synthesizer {name!r} returned images of shape {tuple(images.shape)}, expected {expected}")
    if not torch.isfinite(images).all():
        raise SynthesisError(f"synthesizer {name!r} returned non-finite pixel values")
