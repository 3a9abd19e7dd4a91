"""The folder a synthetic set lives in: one PNG per image and a JSON index, written batch by batch.

Generation is slow, so each finished batch is written at once (PNGs first, then the index,
atomically); a run killed mid-way loses at most the batch it was working on. The index records the
settings that made the images, and a folder written with other settings is refused (or rebuilt on
request), never mixed. Images are always read back from the PNGs, so a set generated in one go and
a set resumed from disk are the same 8-bit images.

The index is written when the folder is opened, before any image, so every folder this class
made says what it is, even one whose first batch was cut short (a kill, a full disk). Temporary
files a killed write left behind are removed on opening; a folder that holds nothing but this
class's own files and no index (one written before the index came first) is started again.

    DIR/index.json        {"format", "settings", "labels", "batches": {"0": {...}, ...}}
    DIR/images/00000.png  image i of the set, class labels[i]
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .files import atomic_write, is_temporary, write_text_atomic

INDEX = "index.json"
IMAGES = "images"
FORMAT = 1


class ImageCache:
    """A synthetic-set folder bound to the settings that must have made it."""

    def __init__(self, folder: str | Path, settings: dict[str, Any], labels: list[int]):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.labels = list(labels)
        self.batches: dict[int, dict[str, Any]] = {}

    def open(self, rebuild: bool = False) -> "ImageCache":
        """Read the finished batches of a matching folder; refuse (or wipe) a different one.

        A new, empty or unfinished-first-batch folder gets its index at once (no batch yet).
        """
        index_path = self.folder / INDEX
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"synthetic image cache {self.folder} exists and is not a folder")
        self._remove_temporary_files()
        if index_path.exists():
            index = _read_index(index_path)
            differences = _differences(index.get("settings", {}), self.settings)
            if index.get("labels") != self.labels and not differences:
                differences = ["labels"]
            if differences and not rebuild:
                raise DataError(
                    f"{self.folder} holds images made with other settings ({', '.join(differences)}); "
                    "use another folder, or rebuild it (--rebuild-cache) to replace them"
                )
            if differences:
                self.clear()
                self._write_index()
            else:
                self.batches = {int(k): v for k, v in index.get("batches", {}).items()}
            return self
        if self.folder.exists() and not self._only_own_files():
            raise DataError(
                f"{self.folder} is not empty and is not a synthetic image cache (no {INDEX}); "
                "choose an empty or new folder"
            )
        self.clear()  # nothing, or images of a first batch that never made it into an index
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_index()
        return self

    def _only_own_files(self) -> bool:
        """True when the folder holds nothing but an ``images`` folder of this class's PNG names."""
        entries = list(self.folder.iterdir())
        if any(e.name != IMAGES or not e.is_dir() or e.is_symlink() for e in entries):
            return False
        images = self.folder / IMAGES
        return not images.exists() or all(_OWN_IMAGE.fullmatch(e.name) and e.is_file() for e in images.iterdir())

    def _remove_temporary_files(self) -> None:
        """Delete the temporary files of writes that never finished (a killed process leaves them)."""
        for folder in (self.folder, self.folder / IMAGES):
            if folder.is_dir() and not folder.is_symlink():
                for entry in folder.iterdir():
                    if is_temporary(entry.name) and entry.is_file():
                        entry.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove what this cache wrote (index and images), nothing else."""
        (self.folder / INDEX).unlink(missing_ok=True)
        shutil.rmtree(self.folder / IMAGES, ignore_errors=True)
        self.batches = {}

    def has_batch(self, index: int) -> bool:
        return index in self.batches

    def read(self) -> "ImageCache":
        """The finished batches of a folder another process has opened (``open``) for these settings;
        nothing is written or removed (the ranks of a shared synthesis other than the first)."""
        index = _read_index(self.folder / INDEX)
        if _differences(index.get("settings", {}), self.settings) or index.get("labels") != self.labels:
            raise DataError(f"{self.folder} changed while it was being opened; run again")
        self.batches = {int(k): v for k, v in index.get("batches", {}).items()}
        return self

    def write_batch(self, index: int, start: int, images: torch.Tensor, stats: dict[str, Any]) -> None:
        """PNGs of one batch (images ``start`` onwards), then the index that makes them count."""
        self.record([(index, start, self.write_images(start, images), stats)])

    def write_images(self, start: int, images: torch.Tensor) -> int:
        """The PNGs of images ``start`` onwards (not yet counted: see ``record``); how many."""
        folder = self.folder / IMAGES
        folder.mkdir(parents=True, exist_ok=True)
        pixels = to_uint8(images)
        for offset, array in enumerate(pixels):
            image = Image.fromarray(array)
            atomic_write(folder / image_name(start + offset), lambda tmp: image.save(tmp, format="PNG"))
        return len(pixels)

    def record(self, batches: list[tuple[int, int, int, dict[str, Any]]]) -> None:
        """Count finished batches ``(index, start, count, stats)`` whose PNGs are written: one index write."""
        for index, start, count, stats in batches:
            self.batches[index] = {"start": start, "count": count, **stats}
        self._write_index()

    def complete(self, num_batches: int) -> bool:
        return all(i in self.batches for i in range(num_batches))

    def load_images(self) -> torch.Tensor:
        """All images of the set, float N x 3 x H x W in [0, 1], read from their PNGs."""
        arrays = []
        for i in range(len(self.labels)):
            path = self.folder / IMAGES / image_name(i)
            try:
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            except OSError as err:
                raise DataError(f"synthetic image {path} cannot be read ({err}); rebuild the cache") from None
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)

    def _write_index(self) -> None:
        index = {
            "format": FORMAT,
            "settings": self.settings,
            "labels": self.labels,
            "batches": {str(k): self.batches[k] for k in sorted(self.batches)},
        }
        write_text_atomic(self.folder / INDEX, json.dumps(index, indent=1) + "\n")


def image_name(i: int) -> str:
    return f"{i:05d}.png"


_OWN_IMAGE = re.compile(r"\d{5,}\.png")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N x 3 x H x W floats in [0, 1] to N x H x W x 3 bytes, rounded (as PNG will hold them)."""
    pixels = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not a readable synthetic-cache index ({err}); delete the folder") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} was written by an incompatible version; delete the folder or use another")
    return index


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(wanted))
    return [k for k in keys if saved.get(k) != wanted.get(k)]
