"""The generator synthesizer (Fast-Datafree): interface, determinism, per-batch purity, cache and
resume through the driver, quality report, settings, and the ``generator`` source (tiny settings)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import SmallBNNet

from synthesizers import GeneratorSynthesizer, create_synthesizer, list_synthesizers, quality_report, synthesize
from synthesizers.errors import ConfigError, SynthesisError
from synthesizers.generate import batch_seed
from synthesizers.generator import ImageGenerator

TINY = {"steps": 2, "meta_steps": 2, "batch_size": 4, "latent_dim": 8, "width": 4}


def _quiet(**fields):
    pass


@pytest.fixture(scope="module")
def teacher():
    return SmallBNNet()


@pytest.mark.parametrize("size", [8, 10, 16])
def test_images_have_the_size_range_and_count_asked_for(teacher, size):
    labels = torch.tensor([0, 1, 2, 0, 1])  # more than batch_size: the count follows the labels
    result = GeneratorSynthesizer(teacher, **TINY).generate(labels, size, seed=0, report=_quiet)
    assert result.images.shape == (5, 3, size, size) and result.images.dtype == torch.float32
    assert 0 <= result.images.min() and result.images.max() <= 1 and result.images.std() > 0
    assert {"loss", "ce", "bn", "tv"} <= set(result.stats)


def test_warm_up_runs_once_and_every_inner_step_is_reported(teacher):
    synth = GeneratorSynthesizer(teacher, **TINY)
    assert synth.setup_steps(16) == 4 and synth.steps_per_batch == 2
    calls = []
    synth.generate(torch.tensor([0, 1, 2, 0]), 16, seed=0, report=lambda **f: calls.append(f))
    assert [c["phase"] for c in calls] == ["warm-up"] * 4 + ["batch"] * 2
    assert [c.get("meta") for c in calls[:4]] == ["1/2", "1/2", "2/2", "2/2"]
    assert synth.setup_steps(16) == 0 and synth.setup_steps(8) == 4  # kept per image size
    calls.clear()
    synth.generate(torch.tensor([0, 1, 2, 0]), 16, seed=1, report=lambda **f: calls.append(f))
    assert [c["phase"] for c in calls] == ["batch"] * 2


def test_progress_total_counts_the_warm_up(teacher, tmp_path):
    seen = []
    synthesize(GeneratorSynthesizer(teacher, **TINY), 8, 8, 3, seed=0, folder=tmp_path / "s",
               on_step=lambda done, total, **f: seen.append((done, total, f["phase"])))
    assert [d for d, _, _ in seen] == list(range(1, 9)) and {t for _, t, _ in seen} == {8}
    assert [p for _, _, p in seen] == ["warm-up"] * 4 + ["batch"] * 4


def test_a_batch_is_a_function_of_settings_labels_and_seed(teacher):
    labels = torch.tensor([0, 1, 2, 1])
    a = GeneratorSynthesizer(teacher, **TINY).generate(labels, 16, seed=1, report=_quiet).images
    torch.manual_seed(123)  # whatever the global generators hold (another process, a resumed run)
    torch.rand(7)
    b = GeneratorSynthesizer(teacher, **TINY).generate(labels, 16, seed=1, report=_quiet).images
    c = GeneratorSynthesizer(teacher, **TINY).generate(labels, 16, seed=2, report=_quiet).images
    d = GeneratorSynthesizer(teacher, **TINY, generator_seed=1).generate(labels, 16, seed=1, report=_quiet).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_a_batch_made_alone_equals_the_batch_made_after_the_others(teacher):
    labels = [torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1]), torch.tensor([2, 0, 1, 2])]
    in_order = GeneratorSynthesizer(teacher, **TINY)
    made = [in_order.generate(y, 16, batch_seed(3, k), _quiet).images for k, y in enumerate(labels)]
    alone = GeneratorSynthesizer(teacher, **TINY).generate(labels[2], 16, batch_seed(3, 2), _quiet).images
    assert torch.equal(alone, made[2]) and not torch.equal(made[1], made[2])
    again = in_order.generate(labels[0], 16, batch_seed(3, 0), _quiet).images  # the shared generator is unchanged
    assert torch.equal(again, made[0])


def test_interrupted_set_resumes_to_the_same_png_bytes(teacher, tmp_path):
    whole = synthesize(GeneratorSynthesizer(teacher, **TINY), 10, 16, 3, seed=5, folder=tmp_path / "whole")
    assert whole.generated_batches == 3

    def stop_in_second_batch(done, total, **fields):
        if done == 4 + 2 + 1:  # warm-up, batch 1, first step of batch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(GeneratorSynthesizer(teacher, **TINY), 10, 16, 3, seed=5, folder=tmp_path / "cut",
                   on_step=stop_in_second_batch)
    assert sorted(json.loads((tmp_path / "cut" / "index.json").read_text())["batches"]) == ["0"]
    resumed = synthesize(GeneratorSynthesizer(teacher, **TINY), 10, 16, 3, seed=5, folder=tmp_path / "cut")
    assert resumed.generated_batches == 2 and torch.equal(resumed.images, whole.images)
    names = sorted(p.name for p in (tmp_path / "whole" / "images").iterdir())
    assert len(names) == 10
    for name in names:
        assert (tmp_path / "whole" / "images" / name).read_bytes() == (tmp_path / "cut" / "images" / name).read_bytes()


def test_cache_keys_on_the_warm_up_settings(teacher, tmp_path):
    from synthesizers.errors import DataError

    synthesize(GeneratorSynthesizer(teacher, **TINY), 4, 8, 3, seed=0, folder=tmp_path / "s")
    with pytest.raises(DataError, match=r"other settings \(generator_seed\)"):
        synthesize(GeneratorSynthesizer(teacher, **TINY, generator_seed=3), 4, 8, 3, seed=0, folder=tmp_path / "s")
    with pytest.raises(DataError, match=r"other settings \(meta_steps\)"):
        synthesize(GeneratorSynthesizer(teacher, **{**TINY, "meta_steps": 3}), 4, 8, 3, seed=0, folder=tmp_path / "s")


def test_fine_tuning_matches_the_teacher_statistics_and_classes(teacher):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    settings = {**TINY, "batch_size": 8, "meta_steps": 0}

    def made(**options):
        result = GeneratorSynthesizer(teacher, **{**settings, **options}).generate(labels, 16, seed=0, report=_quiet)
        return result, quality_report(teacher, result.images, labels, mean, std)

    untuned, start = made(steps=1, lr=1e-6, lr_z=1e-6)
    tuned, end = made(steps=30, lr=0.05, lr_z=0.1)
    assert {"agreement", "bn_distance", "label_histogram", "predicted_histogram"} <= set(end)
    assert end["label_histogram"] == {"0": 3, "1": 3, "2": 2} and end["images"] == 8
    assert tuned.stats["bn"] < untuned.stats["bn"] / 2 and end["bn_distance"] < 0.8 * start["bn_distance"]
    _, classes_only = made(steps=30, lr=0.05, lr_z=0.1, bn_weight=0.0)  # the tiny teacher barely tells classes apart
    assert classes_only["agreement"] >= start["agreement"] + 0.25


def test_conditional_generator_and_bf16_make_valid_images(teacher):
    labels = torch.tensor([0, 1, 2, 0])
    conditional = GeneratorSynthesizer(teacher, **TINY, conditional=True)
    result = conditional.generate(labels, 8, seed=0, report=_quiet)
    assert conditional.prepare(8).embedding is not None and conditional.prepare(8).embedding.num_embeddings == 3
    assert GeneratorSynthesizer(teacher, **TINY).prepare(8).embedding is None
    half = GeneratorSynthesizer(teacher, **TINY, precision="bf16").generate(labels, 8, seed=0, report=_quiet)
    for images in (result.images, half.images):
        assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1


def test_the_teacher_is_left_as_it_was(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    GeneratorSynthesizer(teacher, **TINY).generate(torch.tensor([0, 1]), 16, 0, _quiet)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_generator_reaches_odd_sizes_and_keeps_no_running_statistics():
    generator = ImageGenerator(8, 4, 10, None)
    assert generator(torch.randn(3, 8), torch.zeros(3, dtype=torch.long)).shape == (3, 3, 10, 10)
    assert not any(buffer.numel() for buffer in generator.buffers())


def test_class_ids_the_teacher_does_not_have_are_refused(teacher):
    with pytest.raises(ConfigError, match="class ids must be from 0 to 2"):
        GeneratorSynthesizer(teacher, **TINY).generate(torch.tensor([0, 3]), 8, 0, _quiet)


def test_diverged_loss_stops_with_a_message(teacher):
    with pytest.raises(SynthesisError, match="generator loss became inf at step 1 of 2 in warm-up iteration 1/2"):
        GeneratorSynthesizer(teacher, **TINY, bn_weight=float("inf"), first_bn_multiplier=0.0) \
            .generate(torch.tensor([0, 1]), 8, 0, _quiet)


def test_teacher_without_batchnorm_is_refused():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="no BatchNorm layers.*'diffusion' or 'ood'"):
        GeneratorSynthesizer(plain)


@pytest.mark.parametrize("option, value", [
    ("steps", 0), ("steps", 2.5), ("batch_size", 0), ("meta_steps", -1), ("meta_lr", 0.0), ("meta_lr", 1.5),
    ("lr", -1.0), ("lr_z", 0), ("latent_dim", 0), ("width", "wide"), ("generator_seed", "one"),
    ("tv_weight", -0.1), ("bn_weight", "big"), ("conditional", "yes"), ("flip", 1), ("precision", "fp8"),
    ("device", "no-such-device"),
])
def test_bad_settings_are_one_line_config_errors(teacher, option, value):
    with pytest.raises(ConfigError, match=option) as caught:
        GeneratorSynthesizer(teacher, **{option: value})
    assert "\n" not in str(caught.value)


def test_registry_builds_it_by_name_and_names_its_options(teacher):
    assert "generator" in list_synthesizers()
    assert isinstance(create_synthesizer("generator", teacher=teacher, **TINY), GeneratorSynthesizer)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'meta_stepz'.*meta_steps"):
        create_synthesizer("generator", teacher=teacher, meta_stepz=2)


# ---------------------------------------------------------------- through dfpractise


@pytest.fixture()
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPRACTISE_CACHE", str(tmp_path / "cache"))


SOURCE_TINY = {"steps": 1, "meta_steps": 1, "batch_size": 4, "latent_dim": 8, "width": 4}


def test_generator_source_makes_a_cached_set_with_a_quality_report(assets_dir, tmp_path, _private_cache):
    from dfpractise.config import DataConfig
    from dfpractise.models import create_model
    from dfpractise.sources import GeneratorSource, SourceContext, source_from_config

    teacher = create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20").eval()
    context = SourceContext.for_teacher(teacher, teacher_id="r20")
    source = source_from_config(DataConfig(source="generator", synthesis=SOURCE_TINY))
    assert isinstance(source, GeneratorSource) and source.options == SOURCE_TINY
    tiny = source.load(6, 32, seed=2, context=context)
    assert tiny.images.shape == (6, 3, 32, 32) and len(tiny.files) == 6 and tiny.class_names[0] == "airplane"
    (folder,) = list((tmp_path / "cache" / "synthetic").iterdir())
    assert folder.name.startswith("generator-") and tiny.report["method"] == "generator"
    assert tiny.report["generated_batches"] == 2 and tiny.report["settings"]["meta_steps"] == 1
    assert 0 <= tiny.report["agreement"] <= 1 and tiny.report["bn_distance"] > 0
    again = source_from_config(DataConfig(source="generator", synthesis=SOURCE_TINY)).load(6, 32, 2, context)
    assert again.report["generated_batches"] == 0 and torch.equal(again.images, tiny.images)


def test_cli_synthesize_with_the_generator_method(assets_dir, tmp_path, _private_cache):
    from dfpractise.cli import main

    out = tmp_path / "set"
    args = ["synthesize", "--method", "generator", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20",
            "--num-images", "4", "--out", str(out), "--steps", "1", "--batch-size", "4", "--option", "meta_steps=1",
            "--option", "width=4", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "generator" and report["images"] == 4 and report["settings"]["width"] == 4
    assert len(list((out / "images").glob("*.png"))) == 4 and (out / "samples.png").exists()
    bad = CliRunner().invoke(main, args[:-1] + ["--option", "meta_lr=2"])
    assert bad.exit_code == 2 and "meta_lr" in bad.output and bad.output.count("\n") == 1
