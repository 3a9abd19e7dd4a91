"""Automatic synthesis settings (``synthesizers.auto``) and the feature-diversity signal: the choice
depends only on the teacher and the seed, follows the rule (agreement floor, diversity guard,
lowest relative BN distance), falls back and says so, lets explicit settings win, and reaches the
tiny set's quality report through the sources (tiny teachers, 8x8 images, a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import SmallBNNet

from synthesizers import quality_report
from synthesizers.auto import PLANS, choose_settings
from synthesizers.errors import ConfigError

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
# pixel optimisation driven by the teacher's cross-entropy alone, no jitter; the probe takes a fifth
# of the steps: one Adam step, which moves every pixel by lr
BASE = {"steps": 5, "tv_weight": 0.0, "bn_weight": 0.0, "jitter": 0, "flip": False}
# lr 1.0 saturates every pixel (each image: its class's channel 1, the others 0), so all images of a
# class come out identical; lr 0.2 moves them a fifth of the way and keeps them apart
CANDIDATES = [{"lr": 0.2}, {"lr": 1.0}]


class ChannelTeacher(nn.Module):
    """Predicts the channel of highest mean after BatchNorm (plus ``bias``, which favours classes).

    Its running statistics are those of the saturated images (a third of the images at 1 per
    channel), so lr 1.0 matches them exactly; a bias towards class 0 of 1.0 (0.47 in pixels) is
    beyond what a step of lr 0.2 moves, and within what a step of lr 1.0 does.
    """

    def __init__(self, bias=(0.0, 0.0, 0.0)):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.bn.running_mean.fill_(1 / 3)
            self.bn.running_var.fill_(2 / 9)
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.copy_(torch.tensor(bias))
        self.eval()

    def forward(self, x):
        return self.head(self.bn(x).mean(dim=(2, 3)))


def _choose(teacher, seed=0, base=BASE, candidates=CANDIDATES, **kwargs):
    return choose_settings(teacher, "bn-inversion", base, 8, 3, seed, mean=MEAN, std=STD, candidates=candidates,
                           probe_images=24, **kwargs)


def _numbers(choice):
    """The probe table without its measured times."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in choice.probes]


# ---------------------------------------------------------------- feature diversity


def test_feature_diversity_is_zero_for_copies_and_grows_with_variety():
    teacher = SmallBNNet()
    one = torch.rand(1, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    copies = quality_report(teacher, one.repeat(8, 1, 1, 1), labels, MEAN, STD)
    varied = quality_report(teacher, torch.rand(8, 3, 8, 8) * torch.linspace(0, 1, 8).view(8, 1, 1, 1), labels,
                            MEAN, STD)
    assert copies["feature_diversity"] == pytest.approx(0, abs=1e-6)
    assert copies["feature_diversity_in_class"] == pytest.approx(0, abs=1e-6)
    assert varied["feature_diversity"] > 0.01 and varied["feature_diversity_in_class"] > 0.01
    assert {"agreement", "bn_distance", "bn_distance_batch", "teacher_confidence", "predicted_histogram",
            "label_histogram", "images"} <= set(copies)  # the report's other keys are still there


def test_feature_diversity_is_the_mean_pairwise_cosine_distance_over_batches():
    teacher = ChannelTeacher()
    images = torch.rand(7, 3, 8, 8)
    whole = quality_report(teacher, images, None, MEAN, STD, batch_size=3)  # features gathered over 3 batches
    with torch.no_grad():
        features = nn.functional.normalize(teacher.bn(images).mean(dim=(2, 3)), dim=1)
    cosines = features @ features.T
    expected = float((1 - cosines)[~torch.eye(7, dtype=torch.bool)].mean())
    assert whole["feature_diversity"] == pytest.approx(expected, abs=1e-4)
    assert whole["feature_diversity_in_class"] is None  # no labels, no classes


def test_feature_diversity_in_class_sees_classes_that_each_collapsed():
    teacher = ChannelTeacher()
    per_class = torch.rand(3, 3, 8, 8)
    images = per_class.repeat(4, 1, 1, 1)  # four copies of one image per class
    report = quality_report(teacher, images, torch.tensor([0, 1, 2] * 4), MEAN, STD)
    assert report["feature_diversity"] > 0.001 and report["feature_diversity_in_class"] == pytest.approx(0, abs=1e-6)


def test_feature_diversity_is_none_without_a_linear_layer():
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3).eval()

        def forward(self, x):
            return self.bn(x).mean(dim=(2, 3))

    report = quality_report(NoHead(), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), MEAN, STD)
    assert report["feature_diversity"] is None and report["feature_diversity_in_class"] is None
    assert report["agreement"] is not None and report["bn_distance"] > 0


