"""Image-file helpers shared by every folder-based source and by the evaluator.

One place decides which files count as images, how class folders map to label indices, how a
file becomes a tensor at the model's input size, and what happens to a file that cannot be read
(skip it and count it). Keeping this in one module means a tiny set drawn for training and a
validation folder read for evaluation go through exactly the same decode and resize path.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""File name endings read as images (compared case-insensitively)."""

CROP_FRACTION = 0.875
"""Centre-crop fraction for inputs above 64 px: resize the short side to s / 0.875, crop s."""

SMALL_INPUT_MAX = 64
"""Inputs this size or smaller (CIFAR-style models) are resized straight to s x s, no crop."""

# PIL raises these for missing, truncated, corrupt or oversized files; anything else is a bug.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFile(NamedTuple):
    """One candidate image: where it is and, for labelled folders, its class index."""

    path: Path
    label: int | None = None


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends in one of ``IMAGE_EXTENSIONS`` (any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def require_folder(root: str | Path, role: str = "image folder") -> Path:
    """The folder as an absolute Path, or a one-line DataError saying why it cannot be used."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{role} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{role} {path} is not a directory")
    return path.resolve()


def list_image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root``, recursively, in a stable (sorted) order.

    Hidden folders and files (names starting with '.') are left out: they are editor, OS or
    notebook litter, never data. Links are followed (a class folder may link to images kept
    elsewhere), but each real folder is read once and a link back to a folder above it (a loop,
    such as a link to ``..``) is skipped; a file reached by two paths counts once.
    """
    return _walk_images(Path(root), set(), set())


def _walk_images(base: Path, folders: set[tuple[int, int]], files: set[tuple[int, int]]) -> list[Path]:
    """``list_image_files`` sharing the sets of real folders and files already seen."""
    found: list[Path] = []
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            identity = _identity(os.stat(folder))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            if folder == base:
                raise DataError(f"image folder {base} cannot be read: {err.strerror or err}") from None
            continue  # an unreadable or dangling sub-folder holds no images we can use
        if identity in folders:
            continue
        folders.add(identity)
        above = _real_ancestors(folder)
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if not (entry.is_symlink() and os.path.realpath(entry.path) in above):
                        subfolders.append(Path(entry.path))
                elif entry.is_file() and is_image_file(entry.name):
                    # a plain file lies on its folder's device: no stat needed for its identity
                    key = _identity(entry.stat()) if entry.is_symlink() else (identity[0], entry.inode())
                    if key not in files:
                        files.add(key)
                        found.append(Path(entry.path))
            except OSError:
                continue  # a dangling link or an entry that vanished while listing
        pending.extend(reversed(subfolders))  # depth first, in name order
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _real_ancestors(folder: Path) -> set[str]:
    """The real paths of ``folder`` and every folder above it: a link to one of them is a loop."""
    real = Path(os.path.realpath(folder))
    return {str(real), *map(str, real.parents)}


def list_class_folders(root: str | Path) -> list[str]:
    """Class names of an ImageFolder-style tree: the sorted names of ``root``'s sub-folders.

    Sorted names give the same class indices as torchvision's ImageFolder, which is how most
    classifiers' output units were assigned. Empty class folders keep their index; a link back
    to ``root`` or above is no class.
    """
    base = Path(root)
    above = _real_ancestors(base)
    return sorted(
        e.name for e in os.scandir(base)
        if e.is_dir() and not e.name.startswith(".") and not (e.is_symlink() and os.path.realpath(e.path) in above)
    )


def list_class_files(root: str | Path) -> tuple[list[str], list[ImageFile]]:
    """(class names, labelled files) of ``root/<class>/<image>``; DataError if there are none.

    Images directly inside ``root`` carry no label and are ignored; images nested deeper inside
    a class folder belong to that class (as in ImageFolder).
    """
    base = require_folder(root)
    classes = list_class_folders(base)
    if not classes:
        loose = len(list_image_files(base))
        if loose:
            raise DataError(
                f"{base} holds {loose} images but no class sub-folders; a labelled folder must be "
                f"laid out as {base}/<class>/<image>"
            )
        raise DataError(f"found no class sub-folders and no images ({_ext_list()}) under {base}")
    seen: set[tuple[int, int]] = set()  # a file linked into two classes belongs to the first
    files = [
        ImageFile(path, index)
        for index, name in enumerate(classes)
        for path in _walk_images(base / name, set(), seen)
    ]
    if not files:
        raise DataError(
            f"found no images ({_ext_list()}) under {base} "
            f"({len(classes)} class folders, all empty)"
        )
    return classes, files


def _imagenet_wnids(folders: Sequence[str]) -> Sequence[str]:
    """The ImageNet-1k WordNet ids in class-index order: timm's table when timm is installed; else
    a full set of 1000 id folders is its own table (sorted ids are the class order), and a subset
    cannot be placed."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        ids = sorted(folders)
        return ids if len(ids) == 1000 and all(re.fullmatch(r"n\d{8}", f) for f in ids) else ()
    return ImageNetInfo().label_names()


def class_indices(folders: Sequence[str], spec: Any, where: str | Path) -> list[int]:
    """The model's output index of each class folder of ``where`` (a labelled folder).

    ``spec`` is the model's ``ModelSpec``. Folders are matched to the model's class names
    (ignoring case, spaces, '_' and '-'; a 1000-class model also answers to the ImageNet WordNet
    ids, ``n01440764``...), so a folder of some of the classes labels them as the model does:
    ``airplane, cat, dog`` are 0, 3 and 5 for CIFAR-10. Folders named ``0``, ``1``... are output
    indices. A model that names no classes takes the sorted folders as its classes, one per
    output. Anything else is a DataError naming the mismatch: labels read from folder order
    would be silently wrong.
    """
    folders = list(folders)
    count, names = spec.num_classes, spec.class_names
    if names:
        lookup: dict[str, list[int]] = {}
        aliases = [names]
        if len(names) == 1000:
            aliases.append(_imagenet_wnids(folders))
        for table in aliases:
            for index, name in enumerate(table):
                lookup.setdefault(_folded(name), []).append(index)
        found = {f: lookup.get(_folded(f), []) for f in folders}
        ambiguous = [f for f, hits in found.items() if len(set(hits)) > 1]
        if ambiguous:
            raise DataError(f"class folder {ambiguous[0]!r} of {where} names several classes of {spec.name}; "
                            "rename it to one class name")
        if all(found.values()):
            return _distinct([found[f][0] for f in folders], folders, spec, where)
    if all(f.isdigit() for f in folders) and all(int(f) < count for f in folders):
        return _distinct([int(f) for f in folders], folders, spec, where)
    if names:
        unknown = [f for f in folders if not found[f]]
        more = f" ({len(folders)} class folders for {count} classes)" if len(folders) > count else ""
        raise DataError(
            f"{where}: class folder{'s' if len(unknown) > 1 else ''} {_quoted(unknown)} "
            f"{'are not classes' if len(unknown) > 1 else 'is not a class'} of {spec.name}{more}; its classes "
            f"are {_quoted(names, 10)}: name each folder after the class it holds"
        )
    if len(folders) != count:
        raise DataError(
            f"{where} has {len(folders)} class folders but {spec.name} has {count} outputs and names no "
            f"classes, so folders can only be matched by their sorted order: give one folder per output, "
            "or name them 0, 1, ... by output index"
        )
    return list(range(count))


def label_names(folders: Sequence[str], indices: Sequence[int], spec: Any) -> list[str]:
    """The class names that labels ``indices`` (``class_indices`` of ``folders``) index: the model's
    own, else the folders' when they are the outputs in order, else the output numbers."""
    if spec.class_names:
        return list(spec.class_names)
    if list(indices) == list(range(len(folders))):
        return list(folders)
    return [str(i) for i in range(spec.num_classes)]


def _folded(name: str) -> str:
    return "".join(c for c in name.lower() if c not in " _-")


def _distinct(indices: list[int], folders: list[str], spec: Any, where: str | Path) -> list[int]:
    if len(set(indices)) == len(indices):
        return indices
    first = {}
    for folder, index in zip(folders, indices, strict=True):
        if index in first:
            raise DataError(f"class folders {first[index]!r} and {folder!r} of {where} are the same class "
                            f"({index}) of {spec.name}; merge them")
        first[index] = folder
    return indices


def _quoted(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def resize_for_model(image: Image.Image, image_size: int) -> Image.Image:
    """The deterministic (evaluation) resize rule, applied to a PIL image.

    Small inputs (<= 64 px, CIFAR-style models) are squashed to s x s, as those models were
    trained on whole images; larger ones follow the ImageNet protocol (short side to s / 0.875,
    centre crop s), which keeps the aspect ratio.
    """
    if image_size <= SMALL_INPUT_MAX:
        return TF.resize(image, [image_size, image_size])
    resized = TF.resize(image, int(image_size / CROP_FRACTION))
    return TF.center_crop(resized, [image_size, image_size])


def decode_image(path: str | Path, image_size: int) -> torch.Tensor | None:
    """The file as a uint8 3 x s x s tensor, or None when it cannot be read as an image."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        array = np.asarray(resize_for_model(rgb, image_size), dtype=np.uint8)
    except _UNREADABLE:
        return None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def default_workers() -> int:
    """Decoding threads: PIL releases the GIL while decoding, so a few per core pay off."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def decode_images(
    paths: Sequence[str | Path], image_size: int, executor: Executor | None = None
) -> list[torch.Tensor | None]:
    """``decode_image`` over many files, in parallel threads, results in input order."""
    if executor is not None:
        return list(executor.map(lambda p: decode_image(p, image_size), paths))
    if len(paths) < 16:
        return [decode_image(p, image_size) for p in paths]
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        return list(pool.map(lambda p: decode_image(p, image_size), paths))


def to_float_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack uint8 3 x H x W tensors into one float32 N x 3 x H x W batch in [0, 1]."""
    return torch.stack(list(images)).to(torch.float32).div_(255.0)


def no_replacement(_failed: ImageFile) -> ImageFile | None:
    """Replacement policy that never replaces: unreadable files are just dropped."""
    return None


class Loaded(NamedTuple):
    """What ``load_with_replacements`` read: uint8 images, the files they came from, skips."""

    images: list[torch.Tensor]
    files: list[ImageFile]
    skipped: int


def load_with_replacements(
    picks: Sequence[ImageFile],
    image_size: int,
    replacement_for: Callable[[ImageFile], ImageFile | None] = no_replacement,
) -> Loaded:
    """Decode ``picks``; each unreadable one is counted and swapped for ``replacement_for(it)``.

    Replacements take the failed pick's position, so the output order depends only on the draw,
    not on which files happened to be corrupt. Rounds repeat until every slot holds a readable
    image or the policy has no more candidates (then the slot is dropped).
    """
    slots: list[ImageFile | None] = list(picks)
    images: list[torch.Tensor | None] = [None] * len(slots)
    pending = list(range(len(slots)))
    skipped = 0
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        while pending:
            decoded = decode_images([slots[i].path for i in pending], image_size, pool)
            retry = []
            for i, image in zip(pending, decoded):
                if image is not None:
                    images[i] = image
                    continue
                skipped += 1
                slots[i] = replacement_for(slots[i])
                if slots[i] is not None:
                    retry.append(i)
            pending = retry
    kept = [i for i, image in enumerate(images) if image is not None]
    return Loaded([images[i] for i in kept], [slots[i] for i in kept], skipped)


def load_drawn(
    picks: Sequence[ImageFile],
    image_size: int,
    replacement_for: Callable[[ImageFile], ImageFile | None],
    root: Path,
) -> Loaded:
    """``load_with_replacements`` for a folder source: a DataError when nothing could be read."""
    loaded = load_with_replacements(picks, image_size, replacement_for)
    if not loaded.images:
        raise DataError(f"none of the {loaded.skipped} image files tried under {root} could be read")
    return loaded


def _ext_list() -> str:
    return ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
