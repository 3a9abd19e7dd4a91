"""Top-1 / top-5 accuracy of one or more models on a labelled image folder or a TinySet.

Every model in a comparison (teacher, pruned, recovered) is scored on the same decoded images:
a folder is read once, batch by batch, and each batch goes through all the models before the
next is decoded. Streaming keeps memory flat for 224 px validation sets that would not fit in
RAM as one tensor; images use the deterministic resize rule of ``sources.images``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generator, Sequence

import torch
from torch import nn

from .augment import normalize
from .errors import DataError
from .progress import Progress
from .sources.base import TinySet
from .sources.images import (
    ImageFile,
    class_indices,
    decode_images,
    label_names,
    default_workers,
    list_class_files,
    load_with_replacements,
    require_folder,
    to_float_batch,
)

TOPK = 5
Batches = Generator[tuple[torch.Tensor, torch.Tensor], None, None]


def load_labelled_folder(root: str | Path, image_size: int, limit: int | None = None, spec: Any = None) -> TinySet:
    """All (or ``limit``, evenly spread) images of ``root/<class>/<image>``, deterministically.

    Unreadable files are skipped and counted in ``skipped``. ``limit`` takes evenly spaced files
    from the sorted list rather than the first ones, so every class keeps its share. With the
    model's ``spec``, labels are its output indices (``labelled_files``).
    """
    base = require_folder(root, "evaluation folder")
    classes, files = labelled_files(base, limit, spec)
    loaded = load_with_replacements(files, image_size)
    if not loaded.images:
        raise DataError(f"none of the {len(files)} image files under {base} could be read")
    return TinySet(
        images=to_float_batch(loaded.images),
        labels=torch.tensor([f.label for f in loaded.files], dtype=torch.int64),
        files=[str(f.path) for f in loaded.files],
        class_names=classes,
        skipped=loaded.skipped,
        info={"source": "folder", "root": str(base)},
    )


def evaluate_models(
    models: dict[str, nn.Module],
    data: TinySet | str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    limit: int | None = None,
    spec: Any = None,
) -> dict[str, dict]:
    """Per model ``{"top1": %, "top5": %, "count": images scored}`` on the same images.

    ``data`` is a labelled TinySet or a labelled folder (streamed, ``limit`` as in
    ``load_labelled_folder``; its class folders matched to the classes of ``spec``, the models'
    ``ModelSpec``: see ``labelled_files``). Models are put in eval mode and moved to ``device``;
    their train/eval flag is restored afterwards. Top-5 means top-min(5, outputs) for small heads.
    """
    if not models:
        raise ValueError("evaluate_models needs at least one model")
    progress = progress or Progress(quiet=True)
    device = torch.device(device)
    tallies = {name: Tally() for name in models}
    was_training = {name: m.training for name, m in models.items()}
    for model in models.values():
        model.eval().to(device)
    batches, expected, where = labelled_batches(data, image_size, batch_size, limit, spec)
    total = _ceil_div(expected, batch_size)
    try:
        with torch.inference_mode(), progress.task("Evaluating", total=total) as task:
            for images, labels in batches:
                x = normalize(images.to(device), mean, std)
                y = labels.to(device)
                for name, model in models.items():
                    tallies[name].add(model(x), y, name, where)
                task.advance(1, **_live_fields(tallies))
    finally:
        batches.close()  # stop background decoding at once if a model failed
        for name, model in models.items():
            model.train(was_training[name])
    scored = tallies[next(iter(tallies))].count
    if scored == 0:
        raise DataError(f"none of the {expected} image files in {where} could be read")
    if scored < expected:
        progress.log(f"skipped {expected - scored} unreadable image files in {where}")
    return {name: tally.result() for name, tally in tallies.items()}


class Tally:
    """Running top-1/top-5 counts of one model over the batches it has seen."""

    def __init__(self) -> None:
        self.top1 = 0
        self.top5 = 0
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, name: str, where: str) -> None:
        classes = logits.shape[1]
        if int(labels.max()) >= classes:
            raise DataError(
                f"{where} has labels up to {int(labels.max())} but model {name!r} outputs only "
                f"{classes} classes"
            )
        ranked = logits.topk(min(TOPK, classes), dim=1).indices
        hits = ranked == labels.unsqueeze(1)
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(dim=1).sum())
        self.count += int(labels.numel())

    def result(self) -> dict:
        n = max(self.count, 1)
        return {"top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n, "count": self.count}


def _live_fields(tallies: dict[str, Tally]) -> dict[str, float]:
    if len(tallies) == 1:
        return {"top1": next(iter(tallies.values())).result()["top1"]}
    return {f"top1[{name}]": t.result()["top1"] for name, t in tallies.items()}


def labelled_batches(
    data: TinySet | str | Path, image_size: int, batch_size: int, limit: int | None = None, spec: Any = None
) -> tuple[Batches, int, str]:
    """(batch iterator, number of images, description of the data for error messages).

    A folder is streamed: batch k+1 is decoded in the background while batch k is used, so
    memory stays flat however large the folder. Close the iterator to stop decoding early.
    A folder's labels are the output indices of the model ``spec`` describes (``labelled_files``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, TinySet):
        _check_tiny_set(data, image_size)
        n = len(data) if limit is None else min(limit, len(data))
        return _tensor_batches(data, n, batch_size), n, "the given image set"
    base = require_folder(data, "evaluation folder")
    _, files = labelled_files(base, limit, spec)
    return _folder_batches(files, image_size, batch_size), len(files), str(base)


