"""The ImageNet recipes: they resolve, name buildable models, and the ResNet-34 one runs offline
(random weights, reduced resolution, a few imagenet-sample-256 images) to prove the path works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dfpractise.engine import compress
from dfpractise.models.reference import parse_reference
from dfpractise.recipe import resolve_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["imagenet-resnet34", "imagenet-resnet50", "imagenet-mobilenet_v2", "imagenet-vit_b_16",
           "imagenet-convnext_tiny"]


@pytest.fixture
def imagenet(monkeypatch, tmp_path, assets_dir):
    """IMAGENET_TRAIN / IMAGENET_VAL pointing at a few sample images laid out one folder per class."""
    root = tmp_path / "imagenet"
    samples = sorted((assets_dir / "imagenet-sample-256").iterdir())[:6]
    for split in ("train", "val"):
        for image in samples:
            folder = root / split / image.name.split("_")[0]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, folder / image.name)
    monkeypatch.setenv("IMAGENET_TRAIN", str(root / "train"))
    monkeypatch.setenv("IMAGENET_VAL", str(root / "val"))
    return root


@pytest.mark.parametrize("name", RECIPES)
def test_imagenet_recipes_resolve_to_torchvision_weights(name, imagenet):
    config = resolve_config(REPO / "recipes" / f"{name}.yaml", {})
    assert config.data.path == str(imagenet / "train") and config.data.eval_path == str(imagenet / "val")
    from torchvision.models import get_model_weights, get_weight

    assert get_weight(config.weights) in list(get_model_weights(config.model)), "weights of that architecture"
    assert parse_reference(config.model).kind in ("registered", "torchvision")


def test_unset_imagenet_folder_is_named(monkeypatch):
    monkeypatch.delenv("IMAGENET_TRAIN", raising=False)
    from dfpractise.errors import ConfigError

    with pytest.raises(ConfigError, match=r"uses \$\{IMAGENET_TRAIN\}, which is not set"):
        resolve_config(REPO / "recipes" / "imagenet-resnet34.yaml", {})


def test_the_resnet34_recipe_runs_offline_with_random_weights(imagenet, tmp_path):
    config = resolve_config(REPO / "recipes" / "imagenet-resnet34.yaml", {
        "weights": "none", "input_size": 64, "data": {"num_images": 6},
        "latency": {"batch_size": 4, "repeats": 2, "warmup": 1},
        "scoring": {"iterations": 2, "batch_size": 4}, "recovery": {"iterations": 3, "batch_size": 4},
    })
    result = compress(config, tmp_path / "run")
    assert result.report["model"] == "resnet34" and result.report["num_images"] == 6
    assert result.report["latency"]["selection_reduction"] >= 0.22 and result.report["pruned"]["top1"] is not None
    assert result.report["latency"]["resolution"] == 64
