"""The out-of-domain source: N images drawn from any folder of images, labels ignored.

When the training set is missing, images from some other domain (ImageNet photos for a CIFAR
model, product shots, a phone's camera roll) can stand in for it. Their folder names mean nothing
to the model being compressed, so the set carries no labels: only methods that mimic the
teacher's features (not ones that need class targets) can use it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import ImageSource, SourceContext, TinySet, register_source
from .images import (
    IMAGE_EXTENSIONS,
    ImageFile,
    list_image_files,
    load_drawn,
    require_folder,
    to_float_batch,
)
from .real import check_request, draw_uniform


@register_source("ood")
class OutOfDomainFolderSource(ImageSource):
    """Random images from anywhere under ``root`` (searched recursively), without labels."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root)}

    def load(self, num_images: int, image_size: int, seed: int, context: SourceContext | None = None) -> TinySet:
        """Draw, decode and resize ``num_images`` files; unreadable ones are counted, replaced."""
        check_request(num_images, image_size)
        root = require_folder(self.root)
        files = [ImageFile(path) for path in list_image_files(root)]
        if not files:
            extensions = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            raise DataError(f"found no image files ({extensions}) under {root}")
        if num_images > len(files):
            raise DataError(f"asked for {num_images} images but {root} holds only {len(files)}")
        picks, replace = draw_uniform(files, num_images, random.Random(seed))
        loaded = load_drawn(picks, image_size, replace, root)
        return TinySet(
            images=to_float_batch(loaded.images),
            files=[f.path.relative_to(root).as_posix() for f in loaded.files],
            skipped=loaded.skipped,
            info={"source": self.name, "root": str(root), "seed": seed},
        )
