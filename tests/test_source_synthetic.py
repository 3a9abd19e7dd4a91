"""The synthetic source through the source interface, the engine and the CLI (tiny settings)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dfpractise.cli import main
from dfpractise.config import DataConfig
from dfpractise.errors import ConfigError, DataError
from dfpractise.models import create_model
from dfpractise.sources import SourceContext, SyntheticSource, create_source, source_from_config

TINY = {"steps": 4, "batch_size": 8}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Synthetic sets go to a per-test cache, never to the user's."""
    monkeypatch.setenv("DFPRACTISE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def teacher(assets_dir):
    return create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20").eval()


def test_synthetic_set_is_cached_per_settings_and_reused(teacher, tmp_path):
    context = SourceContext.for_teacher(teacher, teacher_id="r20")
    tiny = create_source("synthetic", **TINY).load(12, 32, seed=3, context=context)
    assert tiny.images.shape == (12, 3, 32, 32) and tiny.labels.tolist() != []
    assert tiny.class_names[0] == "airplane" and len(tiny.files) == 12
    cache = tmp_path / "cache" / "synthetic"
    (folder,) = list(cache.iterdir())
    assert folder.name.startswith("bn-inversion-") and tiny.report["generated_batches"] == 2
    assert {"agreement", "bn_distance", "label_histogram", "settings"} <= set(tiny.report)
    again = create_source("synthetic", **TINY).load(12, 32, seed=3, context=context)
    assert again.report["generated_batches"] == 0 and (again.images == tiny.images).all()
    other = create_source("synthetic", **TINY).load(12, 32, seed=4, context=context)
    assert other.report["generated_batches"] == 2 and len(list(cache.iterdir())) == 2


def test_synthetic_source_needs_a_teacher():
    with pytest.raises(ConfigError, match="needs one in its context"):
        SyntheticSource(**TINY).load(4, 32, seed=0)


def test_bad_synthesis_option_is_one_line(teacher):
    with pytest.raises(ConfigError, match="'stepz'"):
        create_source("synthetic", stepz=3).load(4, 32, 0, SourceContext.for_teacher(teacher))


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        (DataConfig(source="real"), DataError, "needs a folder"),
        (DataConfig(source="ood"), DataError, "needs a folder"),
        (DataConfig(source="synthetic", path="/imgs"), ConfigError, "reads no folder"),
        (DataConfig(source="real", path="/imgs", synthesis={"steps": 2}), ConfigError, "takes no synthesis options"),
        (DataConfig(source="diffusion"), ConfigError, "needs a pipeline"),
        (DataConfig(source="gan"), DataError, "unknown image source 'gan'"),
    ],
)
def test_source_settings_that_cannot_work_are_refused(data, error, fragment):
    with pytest.raises(error, match=fragment):
        source_from_config(data)


def test_source_from_config_passes_each_source_its_settings(tmp_path):
    synthetic = source_from_config(DataConfig(source="synthetic", synthesis={"steps": 3}, cache_dir=str(tmp_path)))
    assert synthetic.options == {"steps": 3} and synthetic.cache_dir == tmp_path
    real = source_from_config(DataConfig(source="real", path=str(tmp_path), class_balanced=True))
    assert real.class_balanced and real.root == tmp_path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_synthesize_writes_images_report_and_grid(tmp_path, assets_dir):
    out = tmp_path / "set"
    args = ["synthesize", "--method", "bn-inversion", "--model", "cifar10_resnet20", "--weights",
            "cifar10jpeg-resnet20", "--num-images", "10", "--out", out, "--steps", "3", "--batch-size", "5"]
    result = _invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 10 and report["generated_batches"] == 2 and 0 <= report["agreement"] <= 1
    assert len(list((out / "images").glob("*.png"))) == 10
    assert (out / "samples.png").exists() and json.loads((out / "quality.json").read_text()) == report
    again = json.loads(_invoke(*args, "--json").stdout)
    assert again["generated_batches"] == 0
    changed = _invoke(*args[:-2], "--batch-size", "10")
    assert changed.exit_code == 2 and "other settings (batch_size)" in changed.output


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--method", "diffusion"], "needs --pipeline"),
        (["--pipeline", "x/y"], "only used by --method diffusion"),
        (["--option", "lr"], "expects KEY=VALUE"),
        (["--option", "stepz=3"], "'stepz'"),
        (["--num-images", "0"], "at least 1"),
    ],
)
def test_cli_synthesize_bad_input_is_one_line(tmp_path, assets_dir, extra, fragment):
    args = ["synthesize", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20",
            "--num-images", "4", "--out", tmp_path / "set", "--steps", "1"]
    result = _invoke(*args, *extra)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and result.output.count("\n") == 1


