"""The one interface every tiny-set source implements, and the registry that names them.

A source (real few-shot folder, out-of-domain folder, BN-statistics inversion, diffusion model)
only has to turn ``(num_images, image_size, seed)`` into a ``TinySet`` of un-normalised images in
[0, 1] at the model's input size. Sources that make images from the teacher (or need its class
names) find it in the optional ``SourceContext``; folder sources ignore it. The engine never asks where images came from, and never expects
a source to augment: augmentation is applied per batch during training (``dfpractise.augment``).
Users plug in their own source by subclassing ``ImageSource`` and passing an instance, or by
registering it under a name for recipes (``@register_source("mine")``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from synthesizers.files import write_text_atomic
from synthesizers.registry import Registry
from torch import nn

from ..errors import ConfigError, DataError
from ..progress import Progress


@dataclass
class TinySet:
    """A tiny image set held in memory.

    ``images`` are float32 N x 3 x H x W in [0, 1], not normalised (each model applies its own
    mean/std). ``labels`` (int64, N) and ``class_names`` exist only for labelled sources.
    ``files`` lists the source files in the same order as ``images`` so a run can record exactly
    which images it saw; ``skipped`` counts unreadable files that were passed over. ``info``
    records how the set was drawn (source name, folder, seed), written into the file list header.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    files: list[str] | None = None
    class_names: list[str] | None = None
    skipped: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # quality numbers of a synthesised set (agreement, BN distance...), for the run folder
    report: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            shape = tuple(self.images.shape)
            raise ValueError(f"TinySet images must be N x 3 x H x W, got {shape}")
        n = self.images.shape[0]
        if self.labels is not None and self.labels.shape != (n,):
            shape = tuple(self.labels.shape)
            raise ValueError(f"TinySet has {n} images but labels of shape {shape}")
        if self.files is not None and len(self.files) != n:
            raise ValueError(f"TinySet has {n} images but {len(self.files)} file names")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def join(cls, *parts: "TinySet") -> "TinySet":
        """One set holding every part's images in order (same image size), e.g. synthetic images and
        out-of-domain photos together. Labels survive only when every part has them (a part without
        labels makes the whole set unlabelled: only label-free recovery can use it); file names only
        when every part has them, each found from the joined set alone (under its part's root)."""
        if not parts:
            raise ValueError("TinySet.join needs at least one set")
        sizes = {tuple(p.images.shape[2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"TinySet.join needs one image size, got {sorted(sizes)}")
        labelled = all(p.labels is not None for p in parts)
        names = {tuple(p.class_names) for p in parts if p.class_names is not None}
        return cls(
            images=torch.cat([p.images for p in parts]),
            labels=torch.cat([p.labels for p in parts]) if labelled else None,  # type: ignore[misc]
            files=[_rooted(f, p) for p in parts for f in p.files] if all(p.files is not None for p in parts) else None,  # type: ignore[union-attr]
            class_names=list(next(iter(names))) if labelled and len(names) == 1 else None,
            skipped=sum(p.skipped for p in parts),
            info={"parts": [dict(p.info, images=len(p), reported=p.report is not None) for p in parts]},
            report=next((p.report for p in parts if p.report is not None), None),
        )

    def save_file_list(self, path: str | Path) -> Path:
        """Write which files (and labels) the set holds, one per line, tab separated.

        A comment header records how the set was drawn, so the list plus the header rebuild the
        same set; each file's sha256 says whether it is still the image the run saw. The list
        holds names and hashes, never pixels: a team's private images stay where they were.
        Sets without files (synthesised images) write a header only.
        """
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        header = {**self.info, "images": len(self), "skipped": self.skipped}
        lines = ["# dfpractise tiny set: " + " ".join(f"{k}={v}" for k, v in header.items())]
        if self.class_names is not None:
            lines.append("# classes: " + " ".join(self.class_names))
        if self.files:
            lines.append("# columns: file, label (empty when unlabelled), sha256 of the file")
        labels = self.labels.tolist() if self.labels is not None else [None] * len(self)
        root = Path(str(self.info.get("root", "")))
        for name, label in zip(self.files or [], labels):
            lines.append(f"{name}\t{'' if label is None else label}\t{_file_sha256(name, root)}")
        return write_text_atomic(out, "\n".join(lines) + "\n")


def _rooted(name: str, part: TinySet) -> str:
    """A part's file name as it can be found outside the part: under the part's root if relative."""
    root = part.info.get("root")
    return name if root is None or Path(name).is_absolute() else (Path(str(root)) / name).as_posix()


def reported_part(tiny: TinySet) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (and labels) of the parts a set's quality report is about: all of a set that was not
    joined; of a joined one only the parts made here, since the others (a user's photos) are not
    for a picture in the run folder unless asked."""
    parts = tiny.info.get("parts")
    if not parts:
        return tiny.images, tiny.labels
    keep = torch.cat([torch.full((int(part["images"]),), bool(part.get("reported"))) for part in parts])
    return tiny.images[keep], (tiny.labels[keep] if tiny.labels is not None else None)


def read_file_list(path: str | Path) -> list[tuple[str, int | None]]:
    """(file, label or None) pairs from a list written by ``TinySet.save_file_list``."""
    entries: list[tuple[str, int | None]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition("\t")
        label = rest.split("\t")[0]
        entries.append((name, int(label) if label.strip() else None))
    return entries


def _file_sha256(name: str, root: Path) -> str:
    """The file's sha256 (found as listed, else under the set's root); empty if it cannot be read."""
    import hashlib

    for path in (Path(name), root / name):
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue
    return ""


@dataclass
class SourceContext:
    """What the engine knows about the model being compressed, for sources that need it."""

    teacher: nn.Module | None = None
    teacher_id: str | None = None  # sha256 of the teacher's weights file: keys synthetic caches
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    device: str = "cpu"
    progress: Progress | None = None
    input_size: int = 224

    @classmethod
    def for_teacher(cls, teacher: nn.Module, spec: Any = None, **kwargs: Any) -> "SourceContext":
        """A context filled from what is known of the teacher's input (``models.adapter.spec_of``)."""
        from ..models.adapter import spec_of

        spec = spec or spec_of(teacher)
        return cls(teacher=teacher, mean=tuple(spec.mean), std=tuple(spec.std), num_classes=spec.num_classes,
                   class_names=spec.class_names, input_size=spec.input_size, **kwargs)


class ImageSource(ABC):
    """Something that can produce a tiny set of images for a model of a given input size."""

    name: str = ""

    @abstractmethod
    def load(self, num_images: int, image_size: int, seed: int, context: SourceContext | None = None) -> TinySet:
        """N images resized to ``image_size``, drawn reproducibly from ``seed``; no augmentation."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments, so a run folder can record and rebuild its source."""
        return {"name": self.name}


S = TypeVar("S", bound=type[ImageSource])
SOURCES: Registry[type[ImageSource]] = Registry("image source", "sources", unknown=DataError, invalid=ConfigError)


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator: make a source available to recipes and ``create_source`` by name."""
    return SOURCES.register(name)


def list_sources() -> list[str]:
    """Names of the registered sources, sorted."""
    return SOURCES.names()


def source_from_config(data: Any) -> ImageSource:
    """The source a recipe's ``data`` section names, given the settings its constructor takes.

    ``path`` becomes ``root`` (an image folder, or a pipeline for ``diffusion``); ``synthesis``
    options go to sources that accept keyword options. A setting the source cannot use is an error
    rather than silently ignored.
    """
    parameters = inspect.signature(SOURCES.get(data.source)).parameters
    takes_options = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    root = parameters.get("root")
    if data.path is None and root is not None and root.default is inspect.Parameter.empty:
        raise DataError(f"the '{data.source}' source needs a folder: pass --data FOLDER")
    if data.path is not None and root is None:
        raise ConfigError(f"the '{data.source}' source reads no folder; leave out --data / data.path")
    if data.synthesis and not takes_options:
        raise ConfigError(f"the '{data.source}' source takes no synthesis options ({', '.join(data.synthesis)})")
    if data.auto_synthesis and "auto_synthesis" not in parameters:
        raise ConfigError(f"the '{data.source}' source makes no images: data.auto_synthesis is for the synthetic "
                          "and generator sources")
    wanted = {"root": data.path, "class_balanced": data.class_balanced, "cache_dir": data.cache_dir,
              "rebuild_cache": data.rebuild_cache, "auto_synthesis": data.auto_synthesis}
    kwargs = {k: v for k, v in wanted.items() if k in parameters and (v is not None or k == "root")}
    if data.path is None:
        kwargs.pop("root", None)
    return create_source(data.source, **kwargs, **data.synthesis)


def create_source(name: str, **kwargs: Any) -> ImageSource:
    """Build a registered source from its name and constructor arguments (as a recipe holds)."""
    return SOURCES.create(name, **kwargs)
