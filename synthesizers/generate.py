"""The loop around every synthesizer: labels, batches, per-batch seeds, cache, resume, progress.

Batch ``k`` is generated from a seed derived from ``(seed, k)`` alone, so a batch redone after an
interruption is the batch an uninterrupted run would have made; with the cache re-reading PNGs,
a resumed set equals a one-go set image for image. Progress goes out through two plain callbacks
(``on_step`` and ``log``), so a caller shows it however it likes and this package needs no UI
library.

Several processes can make one set together (``Workers``: a rank, a count and an all-gather,
passed in by the caller, so this package knows nothing of ``torch.distributed``). The batches
still to make are dealt out in rounds, batch ``todo[r + N * j]`` to rank ``r`` in round ``j``;
each rank writes its batch's PNGs, and rank 0 alone writes the index, once per round, after
gathering every rank's batch statistics. A batch is in the index only once its PNGs are all
written, so a kill at any moment leaves a folder that resumes (with any number of processes) to
the same bytes as a one-process run with the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from .base import Synthesizer, balanced_labels
from .cache import ImageCache
from .errors import ConfigError, SynthesisError


@dataclass(frozen=True)
class Workers:
    """The processes making one set together: this one is ``rank`` of ``size``; ``all_gather(obj)``
    returns every worker's ``obj`` in rank order on every worker (``torch.distributed``'s
    ``all_gather_object``, or anything alike). The default is one process on its own."""

    rank: int = 0
    size: int = 1
    all_gather: Callable[[Any], list[Any]] = field(default=lambda obj: [obj], repr=False)


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
    workers: Workers | None = None,
) -> SyntheticSet:
    """Generate (or reuse, or finish) ``num_images`` class-balanced images in ``folder``.

    ``on_step`` hears of every inner step of the batches still to make; ``log`` gets one-line
    notes (how many batches the cache already held). ``workers``: the processes sharing the
    work (see the module docstring); each one calls this with the same arguments.
    """
    if num_images < 1:
        raise ConfigError(f"number of images must be at least 1, got {num_images}")
    if image_size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, got {image_size}")
    settings = set_settings(synthesizer, num_images, image_size, num_classes, seed)
    labels = balanced_labels(num_images, num_classes, seed)
    workers = workers or Workers()
    cache = ImageCache(folder, settings, labels.tolist())

    def open_cache() -> None:
        if workers.rank == 0:
            cache.open(rebuild=rebuild)

    _raise_first(workers, workers.all_gather(_attempt(open_cache)))
    if workers.rank != 0:
        cache.read()  # the index rank 0 has just checked (or started)
    size = synthesizer.batch_size
    starts = list(range(0, num_images, size))
    todo = [k for k in range(len(starts)) if not cache.has_batch(k)]
    if len(todo) < len(starts) and log is not None:
        log(f"synthetic cache {cache.folder}: {len(starts) - len(todo)} of {len(starts)} batches already made")
    mine = todo[workers.rank::workers.size]
    began = time.perf_counter()
    total = len(mine) * synthesizer.steps_per_batch + (synthesizer.setup_steps(image_size) if mine else 0)
    steps = 0
    finished = len(starts) - len(todo)
    rounds = -(-len(todo) // workers.size)

    def make(done: int, k: int) -> tuple[int, int, int, dict[str, Any]]:
        batch_labels = labels[starts[k]:starts[k] + size]

        def report(**fields: float | str) -> None:
            nonlocal steps
            steps += 1
            if on_step is not None:
                on_step(steps, total, batch=f"{done + 1}/{len(mine)}", **fields)

        tick = time.perf_counter()
        try:
            result = synthesizer.generate(batch_labels, image_size, batch_seed(seed, k), report)
        except SynthesisError as err:
            raise _Stopped(k, err) from None
        _check_batch(result.images, len(batch_labels), image_size, synthesizer.name)
        stats = {**result.stats, "seconds": round(time.perf_counter() - tick, 2)}
        return k, starts[k], cache.write_images(starts[k], result.images), stats

    for round_index in range(rounds):
        position = round_index * workers.size + workers.rank
        k = todo[position] if position < len(todo) else None
        made = workers.all_gather(_attempt(lambda: make(round_index, k) if k is not None else None))
        done = [value for ok, value in made if ok and value is not None]
        # what finished is kept even when another rank's batch failed; a failed index write stops all
        _raise_first(workers, workers.all_gather(_attempt(lambda: cache.record(done) if workers.rank == 0 and done
                                                          else None)))
        finished += len(done)
        _raise_first(workers, made, kept=finished, batches=len(starts), folder=cache.folder)
    images = cache.load_images()
    return SyntheticSet(images, labels, cache.folder, settings, len(todo), time.perf_counter() - began)


class _Stopped(Exception):
    """A synthesizer that gave up on batch ``k``; said with what was kept once every rank knows."""

    def __init__(self, k: int, error: SynthesisError):
        super().__init__(k, str(error))
        self.k, self.message = k, str(error)


def _attempt(fn: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, fn())``, or ``(False, the error)``: what each worker gives the others."""
    try:
        return True, fn()
    except Exception as err:  # noqa: BLE001 - every worker must hear of it, whatever it is
        return False, err


def _raise_first(workers: Workers, outcomes: list[tuple[bool, Any]], kept: int = 0, batches: int = 0,
                 folder: Path | None = None) -> None:
    """Raise, on every worker, the error of the lowest worker that failed (none: return)."""
    for ok, error in outcomes:
        if ok:
            continue
        if isinstance(error, _Stopped):
            error = SynthesisError(f"{error.message}; batch {error.k + 1} of {batches} stopped, the {kept} finished "
                                   f"batches are kept in {folder}")
        if workers.size > 1:
            error.all_ranks = True  # every worker raises it: one is enough to show it
        raise error


def _check_batch(images: torch.Tensor, count: int, image_size: int, name: str) -> None:
    expected = (count, 3, image_size, image_size)
    if tuple(images.shape) != expected:
        raise SynthesisError(f"synthesizer {name!r} returned images of shape {tuple(images.shape)}, expected {expected}")
    if not torch.isfinite(images).all():
        raise SynthesisError(f"synthesizer {name!r} returned non-finite pixel values")
