"""Tiny-set sources: drawing, decoding, resizing, errors, registry, file lists."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfpractise.errors import ConfigError, DataError
from dfpractise.sources import (
    ImageSource,
    RealFolderSource,
    TinySet,
    create_source,
    list_sources,
    read_file_list,
    register_source,
)
from dfpractise.sources import base as sources_base
from dfpractise.sources.images import list_class_files, list_image_files, resize_for_model
from dfpractise.sources.real import balanced_quotas

# class -> number of images; every image is a solid colour that encodes (class, index)
CLASS_SIZES = {"apple": 6, "banana": 4, "cherry": 2}
EXTENSIONS = [".png", ".jpg", ".JPEG", ".webp", ".bmp", ".PNG"]


def colour_of(label: int, index: int) -> tuple[int, int, int]:
    return (40 + 80 * label, 20 * index, 200)


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """apple/banana/cherry with 6/4/2 small images of mixed formats, plus non-image litter."""
    root = tmp_path / "tiny"
    for label, (name, count) in enumerate(CLASS_SIZES.items()):
        for i in range(count):
            size = (40, 40) if i == 0 else (8, 8)
            path = root / name / f"{i:02d}{EXTENSIONS[i % len(EXTENSIONS)]}"
            write_image(path, colour_of(label, i), size)
    (root / "apple" / "notes.txt").write_text("not an image")
    write_image(root / "apple" / ".hidden.png", (0, 0, 0))
    return root


def add_corrupt(root: Path, name: str = "apple/zz_corrupt.jpg") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 this is not a jpeg at all" * 10)
    return path


def mean_colour(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(round(v) for v in (image.mean(dim=(1, 2)) * 255).tolist())


def test_listing_follows_imagefolder(folder: Path) -> None:
    classes, files = list_class_files(folder)
    assert classes == ["apple", "banana", "cherry"]
    assert [sum(f.label == c for f in files) for c in range(3)] == [6, 4, 2]
    assert all(f.path.suffix.lower() != ".txt" and not f.path.name.startswith(".") for f in files)
    assert len(list_image_files(folder)) == 12


def test_same_seed_same_files_in_order_and_images_match_files(folder: Path) -> None:
    source = RealFolderSource(folder)
    first, again = source.load(7, 8, seed=3), source.load(7, 8, seed=3)
    assert first.files == again.files
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.images.shape == (7, 3, 8, 8) and first.images.dtype == torch.float32
    assert 0.0 <= float(first.images.min()) and float(first.images.max()) <= 1.0
    for image, file, label in zip(first.images, first.files, first.labels.tolist()):
        assert Path(file).is_absolute() and Path(file).parent.name == first.class_names[label]
        expected = colour_of(label, int(Path(file).stem))
        assert all(abs(a - b) <= 3 for a, b in zip(mean_colour(image), expected))  # lossy formats


def test_different_seeds_draw_different_files(folder: Path) -> None:
    source = RealFolderSource(folder)
    draws = {tuple(source.load(6, 8, seed=s).files) for s in range(5)}
    assert len(draws) == 5


def test_uniform_draw_is_a_prefix_of_the_seeded_shuffle(folder: Path) -> None:
    """Asking for more images keeps the earlier ones: a larger set extends a smaller one."""
    source = RealFolderSource(folder)
    assert source.load(9, 8, seed=1).files[:4] == source.load(4, 8, seed=1).files


def test_class_balanced_counts(folder: Path) -> None:
    source = RealFolderSource(folder, class_balanced=True)
    assert source.load(6, 8, seed=0).labels.bincount().tolist() == [2, 2, 2]
    # cherry only has 2: the deficit goes to the others, as evenly as possible
    assert source.load(10, 8, seed=0).labels.bincount().tolist() == [4, 4, 2]
    counts = source.load(4, 8, seed=5).labels.bincount(minlength=3).tolist()
    assert sorted(counts) == [1, 1, 2]


def test_balanced_quotas_water_fill() -> None:
    rng = random.Random(0)
    assert balanced_quotas([6, 4, 2], 12, rng) == [6, 4, 2]
    assert balanced_quotas([100, 1, 100], 7, rng) == [3, 1, 3]
    leftovers = [balanced_quotas([5, 5, 5, 5], 6, random.Random(s)) for s in range(20)]
    assert all(sum(q) == 6 and sorted(q) == [1, 1, 2, 2] for q in leftovers)
    assert len({tuple(q) for q in leftovers}) > 1  # remainder goes to random classes


def test_corrupt_file_is_skipped_counted_and_replaced(folder: Path) -> None:
    corrupt = add_corrupt(folder)
    source = RealFolderSource(folder)
    everything = source.load(13, 8, seed=0)  # 13 files on disk, 12 readable
    assert len(everything) == 12 and everything.skipped == 1
    assert str(corrupt) not in everything.files
    # a draw that hits the corrupt file still returns the full count, from the spares
    for seed in range(50):
        tiny = source.load(6, 8, seed=seed)
        assert len(tiny) == 6 and str(corrupt) not in tiny.files
        if tiny.skipped:
            break
    else:
        pytest.fail("no seed drew the corrupt file")


def test_corrupt_file_replaced_within_its_class_when_balanced(folder: Path) -> None:
    add_corrupt(folder, "cherry/zz_corrupt.png")
    source = RealFolderSource(folder, class_balanced=True)
    tiny = source.load(9, 8, seed=0)  # cherry has 3 files, one corrupt: 2 + 1 borrowed
    assert len(tiny) == 9 and tiny.skipped == 1
    assert sorted(tiny.labels.bincount().tolist()) == [2, 3, 4]


def test_all_corrupt_is_a_data_error(tmp_path: Path) -> None:
    for name in ("a/1.jpg", "a/2.png", "b/3.jpg"):
        add_corrupt(tmp_path, name)
    with pytest.raises(DataError, match=r"none of the 3 image files tried under .* could be read"):
        RealFolderSource(tmp_path).load(2, 8, seed=0)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, r"tiny.* does not exist"),
        (lambda root: root.write_text("x"), r"tiny.* is not a directory"),
        (
            lambda root: root.mkdir(),
            r"found no class sub-folders and no images \(jpg, .*\) under .*tiny",
        ),
        (
            lambda root: (root / "a").mkdir(parents=True),
            r"found no images .* under .*tiny \(1 class folders",
        ),
        (
            lambda root: write_image(root / "flat.png", (1, 2, 3)),
            r"tiny holds 1 images but no class sub-folders",
        ),
    ],
    ids=["missing", "file", "empty", "empty-classes", "flat"],
)
def test_unusable_folders_raise_one_line_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "tiny"
    setup(root)
    with pytest.raises(DataError, match=message) as error:
        RealFolderSource(root).load(1, 8, seed=0)
    assert "\n" not in str(error.value)


def test_too_many_or_too_few_images_requested(folder: Path) -> None:
    source = RealFolderSource(folder)
    message = rf"asked for 100 images but {folder} holds only 12 \(in 3 class folders\)"
    with pytest.raises(DataError, match=message):
        source.load(100, 8, seed=0)
    with pytest.raises(DataError, match="num_images must be at least 1, got 0"):
        source.load(0, 8, seed=0)


def test_resize_rule_small_inputs_are_squashed_large_ones_centre_cropped(tmp_path: Path) -> None:
    small = resize_for_model(Image.new("RGB", (40, 20)), 32)
    assert small.size == (32, 32)
    wide = resize_for_model(Image.new("RGB", (300, 200)), 224)
    assert wide.size == (224, 224)
    # 256 px with a 16 px blue frame: resize to 256 is a no-op, the 224 centre crop drops the frame
    framed = Image.new("RGB", (256, 256), (0, 0, 255))
    framed.paste((255, 0, 0), (16, 16, 240, 240))
    write_image(tmp_path / "x" / "framed.png", (0, 0, 0))
    framed.save(tmp_path / "x" / "framed.png")
    tiny = RealFolderSource(tmp_path).load(1, 224, seed=0)
    assert tiny.images.shape == (1, 3, 224, 224)
    assert torch.equal(tiny.images[0, 0], torch.ones(224, 224))
    assert float(tiny.images[0, 2].max()) == 0.0
    squashed = RealFolderSource(tmp_path).load(1, 32, seed=0)
    assert squashed.images.shape == (1, 3, 32, 32) and float(squashed.images[0, 2, 0, 0]) > 0.9


def test_file_list_round_trip(folder: Path, tmp_path: Path) -> None:
    tiny = RealFolderSource(folder).load(5, 8, seed=2)
    path = tiny.save_file_list(tmp_path / "run" / "tiny_set.txt")
    text = path.read_text()
    assert text.startswith("# dfpractise tiny set: source=real") and "seed=2" in text
    assert "# classes: apple banana cherry" in text
    assert read_file_list(path) == list(zip(tiny.files, tiny.labels.tolist()))


def test_file_list_without_labels(tmp_path: Path) -> None:
    tiny = TinySet(images=torch.zeros(2, 3, 4, 4), files=["a.png", "b.png"])
    saved = tiny.save_file_list(tmp_path / "l.txt")
    assert read_file_list(saved) == [("a.png", None), ("b.png", None)]


def test_tiny_set_checks_its_shapes() -> None:
    assert len(TinySet(images=torch.zeros(3, 3, 4, 4))) == 3
    with pytest.raises(ValueError, match="labels"):
        TinySet(images=torch.zeros(3, 3, 4, 4), labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        TinySet(images=torch.zeros(3, 4, 4))


def test_joined_sets_keep_order_and_only_the_labels_every_part_has() -> None:
    labelled = TinySet(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([1, 2]), class_names=["a", "b", "c"],
                       files=["x.png", "y.png"], info={"source": "real"}, skipped=1)
    photos = TinySet(images=torch.ones(3, 3, 4, 4), files=["p.jpg", "q.jpg", "r.jpg"], info={"source": "ood"})
    both = TinySet.join(labelled, photos)
    assert len(both) == 5 and both.images[:2].eq(0).all() and both.images[2:].eq(1).all()
    assert both.labels is None and both.class_names is None  # one unlabelled part: no labels at all
    assert both.files == ["x.png", "y.png", "p.jpg", "q.jpg", "r.jpg"] and both.skipped == 1  # no root: as they were
    assert [p["source"] for p in both.info["parts"]] == ["real", "ood"]
    twice = TinySet.join(labelled, labelled)
    assert twice.labels.tolist() == [1, 2, 1, 2] and twice.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="one image size"):
        TinySet.join(labelled, TinySet(images=torch.zeros(1, 3, 8, 8)))


def test_joined_files_are_found_under_their_part_s_root_and_only_made_images_are_pictured(tmp_path: Path) -> None:
    from dfpractise.sources.base import reported_part

    made = TinySet(images=torch.zeros(3, 3, 4, 4), labels=torch.tensor([0, 1, 2]), files=[str(tmp_path / "m.png")] * 3,
                   report={"agreement": 1.0}, info={"source": "synthetic"})
    photos = TinySet(images=torch.ones(2, 3, 4, 4), files=["a/p.jpg", "q.jpg"], info={"source": "ood", "root": "/photos"})
    both = TinySet.join(made, photos)
    assert both.files[3:] == ["/photos/a/p.jpg", "/photos/q.jpg"] and both.report == {"agreement": 1.0}
    images, labels = reported_part(both)
    assert images.shape[0] == 3 and images.eq(0).all() and labels is None  # the photos are not pictured
    assert reported_part(made)[0] is made.images and reported_part(made)[1] is made.labels
    assert reported_part(TinySet.join(photos, photos))[0].shape[0] == 0


def test_registry(folder: Path) -> None:
    assert "real" in list_sources()
    source = create_source("real", root=folder, class_balanced=True)
    assert isinstance(source, RealFolderSource) and source.class_balanced
    assert source.config() == {"name": "real", "root": str(folder), "class_balanced": True}
    with pytest.raises(DataError, match=r"unknown image source 'nope'; known sources: .*real"):
        create_source("nope")
    with pytest.raises(ConfigError, match=r"source 'real': .*it accepts root, class_balanced"):
        create_source("real", root=folder, colour="red")


def test_user_sources_plug_in() -> None:
    @register_source("test-noise")
    class NoiseSource(ImageSource):
        def load(self, num_images: int, image_size: int, seed: int) -> TinySet:
            generator = torch.Generator().manual_seed(seed)
            shape = (num_images, 3, image_size, image_size)
            return TinySet(images=torch.rand(shape, generator=generator))

    try:
        assert NoiseSource.name == "test-noise" and "test-noise" in list_sources()
        assert len(create_source("test-noise").load(4, 16, seed=0)) == 4
        with pytest.raises(ValueError, match="already taken"):
            register_source("test-noise")(type("Other", (NoiseSource,), {}))
    finally:
        sources_base.SOURCES.unregister("test-noise")


def test_cifar10_train_draw(assets_dir: Path) -> None:
    root = assets_dir / "cifar10-jpeg" / "train"
    if not root.is_dir():
        pytest.skip(f"{root} not in the assets mirror")
    tiny = create_source("real", root=root).load(500, 32, seed=0)
    assert tiny.images.shape == (500, 3, 32, 32) and tiny.skipped == 0
    assert len(tiny.class_names) == 10 and tiny.class_names[0] == "airplane"
    pairs = zip(tiny.files, tiny.labels.tolist())
    assert all(Path(f).parent.name == tiny.class_names[y] for f, y in pairs)
    assert tiny.labels.unique().numel() == 10


def test_photos_beside_a_set_default_to_its_size_and_follow_the_seed(folder: Path) -> None:
    from dfpractise.config import DataConfig, RunConfig
    from dfpractise.engine import with_ood_photos
    from dfpractise.progress import Progress

    made = TinySet(images=torch.zeros(3, 3, 8, 8), labels=torch.tensor([0, 1, 0]))
    config = RunConfig(model="cifar10_resnet20", drop=1, seed=4, data=DataConfig(num_images=3, ood_path=str(folder)))
    joined = with_ood_photos(config, made, 8, Progress(quiet=True))
    assert len(joined) == 6 and joined.labels is None and joined.images[:3].eq(0).all()
    again = with_ood_photos(config, made, 8, Progress(quiet=True))
    assert torch.equal(again.images, joined.images)  # same seed, same photos
    assert [p["seed"] for p in joined.info["parts"][1:]] == [4]
    more = config.model_copy(update={"data": DataConfig(num_images=3, ood_path=str(folder), ood_images=5)})
    assert len(with_ood_photos(more, made, 8, Progress(quiet=True))) == 8
    none = config.model_copy(update={"data": DataConfig(num_images=3)})
    assert with_ood_photos(none, made, 8, Progress(quiet=True)) is made
