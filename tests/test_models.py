"""Every registered model honours the feature protocol the engine relies on."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from dfpractise.errors import ModelError
from dfpractise.models import create_model, get_model_spec, list_models, register_model
from dfpractise.models import registry
from dfpractise.models.cifar_resnet import BasicBlock, ZeroPadShortcut

NUM_CLASSES = 7
# name -> (test input side, expected forward_features shape without the batch dim)
EXPECTED = {
    "cifar10_resnet20": (32, (64, 8, 8)),
    "cifar10_resnet32": (32, (64, 8, 8)),
    "cifar10_resnet44": (32, (64, 8, 8)),
    "cifar10_resnet56": (32, (64, 8, 8)),
    "cifar10_resnet110": (32, (64, 8, 8)),
    "resnet18": (64, (512, 2, 2)),
    "resnet34": (64, (512, 2, 2)),
    "resnet50": (64, (2048, 2, 2)),
    "resnet101": (64, (2048, 2, 2)),
    "resnet152": (64, (2048, 2, 2)),
    "mobilenet_v2": (64, (1280, 2, 2)),
}


def test_every_registered_model_has_an_expectation() -> None:
    assert set(list_models()) == set(EXPECTED)


@pytest.mark.parametrize("name", list_models())
@torch.no_grad()
def test_feature_protocol(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    side, feat_shape = EXPECTED[name]
    x = torch.randn(2, 3, side, side)

    feats = model.forward_features(x)
    assert tuple(feats.shape) == (2, *feat_shape)
    assert model.num_features == feat_shape[0]

    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.equal(out, model.forward_head(feats))

    composed = x
    modules = dict(model.named_modules())
    for layer_name, module in model.feature_layers():
        assert modules[layer_name] is module, f"{layer_name} is not that module's path"
        composed = module(composed)
    assert torch.equal(composed, feats)

    assert model.model_spec == dataclasses.replace(get_model_spec(name), num_classes=NUM_CLASSES, class_names=None)


@pytest.mark.parametrize("name", list_models())
def test_residual_containers_are_sequential(name: str) -> None:
    model = create_model(name)
    for layer_name, module in model.feature_layers():
        if layer_name.startswith("layer") or layer_name == "features":
            assert isinstance(module, nn.Sequential), layer_name


def test_configs() -> None:
    cfg = get_model_spec("cifar10_resnet56")
    assert (cfg.input_size, cfg.num_classes, cfg.default_weights) == (32, 10, "cifar10jpeg-resnet56")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert get_model_spec("cifar10_resnet20").default_weights == "cifar10jpeg-resnet20"
    assert get_model_spec("cifar10_resnet110").default_weights is None
    tv = get_model_spec("resnet34")
    assert (tv.input_size, tv.num_classes, tv.default_weights) == (224, 1000, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 3  # type: ignore[misc]
    assert create_model("cifar10_resnet20").model_spec == get_model_spec("cifar10_resnet20")


def test_cifar_state_dict_layout() -> None:
    model = create_model("cifar10_resnet56")
    pattern = re.compile(
        r"(conv1\.weight|bn1\.\w+|layer[123]\.[0-8]\.(conv[12]\.weight|bn[12]\.\w+)|linear\.(weight|bias))"
    )
    keys = list(model.state_dict())
    assert len(keys) == 332
    assert all(pattern.fullmatch(k) for k in keys), [k for k in keys if not pattern.fullmatch(k)]
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [9, 9, 9]
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def test_basic_block_shortcuts() -> None:
    same = BasicBlock(16, 16, 1)
    down = BasicBlock(16, 32, 2)
    assert isinstance(same.shortcut, nn.Identity)
    assert isinstance(down.shortcut, ZeroPadShortcut)
    assert not list(down.shortcut.parameters())
    assert isinstance(down.relu, nn.ReLU) and down.stride == 2
    x = torch.randn(2, 16, 8, 8)
    padded = down.shortcut(x)
    assert padded.shape == (2, 32, 4, 4)
    assert torch.equal(padded[:, 8:24], x[:, :, ::2, ::2])
    assert not padded[:, :8].any() and not padded[:, 24:].any()
    with torch.no_grad():
        down.eval()
        assert torch.equal(down(x), down.relu(down.residual(x) + down.shortcut(x)))


def test_list_models_pattern() -> None:
    assert list_models("cifar10_*") == [
        "cifar10_resnet20",
        "cifar10_resnet32",
        "cifar10_resnet44",
        "cifar10_resnet56",
        "cifar10_resnet110",
    ]
    assert list_models("resnet1*") == ["resnet18", "resnet101", "resnet152"]
    assert list_models("nothing*") == []


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'resnet35'.*resnet34.*dfpractise models"):
        create_model("resnet35")
    with pytest.raises(ModelError, match="unknown model"):
        get_model_spec("nope")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("cifar10_resnet20", num_classes=bad)  # type: ignore[arg-type]


def test_register_model_bare() -> None:
    @register_model
    def toy_model(num_classes: int | None = None) -> nn.Module:
        model = nn.Linear(2, num_classes or 3)
        model.model_spec = registry.ModelSpec("toy_model", 2, (0.0,), (1.0,), num_classes or 3)
        return model

    assert "toy_model" in list_models()
    assert get_model_spec("toy_model").num_classes == 3
    assert create_model("toy_model", num_classes=5).model_spec.num_classes == 5
    try:
        with pytest.raises(ValueError, match="'toy_model' is already taken"):
            register_model(toy_model)
    finally:
        registry.MODELS.unregister("toy_model")
    assert "toy_model" not in list_models()
