"""Robustness under corruption: the corruptions themselves, the aggregates, the API and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from dfpractise.cli import main
from dfpractise.corruptions import CORRUPTIONS, SEVERITIES, corrupt, register_corruption
from dfpractise.errors import ConfigError
from dfpractise.evaluate import load_labelled_folder
from dfpractise.robustness import HEATMAP, REPORT, RobustnessResult, evaluate_corruptions
from dfpractise.sources.base import TinySet

BUILT_IN = {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "brightness",
            "contrast", "jpeg_compression", "pixelate", "fog", "elastic"}


@pytest.fixture(scope="module")
def images(assets_dir):
    return load_labelled_folder(assets_dir / "cifar10-jpeg" / "val", 32, limit=32).images


def test_the_benchmark_families_are_registered():
    assert BUILT_IN <= set(CORRUPTIONS.names())


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_corruption_changes_images_keeps_shape_and_range_and_grows_with_severity(name, images):
    distances = []
    for severity in SEVERITIES:
        out = corrupt(name, images, severity, seed=3)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert 0.0 <= out.min() and out.max() <= 1.0
        distances.append((out - images).abs().mean().item())
    assert distances[0] > 0, "even the mildest severity changes the images"
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_the_same_seed_gives_the_same_corrupted_batch(name, images):
    assert torch.equal(corrupt(name, images, 4, seed=11), corrupt(name, images, 4, seed=11))


def test_random_corruptions_depend_on_the_seed(images):
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "fog", "elastic", "motion_blur"):
        assert not torch.equal(corrupt(name, images, 3, seed=1), corrupt(name, images, 3, seed=2)), name


def test_bad_names_and_severities_are_errors(images):
    with pytest.raises(ConfigError, match="unknown corruption 'snoww'"):
        corrupt("snoww", images, 1, 0)
    with pytest.raises(ConfigError, match="severity must be one of 1, 2, 3, 4, 5"):
        corrupt("fog", images, 6, 0)


def _hand_made() -> RobustnessResult:
    # two corruptions, two severities; the teacher is the reference
    accuracy = {
        "teacher": {"noise": {1: 80.0, 5: 60.0}, "blur": {1: 90.0, 5: 70.0}},
        "pruned": {"noise": {1: 70.0, 5: 40.0}, "blur": {1: 88.0, 5: 62.0}},
    }
    return RobustnessResult(["teacher", "pruned"], ["noise", "blur"], [1, 5], {"teacher": 95.0, "pruned": 93.0},
                            accuracy, count=100)


def test_aggregates_on_a_hand_made_case():
    result = _hand_made()
    assert result.family("pruned", "noise") == pytest.approx(55.0)
    assert result.mean_corruption_accuracy("teacher") == pytest.approx(75.0)
    assert result.mean_corruption_accuracy("pruned") == pytest.approx(65.0)
    # CE: noise (30 + 60) / (20 + 40) = 1.5, blur (12 + 38) / (10 + 30) = 1.25 -> mCE 137.5%
    assert result.corruption_error("pruned") == pytest.approx(137.5)
    assert result.corruption_error("teacher") == pytest.approx(100.0)
    # 10 points lost under corruption, 2 on clean images
    assert result.relative_robustness("pruned") == pytest.approx(8.0)
    assert result.relative_robustness("teacher") == pytest.approx(0.0)
    again = RobustnessResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and again.to_json()["summary"]["pruned"]["mean_corruption_error"] == pytest.approx(137.5)


class Memoriser(nn.Module):
    """Right on clean images only: it knows each image by its exact pixels, and answers 9 otherwise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        self.register_buffer("keys", images.flatten(1))
        self.register_buffer("labels", labels)

    def forward(self, x):
        distance = (x.flatten(1)[:, None] - self.keys[None]).abs().amax(-1)
        nearest = distance.argmin(1)
        exact = distance.min(1).values < 1e-5
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), torch.where(exact, self.labels[nearest], torch.full_like(nearest, 9))] = 1
        return logits