# ---------------------------------------------------------------- the choice


def test_same_teacher_and_seed_give_the_same_choice_and_leave_torch_as_it_was():
    teacher = ChannelTeacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(11)
    state = torch.get_rng_state()
    first = _choose(teacher)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)  # whatever the global generator holds does not matter
    torch.rand(5)
    second = _choose(ChannelTeacher())
    assert first.settings == second.settings == {"lr": 0.2} and _numbers(first) == _numbers(second)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())
    other_seed = _choose(teacher, seed=1)
    assert _numbers(other_seed) != _numbers(first)  # another probe batch: another table


def test_a_teacher_with_other_weights_chooses_otherwise():
    unbiased = _choose(ChannelTeacher())
    biased = _choose(ChannelTeacher(bias=(1.0, 0.0, 0.0)))
    assert unbiased.settings == {"lr": 0.2} and biased.settings == {"lr": 1.0}
    # the unbiased teacher: both agree, lr 1.0 made copies and is out on diversity
    assert [r["status"] for r in unbiased.probes] == ["chosen", "diversity below 0.5 x the most diverse"]
    assert unbiased.probes[1]["feature_diversity_in_class"] == 0 and unbiased.probes[1]["agreement"] == 1
    # the biased one: lr 0.2 cannot overcome the bias and is out on agreement
    assert [r["status"] for r in biased.probes] == ["agreement below 0.95", "chosen"]
    assert biased.probes[0]["agreement"] < 0.95 <= biased.probes[1]["agreement"]
    assert unbiased.fallback is None and biased.fallback is None


def test_without_the_diversity_guard_the_lowest_relative_bn_distance_wins():
    choice = _choose(ChannelTeacher(), diversity_fraction=0.0)
    assert choice.settings == {"lr": 1.0}
    low, high = sorted(choice.probes, key=lambda r: r["relative_bn_distance"])
    assert low["settings"] == {"lr": 1.0} and low["relative_bn_distance"] < 0.1 < high["relative_bn_distance"]
    assert choice.noise_bn_distance > 0
    for row in choice.probes:
        assert row["relative_bn_distance"] == pytest.approx(row["bn_distance"] / choice.noise_bn_distance, abs=1e-3)


def test_candidates_below_the_agreement_floor_are_rejected_however_low_their_bn_distance():
    # lr 0.2 reaches agreement 1 on the unbiased teacher; a floor above 1 rejects it too: fallback
    strict = _choose(ChannelTeacher(), candidates=[{"lr": 0.2}, {"lr": 0.3}], agreement_floor=1.0)
    assert all(r["agreement"] == 1.0 for r in strict.probes) and strict.fallback is None
    lenient = _choose(ChannelTeacher(bias=(1.0, 0.0, 0.0)), agreement_floor=0.3, diversity_fraction=0.0)
    assert lenient.settings == {"lr": 1.0}  # both pass a floor of 0.3: the lower BN distance
    floor = _choose(ChannelTeacher(bias=(1.0, 0.0, 0.0)), diversity_fraction=0.0)
    assert floor.probes[0]["relative_bn_distance"] is not None and floor.probes[0]["status"] == "agreement below 0.95"


def test_when_no_candidate_reaches_the_floor_the_highest_agreement_is_taken_and_said():
    choice = _choose(ChannelTeacher(bias=(1.0, 0.0, 0.0)), candidates=[{"lr": 0.2}, {"lr": 0.3}])
    first, second = choice.probes
    assert first["agreement"] < second["agreement"] < 0.95
    assert choice.settings == {"lr": 0.3} and "no candidate reached agreement 0.95" in choice.fallback
    assert [first["status"], second["status"]] == ["agreement below 0.95", "chosen (fallback: highest agreement)"]
    assert choice.to_report()["fallback"] == choice.fallback


class DivergingTeacher(ChannelTeacher):
    """NaN scores whenever pixels are being optimised (finite ones for the quality report)."""

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if torch.is_grad_enabled() else out


def test_probes_that_diverge_are_marked_and_when_all_do_the_first_candidate_is_kept():
    choice = _choose(DivergingTeacher())
    assert all(r["status"].startswith("diverged: BN-inversion loss became nan") for r in choice.probes)
    assert choice.probes[0]["status"].endswith("kept (fallback)") and choice.probes[0]["agreement"] is None
    assert choice.settings == {"lr": 0.2} and "every candidate's probe diverged" in choice.fallback


