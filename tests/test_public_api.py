"""What the README promises a user can plug in, used through the public API only: a model of
their own with its own residual block type, an image source, and a drop cost; each passed as an
instance, and each registered by name for recipes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfpractise import RunConfig, compress
from dfpractise.errors import ConfigError
from dfpractise.models import ModelSpec, create_model, register_model
from dfpractise.models.blocks import RESIDUAL_RULES, find_blocks, register_residual_block
from dfpractise.models.registry import MODELS
from dfpractise.recoverability import DROP_COSTS, DropCost, register_drop_cost
from dfpractise.runs import load_run
from dfpractise.sources import SOURCES, ImageSource, TinySet, register_source


class Gated(nn.Module):
    """A user's residual block that no built-in rule knows: x + g * conv(relu(conv(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x + self.gate * self.conv2(self.act(self.conv1(x)))


class TinyNet(nn.Module):
    """The feature protocol the engine reads: ``feature_layers``, ``forward_features``, ``forward_head``."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(*[Gated(8) for _ in range(4)])
        self.head = nn.Linear(8, num_classes)

    def feature_layers(self):
        return [("stem", self.stem), ("body", self.body)]

    def forward_features(self, x):
        return self.body(self.stem(x))

    def forward_head(self, features):
        return self.head(features.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


SPEC = ModelSpec("user_tiny_net", 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4, class_names=("a", "b", "c", "d"))


class Noise(ImageSource):
    """A user's source: seeded noise images, labelled round-robin; records what it was asked."""

    def __init__(self):
        self.calls = []

    def load(self, num_images, image_size, seed, context=None):
        self.calls.append((num_images, image_size, seed, context))
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(num_images, 3, image_size, image_size, generator=generator)
        return TinySet(images, labels=torch.arange(num_images) % 4, class_names=list(SPEC.class_names))


class PreferLast(DropCost):
    """A user's drop cost: the later a block, the cheaper it is to drop."""

    def __call__(self, context):
        return {b.name: 1.0 / (1 + b.step) for b in context.blocks}


@pytest.fixture
def user_plugins():
    """Register the user's model, block rule, source and drop cost; forget them afterwards."""
    rule_name = f"{Gated.__module__}.{Gated.__qualname__}"
    register_residual_block(Gated, is_identity=lambda block: True)
    register_model(spec=SPEC)(_user_tiny_net)
    register_source("user-noise")(Noise)
    register_drop_cost("user-prefer-last")(PreferLast)
    yield
    RESIDUAL_RULES.unregister(rule_name)
    MODELS.unregister("user_tiny_net")
    SOURCES.unregister("user-noise")
    DROP_COSTS.unregister("user-prefer-last")


def _user_tiny_net(num_classes=None):
    return TinyNet(num_classes or 4)


_user_tiny_net.__name__ = "user_tiny_net"


def _config(**changes) -> RunConfig:
    config = RunConfig(model="user_tiny_net", latency_reduction=None, drop=1, seed=3, **changes)
    config.data.num_images = 12
    config.latency = config.latency.replace(batch_size=4, repeats=2, warmup=1)
    config.recovery = config.recovery.replace(iterations=4, batch_size=4)
    return config


def test_a_users_block_type_is_found_without_being_declared_and_a_rule_overrules(user_plugins):
    assert [b.name for b in find_blocks(create_model("user_tiny_net"))] == ["body.1", "body.2", "body.3"]
    RESIDUAL_RULES.unregister(f"{Gated.__module__}.{Gated.__qualname__}")
    register_residual_block(Gated, is_identity=lambda block: block is not block_two)
    model = create_model("user_tiny_net")  # a new model: adapters are per model
    block_two = model.body[2]
    assert [b.name for b in find_blocks(model)] == ["body.1", "body.3"]


def test_plug_ins_passed_as_instances_drive_a_whole_run(user_plugins, tmp_path):
    source, teacher = Noise(), create_model("user_tiny_net")
    result = compress(_config(), tmp_path / "run", teacher=teacher, source=source, drop_cost=PreferLast())
    assert result.dropped == ["body.3"], "the user's drop cost chose the block"
    (num_images, image_size, seed, context), = source.calls
    assert (num_images, image_size, seed) == (12, 16, 3) and context.teacher is teacher
    assert context.class_names == SPEC.class_names and context.mean == SPEC.mean
    assert result.report["scorer"] == "user-prefer-last"
    rebuilt = load_run(tmp_path / "run")  # the teacher had no weights file: its weights are in the folder
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.pruned(x), result.pruned.eval()(x))
        assert torch.allclose(rebuilt.teacher(x), teacher.eval()(x))


def test_plug_ins_registered_by_name_work_from_a_recipe(user_plugins, tmp_path):
    config = _config()
    config.data.source = "user-noise"
    config.scoring.scorer = "user-prefer-last"
    result = compress(config, teacher=create_model("user_tiny_net"))
    assert result.dropped == ["body.3"] and result.report["source"] == "user-noise"


def test_a_setting_naming_an_unregistered_plug_in_is_refused():
    config = RunConfig()
    with pytest.raises(ConfigError, match="unknown scorer 'user-prefer-last'"):
        config.scoring.scorer = "user-prefer-last"