def test_evaluation_scores_every_model_on_the_same_corrupted_images(images):
    labels = torch.arange(len(images)) % 5  # class 9 is never right
    tiny = TinySet(images, labels)
    normalised = (images - 0.5) / 0.25
    memoriser = Memoriser(normalised, labels)
    result = evaluate_corruptions({"teacher": memoriser, "same": Memoriser(normalised, labels)}, tiny, 32,
                                  mean=(0.5,) * 3, std=(0.25,) * 3, corruptions=["gaussian_noise", "contrast"],
                                  severities=[1, 5], batch_size=10)
    assert result.count == len(images) and result.clean == {"teacher": 100.0, "same": 100.0}
    assert result.accuracy["teacher"]["gaussian_noise"][1] == 0.0  # every noisy image is a stranger to it
    assert result.accuracy["teacher"]["contrast"][5] == 0.0
    assert result.accuracy["same"] == result.accuracy["teacher"]
    assert result.relative_robustness("same") == 0.0
    again = evaluate_corruptions({"teacher": memoriser}, tiny, 32, mean=(0.5,) * 3, std=(0.25,) * 3,
                                 corruptions=["gaussian_noise"], severities=[1], batch_size=10)
    assert again.accuracy["teacher"] == {"gaussian_noise": {1: result.accuracy["teacher"]["gaussian_noise"][1]}}


def test_a_users_corruption_is_registered_and_used(images):
    @register_corruption("invert")
    def invert(batch, severity, generator):
        return 1.0 - batch * (1 - 0.2 * severity)

    try:
        labels = torch.zeros(len(images), dtype=torch.int64)
        always = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        result = evaluate_corruptions({"teacher": always}, TinySet(images, labels), 32, corruptions=["invert"],
                                      severities=[2])
        assert result.corruptions == ["invert"] and set(result.accuracy["teacher"]["invert"]) == {2}
    finally:
        CORRUPTIONS.unregister("invert")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, assets_dir):
    from dfpractise.config import RunConfig
    from dfpractise.engine import compress

    root = tmp_path_factory.mktemp("robust")
    for drop in (1, 2):
        config = RunConfig(model="cifar10_resnet20", weights="cifar10jpeg-resnet20", latency_reduction=None,
                           drop=drop, seed=1)
        config.data.path = str(assets_dir / "cifar10-jpeg" / "train")
        config.data.num_images = 16
        config.latency = config.latency.replace(batch_size=8, repeats=2, warmup=1)
        config.scoring = config.scoring.replace(iterations=2, batch_size=8)
        config.recovery = config.recovery.replace(iterations=4, batch_size=8)
        compress(config, root / f"drop{drop}")
    return root


def test_the_command_on_two_run_folders(two_runs, assets_dir, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "robustness", str(two_runs / "drop1"), str(two_runs / "drop2"), "--data",
        str(assets_dir / "cifar10-jpeg" / "val"), "--corruptions", "gaussian_noise,contrast", "--severities",
        "1,5", "--limit", "40", "--batch-size", "20", "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"] == ["teacher", "drop1", "drop2"] and report["count"] == 40
    assert set(report["summary"]["drop2"]) >= {"clean", "mean_corruption_accuracy", "mean_corruption_error",
                                               "relative_robustness"}
    assert json.loads((out / REPORT).read_text())["summary"] == report["summary"]
    assert (out / HEATMAP).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = CliRunner().invoke(main, ["robustness", str(two_runs / "drop1"), "--data",
                                      str(assets_dir / "cifar10-jpeg" / "val"), "--corruptions", "fog",
                                      "--severities", "3", "--limit", "20", "--out", str(tmp_path / "t")])
    assert table.exit_code == 0 and "mean corruption" in table.output and "relative robustness" in table.output


@pytest.mark.parametrize("args, fragment", [
    (["--corruptions", "snoww"], "unknown corruption 'snoww'"),
    (["--severities", "0,9"], "severities must be among 1, 2, 3, 4, 5"),
    (["--severities", "high"], "--severities expects numbers"),
])
def test_bad_options_are_one_line_errors(two_runs, assets_dir, args, fragment):
    result = CliRunner().invoke(main, ["robustness", str(two_runs / "drop1"), "--data",
                                       str(assets_dir / "cifar10-jpeg" / "val"), "--limit", "10", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output and fragment in result.stderr
