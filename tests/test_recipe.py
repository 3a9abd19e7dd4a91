"""Recipes: loading, bases, variables, CLI overrides, errors, and the save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfpractise.config import RunConfig
from dfpractise.errors import ConfigError
from dfpractise.recipe import load_recipe, resolve_config, save_recipe

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def assets(monkeypatch, tmp_path):
    folder = tmp_path / "assets"
    monkeypatch.setenv("DFPRACTISE_ASSETS", str(folder))
    return folder


def test_load_plain_mapping(tmp_path):
    recipe = write(tmp_path / "r.yaml", "model: cifar10_resnet20\ndata:\n  num_images: 64\n")
    assert load_recipe(recipe) == {"model": "cifar10_resnet20", "data": {"num_images": 64}}


def test_empty_recipe_means_defaults(tmp_path):
    recipe = write(tmp_path / "r.yaml", "# nothing but a comment\n")
    assert resolve_config(recipe, {}) == RunConfig().validate()


@pytest.mark.parametrize(
    "text, fragment",
    [("- a\n- b\n", "must be a mapping"), ("model: [unclosed\n", "line 2")],
)
def test_bad_yaml_is_one_line_naming_the_file(tmp_path, text, fragment):
    recipe = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "bad.yaml" in message and fragment in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_base_is_deep_merged_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "seed: 3\ndata:\n  num_images: 100\n  source: real\n")
    child = write(tmp_path / "sub" / "child.yaml", "base: ../base.yaml\ndata:\n  num_images: 7\n")
    assert load_recipe(child) == {"seed": 3, "data": {"num_images": 7, "source": "real"}}


def test_null_in_a_recipe_clears_the_base_value(tmp_path):
    write(tmp_path / "base.yaml", "weights: some-weights\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nweights: null\n")
    assert resolve_config(child, {}).weights is None


def test_base_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(tmp_path / "a.yaml")


def test_variables_are_expanded(tmp_path, assets):
    recipe = write(
        tmp_path / "r.yaml", "data:\n  path: ${DFPRACTISE_ASSETS}/train\n  eval_path: $DFPRACTISE_ASSETS/val\n"
    )
    data = load_recipe(recipe)["data"]
    assert data == {"path": f"{assets}/train", "eval_path": f"{assets}/val"}


def test_unset_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DFPRACTISE_ASSETS", raising=False)
    recipe = write(tmp_path / "r.yaml", "data:\n  path: ${DFPRACTISE_ASSETS}/train\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "r.yaml uses ${DFPRACTISE_ASSETS}, which is not set" in message
    assert "../shared/assets" in message


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    recipe = write(tmp_path / "r.yaml", "data:\n  num_imgs: 5\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*'data\.num_imgs'"):
        resolve_config(recipe, {})


def test_cli_drop_clears_recipe_target(tmp_path):
    recipe = write(tmp_path / "r.yaml", "latency_reduction: 0.4\n")
    config = resolve_config(recipe, {"drop": 5, "latency_reduction": None})
    assert (config.drop, config.latency_reduction) == (5, None)


def test_cli_target_clears_recipe_drop(tmp_path):
    recipe = write(tmp_path / "r.yaml", "drop: 4\n")
    config = resolve_config(recipe, {"latency_reduction": 0.25, "drop": None})
    assert (config.drop, config.latency_reduction) == (None, 0.25)


def test_recipe_drop_beats_default_target(tmp_path):
    recipe = write(tmp_path / "r.yaml", "drop: 4\n")
    config = resolve_config(recipe, {})
    assert (config.drop, config.latency_reduction) == (4, None)


def test_none_overrides_mean_not_given(tmp_path):
    recipe = write(tmp_path / "r.yaml", "seed: 9\ndata:\n  num_images: 50\n")
    config = resolve_config(recipe, {"seed": None, "data": {"num_images": None, "source": None}})
    assert (config.seed, config.data.num_images, config.data.source) == (9, 50, "real")


def test_overrides_without_recipe():
    config = resolve_config(None, {"model": "cifar10_resnet20", "scoring": {"iterations": 5}})
    assert config.model == "cifar10_resnet20" and config.scoring.iterations == 5


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.1])
def test_target_outside_open_interval_is_rejected(target):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        resolve_config(None, {"latency_reduction": target})


def test_unknown_override_key_is_rejected():
    with pytest.raises(ConfigError, match="'latency.rounds'"):
        resolve_config(None, {"latency": {"rounds": 3}})


def test_save_then_load_gives_an_equal_config(tmp_path):
    config = resolve_config(
        None,
        {"drop": 3, "seed": 5, "weights": "w.pt", "recovery": {"milestones": [0.5, 0.9]}},
    )
    path = save_recipe(config, tmp_path / "run" / "recipe.yaml")
    assert path.read_text(encoding="utf-8").startswith("#")
    assert resolve_config(path, {}) == config


@pytest.mark.parametrize(
    "name, source, folder",
    [
        ("default", "synthetic", None),
        ("resnet56-synthetic512", "synthetic", None),
        ("resnet56-real500", "real", "cifar10-jpeg/train"),
        ("resnet56-ood1000", "ood", "imagenet-sample-256"),
        ("resnet20-quick", "real", "cifar10-jpeg/train"),
    ],
)
def test_shipped_recipes_resolve(name, source, folder, assets):
    config = resolve_config(REPO / "recipes" / f"{name}.yaml", {})
    assert config.data.path == (f"{assets}/{folder}" if folder else None)
    assert config.data.eval_path == f"{assets}/cifar10-jpeg/val"
    assert config.seed == 1 and config.data.source == source


def test_shipped_recipes_say_what_the_briefs_say(assets):
    default = resolve_config(REPO / "recipes" / "default.yaml", {})
    assert (default.model, default.weights) == ("cifar10_resnet56", "cifar10jpeg-resnet56")
    assert (default.data.source, default.data.num_images, default.latency_reduction) == ("synthetic", 512, 0.3)
    full = resolve_config(REPO / "recipes" / "resnet56-synthetic512.yaml", {})
    assert (full.data.synthesis["steps"], full.recovery.iterations) == (200, 2000)
    assert (default.data.synthesis, default.recovery.iterations) == ({"steps": 100, "batch_size": 256}, 1200)
    assert (full.data, full.scoring, full.latency) == (
        type(full.data)(**{**vars(default.data), "synthesis": full.data.synthesis}), default.scoring, default.latency)
    real = resolve_config(REPO / "recipes" / "resnet56-real500.yaml", {})
    assert (real.model, real.weights, real.data.num_images, real.latency_reduction) == (
        "cifar10_resnet56", "cifar10jpeg-resnet56", 500, 0.3)
    ood = resolve_config(REPO / "recipes" / "resnet56-ood1000.yaml", {})
    assert (ood.data.num_images, ood.weights) == (1000, "cifar10jpeg-resnet56")
    quick = resolve_config(REPO / "recipes" / "resnet20-quick.yaml", {})
    assert (quick.model, quick.weights, quick.data.num_images) == ("cifar10_resnet20", "cifar10jpeg-resnet20", 100)
    assert (quick.latency_reduction, quick.scoring.iterations, quick.recovery.iterations) == (0.2, 20, 100)
    assert quick.latency.repeats == 5


def test_switching_source_drops_the_recipes_source_settings(assets):
    """--source synthetic on a real-data recipe must not inherit its folder, and back."""
    switched = resolve_config(REPO / "recipes" / "resnet56-real500.yaml", {"data": {"source": "synthetic"}})
    assert (switched.data.source, switched.data.path, switched.data.synthesis) == ("synthetic", None, {})
    back = resolve_config(REPO / "recipes" / "default.yaml", {"data": {"source": "real", "path": "/imgs"}})
    assert (back.data.path, back.data.synthesis) == ("/imgs", {})
    kept = resolve_config(REPO / "recipes" / "default.yaml", {"data": {"source": "synthetic"}})
    assert kept.data.synthesis == {"steps": 100, "batch_size": 256}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("latency_reduction: 30%\n", "'latency_reduction' must be a number or null, got '30%'"),
        ("seed: one\n", "'seed' must be a whole number, got 'one'"),
        ("data:\n  num_images: 5.5\n", "'data.num_images' must be a whole number"),
        ("latency:\n  pool_identical: 1\n", "'latency.pool_identical' must be true or false"),
    ],
)
def test_wrong_types_are_named(tmp_path, text, fragment):
    recipe = write(tmp_path / "r.yaml", text)
    with pytest.raises(ConfigError) as err:
        resolve_config(recipe, {})
    assert "r.yaml" in str(err.value) and fragment in str(err.value)


def test_whole_numbers_are_accepted_where_floats_are_expected(tmp_path):
    recipe = write(tmp_path / "r.yaml", "scoring:\n  lr: 1\n")
    config = resolve_config(recipe, {})
    assert config.scoring.lr == 1.0 and isinstance(config.scoring.lr, float)


def test_shipped_recipe_comments_state_the_declared_defaults():
    """A comment saying '(default N)' beside a setting must agree with dfpractise/config.py."""
    import re

    defaults = RunConfig().to_dict()
    checked = 0
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        section = None
        for line in recipe.read_text(encoding="utf-8").splitlines():
            setting = re.match(r"^( *)(\w+):", line)
            if setting is None:
                continue
            indent, key = setting.groups()
            if not indent:
                section = key
            stated = re.search(r"default:? (\d+(?:\.\d+)?)\)", line)
            if stated is None:
                continue
            value = defaults[section][key] if indent else defaults[key]
            assert float(stated.group(1)) == value, f"{recipe.name}: {line.strip()} (declared default {value})"
            checked += 1
    assert checked >= 3
