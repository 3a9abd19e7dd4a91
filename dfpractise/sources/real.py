"""The few-shot real-image source: N images drawn from an ImageFolder-style directory.

This is the reference protocol of the paper (a tiny random subset of the training set, e.g. 500
CIFAR-10 images). Draws are uniform over all files by default; ``class_balanced`` spreads them as
evenly as possible across classes, which matters when N is close to the number of classes.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import DataError
from .base import ImageSource, SourceContext, TinySet, register_source
from .images import (
    ImageFile,
    list_class_files,
    load_drawn,
    require_folder,
    to_float_batch,
)

Replacer = Callable[[ImageFile], "ImageFile | None"]


@register_source("real")
class RealFolderSource(ImageSource):
    """Random images from ``root/<class>/<image>``; class index = sorted class-folder name."""

    def __init__(self, root: str | Path, class_balanced: bool = False):
        self.root = Path(root)
        self.class_balanced = class_balanced

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root), "class_balanced": self.class_balanced}

    def load(self, num_images: int, image_size: int, seed: int, context: SourceContext | None = None) -> TinySet:
        """Draw, decode and resize ``num_images`` files; unreadable ones are counted, replaced."""
        check_request(num_images, image_size)
        root = require_folder(self.root)
        classes, files = list_class_files(root)
        if num_images > len(files):
            raise DataError(
                f"asked for {num_images} images but {root} holds only {len(files)} "
                f"(in {len(classes)} class folders)"
            )
        rng = random.Random(seed)
        if self.class_balanced:
            picks, replace = draw_balanced(files, len(classes), num_images, rng)
        else:
            picks, replace = draw_uniform(files, num_images, rng)
        loaded = load_drawn(picks, image_size, replace, root)
        return TinySet(
            images=to_float_batch(loaded.images),
            labels=_labels(loaded.files),
            files=[str(f.path) for f in loaded.files],
            class_names=classes,
            skipped=loaded.skipped,
            info={
                "source": self.name,
                "root": str(root),
                "class_balanced": self.class_balanced,
                "seed": seed,
            },
        )


def check_request(num_images: int, image_size: int) -> None:
    """Reject sizes no source can satisfy, before touching the disk."""
    if num_images < 1:
        raise DataError(f"num_images must be at least 1, got {num_images}")
    if image_size < 1:
        raise DataError(f"image_size must be at least 1, got {image_size}")


def draw_uniform(
    files: list[ImageFile], n: int, rng: random.Random
) -> tuple[list[ImageFile], Replacer]:
    """First n of a seeded shuffle; the rest of the shuffle are the spares, in order."""
    order = list(files)
    rng.shuffle(order)
    spares = deque(order[n:])
    return order[:n], lambda _failed: spares.popleft() if spares else None


def draw_balanced(
    files: list[ImageFile], num_classes: int, n: int, rng: random.Random
) -> tuple[list[ImageFile], Replacer]:
    """As equal a number per class as the class sizes allow, then shuffled together.

    A failed file is replaced from its own class while that class has spares, else from the
    class that currently has the fewest images, so the set stays as balanced as possible.
    """
    pools: list[list[ImageFile]] = [[] for _ in range(num_classes)]
    for f in files:
        pools[f.label].append(f)
    for pool in pools:
        rng.shuffle(pool)
    quotas = balanced_quotas([len(p) for p in pools], n, rng)
    picks = [f for pool, q in zip(pools, quotas) for f in pool[:q]]
    rng.shuffle(picks)
    spares = [deque(pool[q:]) for pool, q in zip(pools, quotas)]
    counts = list(quotas)

    def replace(failed: ImageFile) -> ImageFile | None:
        counts[failed.label] -= 1
        candidates = [c for c in range(num_classes) if spares[c]]
        if not candidates:
            return None
        label = failed.label if spares[failed.label] else min(candidates, key=lambda c: counts[c])
        counts[label] += 1
        return spares[label].popleft()

    return picks, replace


def balanced_quotas(sizes: list[int], n: int, rng: random.Random) -> list[int]:
    """Images per class: equal shares capped by class size; leftovers go to random classes.

    Classes too small for their share give the remainder to the others (water filling), so the
    total is always n when the folder holds at least n images.
    """
    quotas = [0] * len(sizes)
    remaining = n
    while remaining > 0:
        open_classes = [c for c, size in enumerate(sizes) if quotas[c] < size]
        share = remaining // len(open_classes)
        if share == 0:
            for c in rng.sample(open_classes, remaining):
                quotas[c] += 1
            break
        for c in open_classes:
            extra = min(share, sizes[c] - quotas[c])
            quotas[c] += extra
            remaining -= extra
    return quotas


def _labels(files: list[ImageFile]) -> torch.Tensor:
    return torch.tensor([f.label for f in files], dtype=torch.int64)