def _check_tiny_set(data: TinySet, image_size: int) -> None:
    if data.labels is None:
        raise DataError("cannot measure accuracy on an unlabelled image set (it has no labels)")
    if tuple(data.images.shape[-2:]) != (image_size, image_size):
        h, w = data.images.shape[-2:]
        raise DataError(
            f"evaluation images are {h}x{w} but the model expects {image_size}x{image_size}"
        )


def _tensor_batches(
    data: TinySet, n: int, batch_size: int
) -> Batches:
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield data.images[start:stop], data.labels[start:stop]


def _folder_batches(
    files: list[ImageFile], image_size: int, batch_size: int
) -> Batches:
    """Decode batch k+1 in background threads while the models run on batch k."""
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        decode = ThreadPoolExecutor(max_workers=1)
        try:
            ahead: Future | None = None
            for k, chunk in enumerate(chunks):
                current = ahead or decode.submit(_decode_chunk, chunk, image_size, pool)
                if k + 1 < len(chunks):
                    ahead = decode.submit(_decode_chunk, chunks[k + 1], image_size, pool)
                batch = current.result()
                if batch is not None:
                    yield batch
        finally:
            decode.shutdown(wait=True, cancel_futures=True)


def _decode_chunk(
    chunk: list[ImageFile], image_size: int, pool: ThreadPoolExecutor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    decoded = decode_images([f.path for f in chunk], image_size, pool)
    kept = [(image, f.label) for image, f in zip(decoded, chunk) if image is not None]
    if not kept:
        return None
    images, labels = zip(*kept)
    return to_float_batch(images), torch.tensor(labels, dtype=torch.int64)


def labelled_files(root: str | Path, limit: int | None = None, spec: Any = None) -> tuple[list[str], list[ImageFile]]:
    """Class names and files of a labelled folder, thinned to ``limit`` evenly spaced files.

    With the model's ``spec`` (``ModelSpec``) every file's label is the model's output index of
    its class folder (``sources.images.class_indices``: a DataError when the folders are not the
    model's classes) and the names are the model's; without it, labels follow sorted folder order.
    """
    base = require_folder(root, "evaluation folder")
    classes, files = list_class_files(base)
    if spec is not None:
        indices = class_indices(classes, spec, base)
        files = [ImageFile(f.path, indices[f.label]) for f in files]
        classes = label_names(classes, indices, spec)
    if limit is not None:
        if limit < 1:
            raise DataError(f"evaluation limit must be at least 1, got {limit}")
        if limit < len(files):
            files = [files[(i * len(files)) // limit] for i in range(limit)]
    return classes, files


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
