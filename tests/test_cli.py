"""The command line, end to end on the shared assets, and its one-line errors for bad input."""

import json
import shutil

import pytest
from click.testing import CliRunner

from dfpractise.cli import _parse_options, main

QUICK = ["--score-iterations", "3", "--recovery-iterations", "6", "--latency-repeats", "2", "--batch-size", "16"]


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory, assets_dir):
    """A small labelled folder: the first 10 validation images of each class."""
    folder = tmp_path_factory.mktemp("val-small")
    for class_dir in sorted((assets_dir / "cifar10-jpeg" / "val").iterdir()):
        (folder / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:10]:
            shutil.copy(image, folder / class_dir.name / image.name)
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, assets_dir, eval_folder):
    out = tmp_path_factory.mktemp("runs") / "r20"
    result = CliRunner().invoke(main, [
        "run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "real",
        "--data", str(assets_dir / "cifar10-jpeg" / "train"), "--num-images", "24",
        "--latency-reduction", "0.15", "--seed", "1", "--out", str(out), "--eval-data", str(eval_folder),
        "--quiet", *QUICK,
    ])
    assert result.exit_code == 0, result.output
    return out


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_run_writes_a_complete_run_folder(finished_run):
    for name in ["recipe.yaml", "manifest.json", "model.safetensors", "tiny_set.txt", "report.json"]:
        assert (finished_run / name).exists(), name
    assert not (finished_run / "recovery.ckpt").exists()
    report = json.loads((finished_run / "report.json").read_text())
    assert report["dropped"] and report["latency"]["selection_reduction"] >= 0.15
    assert report["teacher"]["top1"] > 50 and report["pruned"]["top1"] is not None
    assert report["pruned"]["params"] < report["teacher"]["params"]
    assert report["pruned"]["macs"] < report["teacher"]["macs"]
    assert [b["name"] for b in report["blocks"]][0] == "layer1.1"
    assert {"latency", "scoring", "recovery", "evaluation", "total"} <= set(report["phases"])
    lines = [l for l in (finished_run / "tiny_set.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(lines) == 24


def test_evaluate_rebuilds_the_run_and_prints_json(finished_run, eval_folder):
    result = _invoke("evaluate", finished_run, "--data", eval_folder, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    report = json.loads((finished_run / "report.json").read_text())
    assert scores["teacher_top1"] == pytest.approx(report["teacher"]["top1"])
    assert scores["pruned_top1"] == pytest.approx(report["pruned"]["top1"])


def test_latency_json(finished_run):
    result = _invoke("latency", finished_run, "--json", "--repeats", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["teacher_ms"] > 0 and data["pruned_ms"] > 0
    assert -1 < data["reduction"] < 1
    assert data["batch_size"] == 16 and data["resolution"] == 32


def test_blocks_json_lists_candidates_in_network_order():
    result = _invoke("blocks", "--model", "cifar10_resnet20", "--json", "--repeats", "2", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [b["name"] for b in data["blocks"]] == ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert all("delta_lat" in b for b in data["blocks"])


def test_resume_of_a_finished_run_changes_nothing(finished_run):
    before = (finished_run / "model.safetensors").read_bytes()
    result = _invoke("run", "--resume", "--out", finished_run, "--quiet")
    assert result.exit_code == 0, result.output
    assert (finished_run / "model.safetensors").read_bytes() == before


def test_existing_run_folder_is_not_overwritten_by_accident(finished_run, assets_dir):
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", assets_dir / "cifar10-jpeg" / "train",
                     "--out", finished_run, "--quiet")
    assert result.exit_code == 2
    assert "already holds a run" in result.stderr


def test_a_failed_start_leaves_no_run_behind(tmp_path, train_dir):
    out = tmp_path / "o"
    first = _invoke("run", "--model", "cifar10_resnt20", "--data", train_dir, "--out", out, "--quiet")
    assert first.exit_code == 2 and "cifar10_resnet20" in first.stderr  # suggests the close name
    assert not (out / "recipe.yaml").exists()


def test_overwrite_removes_only_run_files(tmp_path, train_dir):
    out = tmp_path / "o"
    out.mkdir()
    (out / "recipe.yaml").write_text("model: cifar10_resnet20\n")
    (out / "notes.txt").write_text("mine")
    result = _invoke("run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--data", train_dir,
                     "--num-images", "8", "--drop", "1", "--recovery", "none", "--out", out, "--overwrite",
                     "--quiet", *QUICK)
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["dropped"]


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture()
def train_dir(assets_dir):
    return assets_dir / "cifar10-jpeg" / "train"


def test_missing_data_folder(tmp_path):
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", tmp_path / "nope", "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "nope")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", tmp_path / "empty", "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "empty")


def test_folder_of_corrupt_images(tmp_path):
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "bad" / "cat" / f"{i}.jpg").write_bytes(b"not an image")
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", tmp_path / "bad", "--num-images", "2",
                     "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result)


def test_unknown_model(tmp_path, train_dir):
    result = _invoke("run", "--model", "resnet9000", "--data", train_dir, "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "resnet9000")


def test_weights_that_do_not_fit(tmp_path, train_dir):
    result = _invoke("run", "--model", "cifar10_resnet56", "--weights", "cifar10jpeg-resnet20", "--data", train_dir,
                     "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "missing")


def test_more_images_than_exist(tmp_path, train_dir):
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", train_dir, "--num-images", "20000",
                     "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "20000")


@pytest.mark.parametrize("target", ["0", "1", "1.5", "-0.2"])
def test_target_outside_unit_interval(tmp_path, train_dir, target):
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", train_dir, "--latency-reduction", target,
                     "--out", tmp_path / "o", "--quiet")
    _assert_one_line_error(result, "between 0 and 1")


def test_unreachable_target_names_the_largest_cut(tmp_path, train_dir):
    result = _invoke("run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--data", train_dir,
                     "--num-images", "8", "--latency-reduction", "0.97", "--out", tmp_path / "o", "--quiet", *QUICK)
    _assert_one_line_error(result, "out of reach", "cuts")


def test_env_json():
    result = _invoke("env", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["torch"]


def test_set_overrides_any_setting_by_its_recipe_key(tmp_path, train_dir):
    out = tmp_path / "o"
    result = _invoke("run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--data", train_dir,
                     "--num-images", "8", "--drop", "1", "--out", out, "--quiet", *QUICK,
                     "--set", "recovery.lr=1e-3", "--set", "recovery.milestones=[0.5]", "--set", "scoring.views=2")
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["recovery"]["lr"] == 0.001 and saved["recovery"]["milestones"] == [0.5]
    assert saved["scoring"]["views"] == 2 and saved["recovery"]["iterations"] == 6  # named options still apply


@pytest.mark.parametrize("pair, fragment", [
    ("recovery.lrr=0.1", "--set recovery.lrr: unknown setting 'recovery.lrr' (known here: method,"),
    ("seed=one", "'seed' must be a whole number, got 'one'"),
    ("latency.repeats=0", "latency.repeats must be at least 1, got 0"),
    ("recovery", "--set expects KEY=VALUE"),
])
def test_set_errors_are_one_line(tmp_path, train_dir, pair, fragment):
    result = _invoke("run", "--model", "cifar10_resnet20", "--data", train_dir, "--out", tmp_path / "o",
                     "--set", pair, "--quiet")
    _assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()


def test_choices_come_from_the_registries():
    from dfpractise.recoverability import DROP_COSTS
    from dfpractise.recovery import RECOVERY_METHODS
    from dfpractise.selection import SELECTION_METHODS
    from dfpractise.sources import SOURCES

    text = "".join(_invoke("run", "--help").output.split())  # help wraps long choice lists
    for registry in (DROP_COSTS, RECOVERY_METHODS, SELECTION_METHODS, SOURCES):
        assert "[" + "|".join(registry.names()) + "]" in text


def test_synthesis_option_numbers_in_exponent_form_are_numbers():
    assert _parse_options(("lr=1e-3", "steps=20", "flip=false", "name=x1e3"), "--synthesis-option") == {
        "lr": 0.001, "steps": 20, "flip": False, "name": "x1e3"}


def test_blocks_refuses_a_zero_batch_in_one_line():
    result = _invoke("blocks", "--model", "cifar10_resnet20", "--batch-size", "0")
    _assert_one_line_error(result, "latency.batch_size must be at least 1, got 0")


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_setting_with_fixed_words_offers_them_as_choices(command):
    """A Literal setting (precision) is a click choice: listed in --help, a typo refused in one line."""
    runner = CliRunner()
    assert "[auto|fp32|bf16]" in runner.invoke(main, [command, "--help"]).output
    result = runner.invoke(main, [command, "--precision", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in result.output