def test_cli_run_with_synthetic_source_uses_no_image_folder(tmp_path, assets_dir):
    out = tmp_path / "run"
    result = _invoke(
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "synthetic",
        "--num-images", "16", "--latency-reduction", "0.1", "--seed", "1", "--out", out,
        "--synthesis-option", "steps=3", "--synthesis-option", "batch_size=8", "--score-iterations", "2",
        "--recovery-iterations", "3", "--latency-repeats", "2", "--batch-size", "16", "--quiet", "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "synthetic" and report["num_images"] == 16
    assert report["tiny_set"]["method"] == "bn-inversion" and report["tiny_set"]["generated_batches"] == 2
    assert (out / "samples.png").exists() and json.loads((out / "tiny_set.json").read_text())["images"] == 16
    files = [l for l in (out / "tiny_set.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(files) == 16 and all(str(tmp_path / "cache") in f for f in files)
    assert "synthesis:" in (out / "recipe.yaml").read_text()


def test_cli_run_with_out_of_domain_images(tmp_path, assets_dir):
    out = tmp_path / "run"
    result = _invoke(
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "ood",
        "--data", assets_dir / "imagenet-sample-256", "--num-images", "16", "--latency-reduction", "0.1",
        "--out", out, "--score-iterations", "2", "--recovery-iterations", "3", "--latency-repeats", "2",
        "--batch-size", "16", "--quiet", "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "ood" and report["num_images"] == 16 and report["tiny_set"] is None
    assert not (out / "samples.png").exists(), "no pixels of the user's images without --save-samples"
    entries = [l.split("\t") for l in (out / "tiny_set.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(entries) == 16
    assert all(name.endswith(".JPEG") and label == "" and len(sha) == 64 for name, label, sha in entries)


def test_cli_run_with_synthetic_images_and_out_of_domain_photos_beside_them(tmp_path, assets_dir):
    out = tmp_path / "run"
    result = _invoke(
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "synthetic",
        "--num-images", "16", "--ood-data", assets_dir / "imagenet-sample-256", "--ood-images", "8",
        "--latency-reduction", "0.1", "--seed", "1", "--out", out, "--synthesis-option", "steps=3",
        "--synthesis-option", "batch_size=8", "--score-iterations", "2", "--recovery-iterations", "3",
        "--latency-repeats", "2", "--batch-size", "16", "--quiet", "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tiny_set"]["method"] == "bn-inversion"  # the quality report of the images made here
    entries = [l.split("\t") for l in (out / "tiny_set.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(entries) == 24
    assert all(str(tmp_path / "cache") in name for name, _, _ in entries[:16])
    photos = entries[16:]
    assert all(name.startswith(str(assets_dir)) and name.endswith(".JPEG") and len(sha) == 64 for name, _, sha in photos)
    assert "ood_path:" in (out / "recipe.yaml").read_text()
    again = _invoke("run", "--recipe", out / "recipe.yaml", "--out", tmp_path / "again", "--quiet", "--json")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "tiny_set.txt").read_text() == (out / "tiny_set.txt").read_text()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--ood-images", "8"], "data.ood_path, which is not set"),
        (["--ood-data", "no/such/folder"], "no/such/folder"),
        (["--ood-data", "{assets}/imagenet-sample-256", "--ood-images", "5000"], "holds only 1000"),
        (["--ood-data", "{assets}/imagenet-sample-256", "--recovery", "bp"], "out-of-domain photos"),
    ],
)
def test_cli_run_with_photos_that_cannot_work_is_one_line(tmp_path, assets_dir, extra, fragment):
    extra = [str(e).replace("{assets}", str(assets_dir)) for e in extra]
    result = _invoke(
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "synthetic",
        "--num-images", "8", "--synthesis-option", "steps=1", "--latency-reduction", "0.1",
        "--out", tmp_path / "run", "--quiet", *extra,
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output and result.output.strip().count("\n") == 0


def test_cli_sweep_takes_the_photos_options_as_run_does(tmp_path):
    result = _invoke("sweep", "--model", "cifar10_resnet20", "--source", "synthetic", "--ood-images", "8",
                     "--targets", "0.1", "--out", tmp_path / "sweep", "--quiet")
    assert result.exit_code == 2, result.output
    assert "data.ood_path, which is not set" in result.output and result.output.strip().count("\n") == 0


def test_cli_run_with_bp_recovery_needs_labels_that_ood_lacks(tmp_path, assets_dir):
    result = _invoke(
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "ood",
        "--data", assets_dir / "imagenet-sample-256", "--num-images", "8", "--recovery", "bp",
        "--out", tmp_path / "run", "--quiet",
    )
    assert result.exit_code == 2 and "label" in result.output


def test_ctrl_c_during_synthesize_keeps_batches_and_a_rerun_ends_with_the_same_images(tmp_path, assets_dir,
                                                                                      monkeypatch):
    from conftest import interrupting_progress

    import dfpractise.cli as cli

    args = ["synthesize", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--num-images", "9",
            "--steps", "2", "--batch-size", "3", "--seed", "7", "--quiet"]
    assert _invoke(*args, "--out", tmp_path / "whole").exit_code == 0
    monkeypatch.setattr(cli, "_progress", lambda quiet: interrupting_progress("Synthesising", 4))
    cut = _invoke(*args, "--out", tmp_path / "cut")
    assert cut.exit_code == 130 and "--resume" in cut.output and "Traceback" not in cut.output
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert sorted(index["batches"]) == ["0"]  # Ctrl-C in batch 2 (step 4) keeps batch 1
    monkeypatch.undo()
    monkeypatch.setenv("DFPRACTISE_CACHE", str(tmp_path / "cache"))
    resumed = json.loads(_invoke(*args[:-1], "--out", tmp_path / "cut", "--json").stdout)
    assert resumed["generated_batches"] == 2
    for name in sorted(p.name for p in (tmp_path / "whole" / "images").iterdir()):
        assert (tmp_path / "whole" / "images" / name).read_bytes() == (tmp_path / "cut" / "images" / name).read_bytes()