def test_explicit_settings_win_and_collapse_the_candidates():
    calls = []
    nothing = _choose(ChannelTeacher(), base={**BASE, "lr": 0.5}, on_step=lambda *a, **f: calls.append(a))
    assert nothing.settings == {} and nothing.probes == [] and calls == []  # nothing left to choose
    teacher = SmallBNNet()
    base = {"steps": 5, "bn_weight": 0.1}
    choice = choose_settings(teacher, "bn-inversion", base, 8, 3, 0, probe_images=12)
    assert len(PLANS["bn-inversion"].candidates) == 4 and len(choice.probes) == 2  # only first_bn_multiplier varies
    assert all(set(r["settings"]) == {"first_bn_multiplier"} for r in choice.probes)
    assert set(choice.settings) == {"first_bn_multiplier"} and choice.probe["steps"] == 1  # a fifth of 5


def test_progress_goes_through_the_step_callback_and_the_log():
    seen, notes = [], []
    _choose(ChannelTeacher(), on_step=lambda done, total, **f: seen.append((done, total, f["candidate"])),
            log=notes.append)
    assert seen == [(1, 2, "1/2"), (2, 2, "2/2")]  # one probe step per candidate
    assert len(notes) == 1 and "lr=0.2" in notes[0]


def test_the_declared_plans_probe_both_synthesizers():
    teacher = SmallBNNet()
    for method, base in [("bn-inversion", {"steps": 5}),
                         ("generator", {"steps": 1, "meta_steps": 4, "latent_dim": 8, "width": 4})]:
        choice = choose_settings(teacher, method, base, 8, 3, 0, probe_images=6)
        assert len(choice.probes) == len(PLANS[method].candidates) and choice.settings in [
            r["settings"] for r in choice.probes]
        assert sum(r["status"].startswith("chosen") for r in choice.probes) == 1
        assert all(r["seconds"] >= 0 and r["agreement"] is not None for r in choice.probes)
    assert choice.probe["meta_steps"] == 1 and choice.probe["batch_size"] == 6


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"method": "diffusion"}, "no automatic settings for synthesizer 'diffusion'"),
        ({"candidates": []}, "non-empty list"),
        ({"candidates": [{"lr": 0.1}, {"bn_weight": 0.1}]}, "name the same settings"),
        ({"candidates": [{"lrr": 0.1}, {"lrr": 0.2}]}, "'lrr' is not a setting"),
        ({"base": {"stepz": 3}}, "'stepz'"),
        ({"base": [1]}, "mapping"),
        ({"base": {"device": "cpu"}}, "must not hold 'device'"),
        ({"probe_images": 1}, "probe_images"),
        ({"image_size": 4}, "image size"),
        ({"agreement_floor": 1.5}, "agreement_floor"),
        ({"seed": "one"}, "seed"),
    ],
)
def test_bad_input_is_one_line_config_error(change, fragment):
    arguments = {"method": "bn-inversion", "base": BASE, "image_size": 8, "num_classes": 3, "seed": 0,
                 "candidates": CANDIDATES, **change}
    with pytest.raises(ConfigError, match=fragment) as caught:
        choose_settings(ChannelTeacher(), arguments.pop("method"), arguments.pop("base"), **arguments)
    assert "\n" not in str(caught.value)


