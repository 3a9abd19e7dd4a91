"""The synthesizer driver (batches, cache, resume), BN-statistics inversion and the quality report."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

import conftest

from synthesizers.errors import ConfigError, DataError, SynthesisError
from dfpractise.report import save_sample_grid
from synthesizers import (
    BNInversion,
    Synthesizer,
    balanced_labels,
    create_synthesizer,
    list_synthesizers,
    model_fingerprint,
    quality_report,
    synthesize,
)
from synthesizers.base import BatchResult
from synthesizers.bn_stats import ChannelMoments, bn_statistics
from synthesizers.generate import batch_seed


class NoiseSynthesizer(Synthesizer):
    """Seeded noise; can stop (Ctrl-C or a diverged loss) at a given call, to test resume."""

    name = "noise"
    steps_per_batch = 2

    def __init__(self, scale: float = 1.0, batch_size: int = 4, stop_at: int | None = None, error=KeyboardInterrupt):
        self.scale = scale
        self.batch_size = batch_size
        self.stop_at = stop_at
        self.error = error
        self.seeds: list[int] = []

    def settings(self):
        return {"scale": self.scale}

    def generate(self, labels, image_size, seed, report):
        self.seeds.append(seed)
        if self.stop_at == len(self.seeds):
            raise self.error("loss became nan at step 3") if self.error is SynthesisError else self.error()
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(len(labels), 3, image_size, image_size, generator=generator) * self.scale
        report(loss=1.0)
        report(loss=0.5)
        return BatchResult(images, {"loss": 0.5})


def test_balanced_labels_spread_classes_evenly_in_seeded_order():
    labels = balanced_labels(23, 5, seed=3)
    counts = torch.bincount(labels, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23
    assert torch.equal(labels, balanced_labels(23, 5, seed=3))
    assert not torch.equal(labels, balanced_labels(23, 5, seed=4))


def test_batch_seeds_depend_on_seed_and_batch_only():
    assert batch_seed(1, 0) == batch_seed(1, 0)
    assert len({batch_seed(s, k) for s in range(3) for k in range(3)}) == 9


def test_set_is_written_as_pngs_with_an_index_and_reused(tmp_path):
    made = synthesize(NoiseSynthesizer(), 10, 8, 3, seed=0, folder=tmp_path / "set")
    assert made.images.shape == (10, 3, 8, 8) and made.generated_batches == 3
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    assert index["labels"] == made.labels.tolist() and sorted(index["batches"]) == ["0", "1", "2"]
    assert len(list((tmp_path / "set" / "images").glob("*.png"))) == 10
    again = NoiseSynthesizer()
    reused = synthesize(again, 10, 8, 3, seed=0, folder=tmp_path / "set")
    assert reused.generated_batches == 0 and again.seeds == []
    assert torch.equal(reused.images, made.images)


def test_interrupted_set_resumes_to_the_same_images(tmp_path):
    whole = synthesize(NoiseSynthesizer(), 10, 8, 3, seed=5, folder=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        synthesize(NoiseSynthesizer(stop_at=2), 10, 8, 3, seed=5, folder=tmp_path / "cut")
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert sorted(index["batches"]) == ["0"]  # the finished batch survived the interruption
    finisher = NoiseSynthesizer()
    resumed = synthesize(finisher, 10, 8, 3, seed=5, folder=tmp_path / "cut")
    assert resumed.generated_batches == 2 and len(finisher.seeds) == 2
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)


def test_images_come_back_as_the_8_bit_pngs_hold_them(tmp_path):
    made = synthesize(NoiseSynthesizer(), 4, 8, 2, seed=0, folder=tmp_path / "s")
    assert torch.equal(made.images, (made.images * 255).round() / 255)
    assert 0 <= made.images.min() and made.images.max() <= 1


def test_cache_written_with_other_settings_is_refused_or_rebuilt(tmp_path):
    folder = tmp_path / "s"
    first = synthesize(NoiseSynthesizer(scale=1.0), 4, 8, 2, seed=0, folder=folder)
    with pytest.raises(DataError, match=r"other settings \(scale\).*--rebuild-cache"):
        synthesize(NoiseSynthesizer(scale=0.5), 4, 8, 2, seed=0, folder=folder)
    with pytest.raises(DataError, match="num_images"):
        synthesize(NoiseSynthesizer(scale=1.0), 5, 8, 2, seed=0, folder=folder)
    rebuilt = synthesize(NoiseSynthesizer(scale=0.5), 4, 8, 2, seed=0, folder=folder, rebuild=True)
    assert rebuilt.generated_batches == 1 and rebuilt.images.max() <= 0.5 < first.images.max()


def test_a_folder_that_is_not_a_cache_is_not_touched(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic image cache"):
        synthesize(NoiseSynthesizer(), 4, 8, 2, seed=0, folder=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_diverged_synthesis_stops_with_a_message_and_keeps_finished_batches(tmp_path):
    with pytest.raises(SynthesisError, match=r"nan.*batch 2 of 3 stopped, the 1 finished batches are kept"):
        synthesize(NoiseSynthesizer(stop_at=2, error=SynthesisError), 10, 8, 3, seed=0, folder=tmp_path / "s")
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert sorted(index["batches"]) == ["0"]


# ---------------------------------------------------------------- BN-statistics inversion


class SmallBNNet(conftest.SmallBNNet):
    """The shared tiny teacher, whose outputs turn NaN after ``poison_after`` calls (once built)."""

    def __init__(self, classes: int = 3, poison_after: int | None = None):
        super().__init__(classes)
        self.poison_after = poison_after
        self.calls = 0

    def forward(self, x):
        self.calls = getattr(self, "calls", 0) + 1
        out = super().forward(x)
        if getattr(self, "poison_after", None) is not None and self.calls > self.poison_after:
            out = out * float("nan")
        return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bn_inversion_matches_statistics_and_classes(assets_dir, precision):
    from dfpractise.models import create_model

    teacher = create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20").eval()
    cfg = teacher.model_spec
    labels = torch.arange(10)
    synth = BNInversion(teacher, cfg.mean, cfg.std, steps=40, batch_size=10, precision=precision)
    calls = []
    result = synth.generate(labels, 32, seed=0, report=lambda **f: calls.append(f))
    assert len(calls) == 40 and {"loss", "ce", "bn"} <= set(calls[0])
    assert result.images.shape == (10, 3, 32, 32)
    assert 0 <= result.images.min() and result.images.max() <= 1
    noise = (torch.randn(10, 3, 32, 32) * torch.tensor(cfg.std).view(1, 3, 1, 1)
             + torch.tensor(cfg.mean).view(1, 3, 1, 1)).clamp(0, 1)
    made = quality_report(teacher, result.images, labels, cfg.mean, cfg.std)
    start = quality_report(teacher, noise, labels, cfg.mean, cfg.std)
    assert made["bn_distance"] < start["bn_distance"] / 2  # statistics moved towards the running ones
    assert made["agreement"] >= 0.9 and calls[-1]["ce"] < calls[0]["ce"] / 10


def test_bn_inversion_is_a_function_of_its_seed():
    teacher = SmallBNNet()
    synth = BNInversion(teacher, steps=6, batch_size=4)
    labels = torch.tensor([0, 1, 2, 0])
    a = synth.generate(labels, 16, seed=1, report=lambda **f: None).images
    b = synth.generate(labels, 16, seed=1, report=lambda **f: None).images
    c = synth.generate(labels, 16, seed=2, report=lambda **f: None).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bn_inversion_warm_start_runs_at_half_size_first():
    teacher = SmallBNNet()
    sizes = []
    teacher.features[0].register_forward_pre_hook(lambda m, x: sizes.append(x[0].shape[-1]))
    # unfolded: the hook is on the teacher itself (a folded run goes through a copy, see the folding tests)
    BNInversion(teacher, steps=4, warm_start=0.5, fold_batchnorm=False).generate(torch.tensor([0, 1]), 16, 0,
                                                                               lambda **f: None)
    assert sizes == [8, 8, 16, 16]
    sizes.clear()
    BNInversion(teacher, steps=4, warm_start=0.0, fold_batchnorm=False).generate(torch.tensor([0, 1]), 16, 0,
                                                                               lambda **f: None)
    assert sizes == [16] * 4


def test_bn_inversion_leaves_the_teacher_as_it_was():
    teacher = SmallBNNet()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    layouts = []
    teacher.features[0].register_forward_pre_hook(
        lambda m, x: layouts.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    BNInversion(teacher, steps=3, fold_batchnorm=False).generate(torch.tensor([0, 1]), 16, 0, lambda **f: None)
    assert layouts == [True] * 3  # channels-last while inverting on CPU (oneDNN's fast layout)...
    assert all(p.is_contiguous() for p in teacher.parameters())  # ...and the usual layout back after
    teacher.to(memory_format=torch.channels_last)  # a teacher that came channels-last stays so
    BNInversion(teacher, steps=1, fold_batchnorm=False).generate(torch.tensor([0, 1]), 16, 0, lambda **f: None)
    assert teacher.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_bf16_inversion_keys_its_own_cache_and_the_fp32_key_is_unchanged():
    teacher = SmallBNNet()
    plain, half = BNInversion(teacher, precision="fp32").settings(), BNInversion(teacher, precision="bf16").settings()
    assert "precision" not in plain  # caches made before the setting existed are still read
    assert half.pop("precision") == "bf16" and half == plain


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch, native):
    import synthesizers.precision

    monkeypatch.setattr(synthesizers.precision, "native_bf16", lambda device: native)
    expected = "bf16" if native else "fp32"
    assert BNInversion(SmallBNNet(), precision="auto").precision == expected
    assert BNInversion(SmallBNNet(), precision="auto").settings().get("precision", "fp32") == expected
    assert create_synthesizer("generator", teacher=SmallBNNet(), precision="auto").settings()["precision"] == expected


def test_bn_statistics_of_a_bf16_forward_are_float32_and_close_to_fp32():
    torch.manual_seed(0)
    teacher = SmallBNNet().eval()
    x = torch.rand(8, 3, 16, 16)
    with bn_statistics(teacher) as stats:
        teacher(x)
        exact = stats.pop()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            teacher(x)
        half = stats.pop()
    assert all(d.dtype == torch.float32 for d in half)
    assert all(torch.isclose(h, e, rtol=0.05) for h, e in zip(half, exact))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (3, 2, 7)])  # BatchNorm2d, 1d and 1d over a sequence
def test_channel_moments_equal_mean_and_biased_variance_and_their_gradients(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    dims = [0, *range(2, x.dim())]
    mean, var = ChannelMoments.apply(x)
    wanted_mean, wanted_var = reference.mean(dims), reference.var(dims, correction=0)
    assert torch.allclose(mean, wanted_mean) and torch.allclose(var, wanted_var)
    g_mean, g_var = torch.randn_like(mean), torch.randn_like(var)
    (mean * g_mean + var * g_var).sum().backward()
    (wanted_mean * g_mean + wanted_var * g_var).sum().backward()
    assert torch.allclose(x.grad, reference.grad)


def test_channel_moments_of_bf16_are_float32_and_a_constant_channel_has_no_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6) * 3 + 2
    x[:, 1] = 0.5
    half = x.to(torch.bfloat16).requires_grad_(True)
    mean, var = ChannelMoments.apply(half)
    exact = half.detach().double()
    assert mean.dtype == var.dtype == torch.float32
    assert torch.allclose(mean.double(), exact.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(var.double(), exact.var((0, 2, 3), correction=0), rtol=1e-4)
    assert var[1] == 0
    (mean + var).sum().backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad).all()
    assert torch.allclose(half.grad[:, 1].float(), torch.tensor(1 / (8 * 6 * 6)), rtol=1e-2)  # d mean / dx alone


def test_adaptive_deepinversion_term_needs_and_uses_a_student():
    teacher = SmallBNNet()
    with pytest.raises(ConfigError, match="needs a student"):
        BNInversion(teacher, competition_weight=1.0)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    synth = BNInversion(teacher, student=student, competition_weight=1.0, steps=2)
    result = synth.generate(torch.tensor([0, 1]), 16, 0, lambda **f: None)
    assert 0 <= result.stats["competition"] <= 1
    assert synth.settings()["student"] == model_fingerprint(student)
    assert synth.settings()["competition_temperature"] == 3.0
    assert "competition_temperature" not in BNInversion(teacher).settings()  # a plain inversion keeps its cache key


def test_competition_term_makes_images_the_student_gets_wrong():
    """Optimised on the competition term alone, the images move to where student and teacher disagree."""
    torch.manual_seed(0)
    teacher = SmallBNNet()
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def competition(steps: int) -> float:
        synth = BNInversion(teacher, student=student, competition_weight=1.0, bn_weight=0, ce_weight=0, tv_weight=0,
                            steps=steps, warm_start=0, jitter=0, flip=False, lr=0.2)
        return synth.generate(labels, 16, 0, lambda **f: None).stats["competition"]

    assert competition(30) < competition(1) - 0.01


def test_teacher_without_batchnorm_is_refused():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="no BatchNorm layers.*'diffusion' or 'ood'"):
        BNInversion(plain)


@pytest.mark.parametrize("option, value", [("steps", 0), ("lr", -1.0), ("tv_weight", -0.1), ("warm_start", 1.0),
                                           ("precision", "fp16"), ("fold_batchnorm", "yes")])
def test_bad_settings_are_config_errors(option, value):
    with pytest.raises(ConfigError, match=option):
        BNInversion(SmallBNNet(), **{option: value})


def test_diverged_loss_stops_with_the_step_and_keeps_finished_batches(tmp_path):
    teacher = SmallBNNet()
    synth = BNInversion(teacher, steps=3, batch_size=2, fold_batchnorm=False)  # the teacher itself counts forwards
    teacher.poison_after = 3 + 1  # batch 0 takes 3 forwards; batch 1 diverges at its 2nd step
    with pytest.raises(SynthesisError, match=r"became nan at step 2 of 3.*1 finished batches are kept"):
        synthesize(synth, 4, 16, 3, seed=0, folder=tmp_path / "s")
    assert sorted(json.loads((tmp_path / "s" / "index.json").read_text())["batches"]) == ["0"]


def test_registry_builds_by_name_and_names_its_options():
    assert {"bn-inversion", "diffusion"} <= set(list_synthesizers())
    assert isinstance(create_synthesizer("bn-inversion", teacher=SmallBNNet(), steps=2), BNInversion)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'stepz'.*steps"):
        create_synthesizer("bn-inversion", teacher=SmallBNNet(), stepz=2)
    with pytest.raises(ConfigError, match="unknown synthesizer 'gan'"):
        create_synthesizer("gan")


def test_fingerprint_follows_the_weights():
    a, b = SmallBNNet(), SmallBNNet()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.head.bias.add_(1e-3)
    assert model_fingerprint(a) != model_fingerprint(b)


# ---------------------------------------------------------------- quality report


class FixedTeacher(nn.Module):
    """Predicts class (index of the brightest channel), with one BatchNorm layer to measure."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3).eval()

    def forward(self, x):
        return self.bn(x).mean(dim=(2, 3)) * 10


def test_quality_report_counts_agreement_and_classes():
    images = torch.zeros(4, 3, 8, 8)
    for i, channel in enumerate([0, 1, 2, 2]):
        images[i, channel] = 1.0
    labels = torch.tensor([0, 1, 2, 0])
    report = quality_report(FixedTeacher(), images, labels, (0, 0, 0), (1, 1, 1), ["a", "b", "c"], batch_size=2)
    assert report["agreement"] == 0.75
    assert report["predicted_histogram"] == {"a": 1, "b": 1, "c": 2}
    assert report["label_histogram"] == {"a": 2, "b": 1, "c": 1}
    assert report["bn_distance"] > 0 and report["images"] == 4
    with bn_statistics(FixedTeacher()) as stats:
        assert len(stats.layers) == 1


def test_sample_grid_has_a_row_per_class(tmp_path):
    images = torch.rand(12, 3, 16, 16)
    labels = torch.tensor([0, 1, 2] * 4)
    path = save_sample_grid(images, labels, tmp_path / "grid.png", per_class=4)
    with Image.open(path) as grid:
        width, height = grid.size
    assert (width, height) == (2 + 4 * (64 + 2), 2 + 3 * (64 + 2))  # 16 px images shown at 64 px
