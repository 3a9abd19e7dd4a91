"""Accuracy of models on a labelled folder or a TinySet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dfpractise.errors import DataError
from dfpractise.evaluate import evaluate_models, load_labelled_folder
from dfpractise.progress import Progress
from dfpractise.sources import TinySet

# three classes of solid red / green / blue images: 5, 3 and 2 of them
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
COUNTS = {"blue": 5, "green": 3, "red": 2}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    for name, count in COUNTS.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 30), COLOURS[name]).save(root / name / f"{i}.png")
    return root


class FixedRanking(nn.Module):
    """Ignores the image: ranks ``order`` first, then the other classes from the highest index.

    Every class gets a distinct score, so top-k never depends on how ties are broken.
    """

    def __init__(self, order: list[int], outputs: int = 10):
        super().__init__()
        ranking = order + [c for c in reversed(range(outputs)) if c not in order]
        scores = torch.zeros(outputs)
        for rank, c in enumerate(ranking):
            scores[c] = outputs - rank
        self.register_buffer("scores", scores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(x.shape[0], -1)


class ColourReader(nn.Module):
    """A perfect classifier for the folder above: the strongest channel, in class order b, g, r."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, [2, 1, 0]]


def test_constant_answer_scores_its_class_share(folder: Path) -> None:
    models = {"always-green": FixedRanking([1]), "always-red": FixedRanking([2])}
    results = evaluate_models(models, folder, MEAN, STD, image_size=8, batch_size=3)
    assert results["always-green"] == {"top1": 30.0, "top5": 30.0, "count": 10}  # top5: 1,9,8,7,6
    assert results["always-red"]["top1"] == pytest.approx(20.0)


def test_top5(folder: Path) -> None:
    models = {
        "blue-and-red-in-top5": FixedRanking([7, 0, 8, 9, 2, 1]),  # green is 6th
        "three-outputs": FixedRanking([2], outputs=3),  # top-5 of 3 classes is top-3
    }
    results = evaluate_models(models, folder, MEAN, STD, image_size=8)
    assert results["blue-and-red-in-top5"]["top1"] == 0.0
    assert results["blue-and-red-in-top5"]["top5"] == pytest.approx(70.0)
    assert results["three-outputs"] == {"top1": 20.0, "top5": 100.0, "count": 10}


def test_labels_reach_the_models_with_their_images(folder: Path) -> None:
    """Streaming, batching and normalisation keep images and labels aligned."""
    for batch_size in (1, 4, 256):
        results = evaluate_models({"reader": ColourReader()}, folder, MEAN, STD, 16, batch_size)
        assert results["reader"] == {"top1": 100.0, "top5": 100.0, "count": 10}


def test_folder_and_loaded_set_agree_and_train_mode_is_restored(folder: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(2, 3, 8, 8))
    model.train()
    data = load_labelled_folder(folder, 8)
    from_set = evaluate_models({"m": model}, data, MEAN, STD, 8, batch_size=4)
    from_folder = evaluate_models({"m": model}, folder, MEAN, STD, 8, batch_size=4)
    assert from_set == from_folder
    assert model.training


def test_load_labelled_folder(folder: Path) -> None:
    Path(folder / "red" / "broken.jpg").write_bytes(b"garbage" * 20)
    data = load_labelled_folder(folder, 32)
    assert data.images.shape == (10, 3, 32, 32) and data.skipped == 1
    assert data.class_names == ["blue", "green", "red"]
    assert data.labels.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    assert data.files == sorted(data.files)
    big = load_labelled_folder(folder, 72, limit=3)
    assert big.images.shape == (3, 3, 72, 72)
    assert big.labels.tolist() == [0, 0, 1]  # evenly spaced over the sorted files


def test_unreadable_files_are_not_counted(folder: Path) -> None:
    Path(folder / "blue" / "broken.jpg").write_bytes(b"garbage" * 20)
    results = evaluate_models({"g": FixedRanking([1])}, folder, MEAN, STD, 8)
    assert results["g"]["count"] == 10 and results["g"]["top1"] == 30.0


def test_unlabelled_data_is_rejected(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="holds 1 images but no class sub-folders"):
        evaluate_models({"g": FixedRanking([1])}, tmp_path, MEAN, STD, 8)
    unlabelled = TinySet(images=torch.rand(4, 3, 8, 8))
    with pytest.raises(DataError, match="unlabelled"):
        evaluate_models({"g": FixedRanking([1])}, unlabelled, MEAN, STD, 8)


def test_mismatches_are_data_errors(folder: Path, tmp_path: Path) -> None:
    message = "labels up to 2 but model 'tiny-head' outputs only 2 classes"
    with pytest.raises(DataError, match=message):
        evaluate_models({"tiny-head": FixedRanking([1], outputs=2)}, folder, MEAN, STD, 8)
    data = load_labelled_folder(folder, 8)
    with pytest.raises(DataError, match="images are 8x8 but the model expects 32x32"):
        evaluate_models({"g": FixedRanking([1])}, data, MEAN, STD, 32)
    with pytest.raises(DataError, match="does not exist"):
        evaluate_models({"g": FixedRanking([1])}, tmp_path / "nowhere", MEAN, STD, 8)
    broken = tmp_path / "broken" / "cls"
    broken.mkdir(parents=True)
    (broken / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image files in .*broken could be read"):
        evaluate_models({"g": FixedRanking([1])}, broken.parent, MEAN, STD, 8)


def test_reports_progress(folder: Path) -> None:
    class Recorder(Progress):
        def __init__(self) -> None:
            super().__init__(quiet=True)
            self.totals: list[int] = []

        def task(self, description: str, total: int):
            self.totals.append(total)
            return super().task(description, total)

    recorder = Recorder()
    evaluate_models({"g": FixedRanking([1])}, folder, MEAN, STD, 8, batch_size=4, progress=recorder)
    assert recorder.totals == [3]


def test_cifar10_val_constant_model(assets_dir: Path) -> None:
    root = assets_dir / "cifar10-jpeg" / "val"
    if not root.is_dir():
        pytest.skip(f"{root} not in the assets mirror")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    results = evaluate_models({"cat": FixedRanking([3])}, root, mean, std, 32, limit=500)
    # 50 images per class (evenly spaced over 500 per class); top-5 is cat, truck, ship, horse, frog
    assert results["cat"] == {"top1": 10.0, "top5": 50.0, "count": 500}