def test_the_package_still_stands_alone():
    code = ("import sys, synthesizers.auto\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dfpractise', 'pydantic', 'click')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- through the sources


@pytest.fixture
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPRACTISE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def channel_plan(monkeypatch):
    """The two lr candidates as bn-inversion's declared plan, for the sources."""
    from synthesizers.auto import AutoPlan

    monkeypatch.setitem(PLANS, "bn-inversion", AutoPlan(tuple(CANDIDATES), {"steps": 0.2}))


def _context(teacher):
    from dfpractise.sources import SourceContext

    return SourceContext(teacher=teacher, mean=MEAN, std=STD, num_classes=3, input_size=8)


def _source(**data):
    from dfpractise.config import DataConfig
    from dfpractise.sources import source_from_config

    return source_from_config(DataConfig(source="synthetic", synthesis={**BASE, "batch_size": 6}, **data))


def test_the_source_synthesises_with_the_choice_and_reports_it(_private_cache, channel_plan, tmp_path):
    tiny = _source(auto_synthesis=True).load(6, 8, seed=0, context=_context(ChannelTeacher()))
    auto = tiny.report["auto_settings"]
    assert auto["chosen"] == {"lr": 0.2} and tiny.report["settings"]["lr"] == 0.2
    assert [r["settings"] for r in auto["probes"]] == CANDIDATES and auto["reused"] is False
    assert {"feature_diversity", "feature_diversity_in_class"} <= set(tiny.report)
    biased = _source(auto_synthesis=True).load(6, 8, seed=0, context=_context(ChannelTeacher(bias=(1.0, 0, 0))))
    assert biased.report["auto_settings"]["chosen"] == {"lr": 1.0} and biased.report["settings"]["lr"] == 1.0
    assert biased.report["cache"] != tiny.report["cache"]  # the chosen settings key the cache
    again = _source(auto_synthesis=True).load(6, 8, seed=0, context=_context(ChannelTeacher()))
    assert again.report["auto_settings"]["reused"] is True and again.report["generated_batches"] == 0
    assert again.report["auto_settings"]["chosen"] == {"lr": 0.2} and torch.equal(again.images, tiny.images)
    assert len(list((tmp_path / "cache" / "auto-settings").iterdir())) == 2
    plain = _source().load(6, 8, seed=0, context=_context(ChannelTeacher()))
    assert "auto_settings" not in plain.report and plain.report["settings"]["lr"] == 0.1  # off by default


def test_explicit_synthesis_settings_win_over_the_choice(_private_cache, channel_plan):
    from dfpractise.config import DataConfig
    from dfpractise.sources import source_from_config

    source = source_from_config(DataConfig(source="synthetic", synthesis={**BASE, "batch_size": 6, "lr": 0.5},
                                           auto_synthesis=True))
    tiny = source.load(6, 8, seed=0, context=_context(ChannelTeacher()))
    assert tiny.report["settings"]["lr"] == 0.5 and tiny.report["auto_settings"]["chosen"] == {}


def test_a_cache_made_with_other_settings_is_not_reused_by_the_choice(_private_cache, channel_plan, tmp_path):
    from dfpractise.errors import DataError

    folder = str(tmp_path / "set")
    _source(cache_dir=folder).load(6, 8, seed=0, context=_context(ChannelTeacher()))  # lr 0.1, the default
    with pytest.raises(DataError, match="other settings"):
        _source(cache_dir=folder, auto_synthesis=True).load(6, 8, seed=0, context=_context(ChannelTeacher()))


def _recipe_with_text():
    from dfpractise.config import RunConfig

    RunConfig.from_dict({"data": {"source": "synthetic", "auto_synthesis": "yes"}})


def _python_with_a_number():
    from dfpractise.sources import create_source

    create_source("synthetic", auto_synthesis=1)


def _diffusion():
    from dfpractise.sources import create_source

    create_source("diffusion", root="pipeline", auto_synthesis=True)


def _real_images():
    from dfpractise.config import DataConfig
    from dfpractise.sources import source_from_config

    source_from_config(DataConfig(source="real", path="/imgs", auto_synthesis=True))


@pytest.mark.parametrize(
    "make, fragment",
    [
        (_recipe_with_text, "'data.auto_synthesis' must be true or false, got 'yes'"),
        (_python_with_a_number, "auto_synthesis must be true or false, got 1"),
        (_diffusion, "the 'diffusion' source has no automatic settings"),
        (_real_images, "the 'real' source makes no images"),
    ],
)
def test_bad_source_settings_are_one_line_config_errors(make, fragment):
    from dfpractise.errors import ConfigError as DFConfigError

    with pytest.raises(DFConfigError, match=fragment) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_cli_synthesize_records_the_choice_in_the_quality_report(assets_dir, tmp_path, _private_cache):
    from click.testing import CliRunner

    from dfpractise.cli import main

    out = tmp_path / "set"
    result = CliRunner().invoke(main, ["synthesize", "--model", "cifar10_resnet20", "--weights",
                                       "cifar10jpeg-resnet20", "--num-images", "4", "--out", str(out), "--steps",
                                       "5", "--batch-size", "4", "--auto-synthesis", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    auto = report["auto_settings"]
    assert len(auto["probes"]) == 4 and auto["probe"] == {"steps": 1, "batch_size": 64, "images": 64}
    assert report["settings"]["loss_weights"]["bn"] == auto["chosen"]["bn_weight"]
    assert report["settings"]["first_bn_multiplier"] == auto["chosen"]["first_bn_multiplier"]
    assert json.loads((out / "quality.json").read_text())["auto_settings"]["chosen"] == auto["chosen"]
