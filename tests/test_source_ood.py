"""The out-of-domain folder source: recursive drawing, no labels, seeds, corrupt files, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfpractise.errors import DataError
from dfpractise.sources import (
    OutOfDomainFolderSource,
    create_source,
    list_sources,
    read_file_list,
)

# relative path -> colour; 48 x 40 images in nested folders and mixed formats (lossless ones
# where the colour is checked exactly enough)
IMAGES = {
    "a.png": (250, 10, 10),
    "b.jpg": (10, 250, 10),
    "c.webp": (10, 10, 250),
    "dogs/d.png": (200, 200, 10),
    "dogs/e.JPEG": (10, 200, 200),
    "dogs/deep/er/f.png": (200, 10, 200),
    "cats/g.bmp": (120, 120, 120),
    "cats/h.PNG": (60, 30, 90),
}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if path.suffix.lower() == ".webp":
        image.save(path, lossless=True)
    else:
        image.save(path)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 this is not a jpeg at all" * 10)
    return path


def mean_colour(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(round(v) for v in (image.mean(dim=(1, 2)) * 255).tolist())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """8 images in nested folders plus litter: a hidden image, a hidden folder, a text file."""
    root = tmp_path / "ood"
    for name, colour in IMAGES.items():
        write_image(root / name, colour)
    write_image(root / "dogs" / ".hidden.png", (0, 0, 0))
    write_image(root / ".cache" / "thumb.png", (0, 0, 0))
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


def test_draws_all_images_recursively_unlabelled_and_resized(folder: Path) -> None:
    tiny = OutOfDomainFolderSource(folder).load(len(IMAGES), 32, seed=0)
    assert tiny.images.shape == (8, 3, 32, 32) and tiny.images.dtype == torch.float32
    assert 0.0 <= float(tiny.images.min()) and float(tiny.images.max()) <= 1.0
    assert tiny.labels is None and tiny.class_names is None and tiny.skipped == 0
    assert sorted(tiny.files) == sorted(IMAGES)  # relative posix paths; no hidden/non-image files
    assert tiny.info == {"source": "ood", "root": str(folder.resolve()), "seed": 0}
    for image, name in zip(tiny.images, tiny.files):
        assert all(abs(a - b) <= 3 for a, b in zip(mean_colour(image), IMAGES[name]))


def test_large_inputs_are_resized_too(folder: Path) -> None:
    tiny = OutOfDomainFolderSource(folder).load(3, 96, seed=1)
    assert tiny.images.shape == (3, 3, 96, 96)


def test_same_seed_same_draw_other_seeds_differ(folder: Path) -> None:
    source = OutOfDomainFolderSource(folder)
    first, again = source.load(4, 16, seed=7), source.load(4, 16, seed=7)
    assert first.files == again.files and torch.equal(first.images, again.images)
    draws = {tuple(source.load(4, 16, seed=s).files) for s in range(6)}
    assert len(draws) == 6
    assert all(len(set(d)) == 4 for d in draws)  # without replacement


def test_corrupt_file_is_skipped_counted_and_replaced(folder: Path) -> None:
    write_corrupt(folder / "dogs" / "broken.jpg")
    source = OutOfDomainFolderSource(folder)
    everything = source.load(9, 16, seed=0)  # 9 files on disk, 8 readable
    assert len(everything) == 8 and everything.skipped == 1
    assert "dogs/broken.jpg" not in everything.files
    for seed in range(50):
        tiny = source.load(4, 16, seed=seed)
        assert len(tiny) == 4 and "dogs/broken.jpg" not in tiny.files
        if tiny.skipped:
            assert tiny.skipped == 1 and tiny.info["seed"] == seed
            # the replacement is deterministic too
            assert source.load(4, 16, seed=seed).files == tiny.files
            break
    else:
        pytest.fail("no seed drew the corrupt file")


def test_all_corrupt_is_a_data_error(tmp_path: Path) -> None:
    for name in ("1.jpg", "x/2.png", "x/y/3.webp"):
        write_corrupt(tmp_path / name)
    with pytest.raises(DataError, match=r"none of the 3 image files tried under .* could be read"):
        OutOfDomainFolderSource(tmp_path).load(2, 8, seed=0)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, r"ood.* does not exist"),
        (lambda root: root.write_text("x"), r"ood.* is not a directory"),
        (lambda root: root.mkdir(), r"found no image files \(jpg, jpeg, png, webp, bmp\) under"),
        (
            lambda root: (root / "sub").mkdir(parents=True) or (root / "a.txt").write_text("x"),
            r"found no image files \(jpg, .*\) under .*ood",
        ),
    ],
    ids=["missing", "file", "empty", "no-images"],
)
def test_unusable_folders_raise_one_line_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "ood"
    setup(root)
    with pytest.raises(DataError, match=message) as error:
        OutOfDomainFolderSource(root).load(1, 8, seed=0)
    assert "\n" not in str(error.value)


def test_bad_requests(folder: Path) -> None:
    source = OutOfDomainFolderSource(folder)
    message = rf"asked for 9 images but {re.escape(str(folder))} holds only 8$"
    with pytest.raises(DataError, match=message):
        source.load(9, 8, seed=0)
    with pytest.raises(DataError, match="num_images must be at least 1, got 0"):
        source.load(0, 8, seed=0)
    with pytest.raises(DataError, match="image_size must be at least 1, got -1"):
        source.load(1, -1, seed=0)


def test_file_list(folder: Path, tmp_path: Path) -> None:
    tiny = OutOfDomainFolderSource(folder).load(5, 8, seed=2)
    path = tiny.save_file_list(tmp_path / "run" / "tiny_set.txt")
    text = path.read_text()
    assert text.startswith("# dfpractise tiny set: source=ood") and "seed=2" in text
    assert "# classes" not in text
    assert read_file_list(path) == [(name, None) for name in tiny.files]
    assert all((folder / name).is_file() for name, _ in read_file_list(path))


def test_registry(folder: Path) -> None:
    assert "ood" in list_sources()
    source = create_source("ood", root=folder)
    assert isinstance(source, OutOfDomainFolderSource)
    assert source.config() == {"name": "ood", "root": str(folder)}
    assert len(source.load(2, 8, seed=0)) == 2


def test_imagenet_sample_draw(assets_dir: Path) -> None:
    root = assets_dir / "imagenet-sample-256"
    if not root.is_dir():
        pytest.skip(f"{root} not in the assets mirror")
    tiny = create_source("ood", root=root).load(20, 32, seed=0)
    assert tiny.images.shape == (20, 3, 32, 32) and tiny.skipped == 0
    assert tiny.labels is None and len(set(tiny.files)) == 20
