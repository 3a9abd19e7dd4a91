"""A run folder that survives careless and hostile use: diverged losses, two writers, a failed
--overwrite, edited manifests and weights, damaged checkpoints, private images, reruns."""

import copy
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from dfpractise.cli import main
from dfpractise.engine import compress
from dfpractise.errors import ConfigError, DataError, DivergedError, ModelError
from dfpractise.recovery import RECOVERY_METHODS, RecoveryMethod, recover
from dfpractise.report import write_json
from dfpractise.runs import RunFolder, load_run
from dfpractise.sources import read_file_list

from conftest import tiny_run_config


def _config(assets_dir, **changes):
    return tiny_run_config(assets_dir, **changes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, assets_dir):
    out = tmp_path_factory.mktemp("safety") / "run"
    compress(_config(assets_dir), out)
    return out


@pytest.fixture
def copy_of_run(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


# ---------------------------------------------------------------- diverged losses


def test_a_recovery_that_diverges_stops_naming_phase_and_iteration_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, assets_dir):
    from dfpractise.models.reference import load_model

    calls = {"n": 0}

    def nan_at_five(adapter, student, x, wanted, target, config):
        calls["n"] += 1
        value = student(x).float().pow(2).mean()
        return value * float("nan") if calls["n"] == 5 else value * 1e-6

    config = _config(assets_dir).recovery
    monkeypatch.setitem(RECOVERY_METHODS._entries, config.method, RecoveryMethod(nan_at_five, features_only=True))
    teacher, _, _ = load_model("cifar10_resnet20", "cifar10jpeg-resnet20")
    student = copy.deepcopy(teacher)
    checkpoint = tmp_path / "recovery.ckpt"
    images = torch.rand(8, 3, 32, 32)
    with pytest.raises(DivergedError, match=rf"recovery \({config.method}\) stopped at iteration 5 of 6: the loss "
                       "became nan") as error:
        recover(student, teacher, images, config, lambda x: x, lambda x: x, checkpoint=checkpoint)
    assert str(checkpoint) in str(error.value)
    state = torch.load(checkpoint, weights_only=True)
    assert state["iteration"] == 4, "the checkpoint of the last good iteration is kept"
    assert all(torch.isfinite(t).all() for t in state["student"].values() if t.is_floating_point())


def test_a_nan_recovery_is_an_error_not_a_saved_model(tmp_path, assets_dir):
    out = tmp_path / "run"
    result = _cli("run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "real",
                  "--data", assets_dir / "cifar10-jpeg" / "train", "--num-images", "12", "--drop", "1",
                  "--score-iterations", "1", "--recovery-iterations", "30", "--latency-repeats", "1",
                  "--batch-size", "4", "--set", "recovery.lr=1e9", "--out", out, "--quiet")
    _one_line_error(result, "recovery (mir-stages) stopped at iteration", "lower recovery.lr")
    assert not (out / "model.safetensors").exists() and not (out / "report.json").exists()
    assert (out / "selection.json").exists(), "the finished phases stay for a rerun"


def test_reports_stay_valid_json_when_a_number_is_not_finite(tmp_path):
    path = write_json({"final_loss": float("nan"), "curve": torch.tensor([1.0, float("inf")])}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"final_loss": None, "curve": [1.0, None]}


# ---------------------------------------------------------------- one writer per folder


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, assets_dir):
    out = tmp_path / "busy"
    with RunFolder.open(out, _config(assets_dir)):
        assert (out / ".lock").exists()
        with pytest.raises(ConfigError, match="another dfpractise process .* is writing"):
            RunFolder.open(out, _config(assets_dir))
        result = _cli("run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--out", out,
                      "--data", assets_dir / "cifar10-jpeg" / "train", "--quiet")
        _one_line_error(result, "another dfpractise process", ".lock")
    assert not out.exists(), "a folder opened and never written is not left behind"


def test_a_killed_writer_leaves_no_lock(tmp_path, assets_dir):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "killed"
    code = ("import sys, time; from dfpractise.runs import RunLock; from pathlib import Path; "
            "p = Path(sys.argv[1]); p.mkdir(); lock = RunLock.acquire(p); print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {child.pid}"):
        RunFolder.open(out, _config(assets_dir))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with RunFolder.open(out, _config(assets_dir)) as folder:  # the kernel dropped the dead process's lock
        assert folder.fresh


def test_overwrite_keeps_the_old_run_until_the_new_one_has_finished(run_dir, copy_of_run, assets_dir):
    old_weights = (copy_of_run / "model.safetensors").read_bytes()
    failing = _config(assets_dir, **{"recovery.lr": 1e9, "recovery.iterations": 20})
    with pytest.raises(DivergedError):
        compress(failing, copy_of_run, overwrite=True)
    assert (copy_of_run / "model.safetensors").read_bytes() == old_weights
    assert load_run(copy_of_run).report is not None, "the old run is still a finished, loadable run"

    replacement = _config(assets_dir, drop=1)
    result = compress(replacement, copy_of_run, overwrite=True)
    assert result.out_dir == copy_of_run and not (copy_of_run / ".next").exists()
    loaded = load_run(copy_of_run)
    assert loaded.manifest["dropped"] == result.dropped and len(result.dropped) == 1
    assert loaded.config.drop == 1
    assert (copy_of_run / "model.safetensors").read_bytes() != old_weights


def test_an_interrupted_overwrite_resumes_in_its_staging_folder(run_dir, copy_of_run, assets_dir):
    from conftest import interrupting_progress

    old_report = (copy_of_run / "report.json").read_text()
    replacement = _config(assets_dir, drop=1)
    with pytest.raises(KeyboardInterrupt):
        compress(replacement, copy_of_run, overwrite=True, progress=interrupting_progress("Recovering", 3))
    assert (copy_of_run / "report.json").read_text() == old_report
    assert (copy_of_run / ".next" / "recovery.ckpt").exists()
    result = compress(replacement, copy_of_run, overwrite=True, resume=True)
    assert result.report["recovery"]["resumed_from"] == 3
    assert load_run(copy_of_run).config.drop == 1 and not (copy_of_run / ".next").exists()


# ---------------------------------------------------------------- tampered folders


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, words", [
    ({"dropped": ["layer9.9"]}, "not a droppable block"),
    ({"weights": None, "teacher_weights": "../../../../etc/passwd"}, "inside the run folder"),
    ({"pruned_weights": "/etc/passwd"}, "inside the run folder"),
    ({"weights_sha256": None}, "without their sha256"),
    ({"input_size": -1}, "input_size must be a positive whole number"),
    ({"mean": "0.5"}, "mean must be three numbers"),
    ({"format": "something/9"}, "format"),
])
def test_an_edited_manifest_is_refused(copy_of_run, changes, words):
    _edit_manifest(copy_of_run, **changes)
    with pytest.raises((DataError, ModelError), match=words):
        load_run(copy_of_run)


def test_a_manifest_that_is_not_an_object_is_one_line(copy_of_run, eval_like):
    (copy_of_run / "manifest.json").write_text("[1, 2, 3]")
    _one_line_error(_cli("evaluate", copy_of_run, "--data", eval_like), "not a valid run manifest", "JSON object")


def test_weights_changed_after_the_run_are_refused(copy_of_run):
    from safetensors.torch import load_file, save_file

    state = load_file(copy_of_run / "model.safetensors")
    first = next(iter(state))
    state[first] = state[first] + 1
    save_file(state, copy_of_run / "model.safetensors")
    with pytest.raises(DataError, match="not the file this run wrote"):
        load_run(copy_of_run)


def test_a_truncated_weights_file_is_one_line_in_evaluate_and_latency(copy_of_run, eval_like):
    weights = copy_of_run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _one_line_error(_cli("evaluate", copy_of_run, "--data", eval_like), "model.safetensors")
    _one_line_error(_cli("latency", copy_of_run, "--repeats", "1"), "model.safetensors")
    manifest = json.loads((copy_of_run / "manifest.json").read_text())
    manifest.pop("sha256")
    manifest["format"] = "dfpractise-manifest/1"  # an older folder, without checksums: the reader still says why
    (copy_of_run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="cannot be read as safetensors"):
        load_run(copy_of_run)


@pytest.fixture
def eval_like(tmp_path, assets_dir):
    folder = tmp_path / "val"
    for class_dir in sorted((assets_dir / "cifar10-jpeg" / "val").iterdir()):
        (folder / class_dir.name).mkdir(parents=True)
        shutil.copy(sorted(class_dir.iterdir())[0], folder / class_dir.name)
    return folder


# ---------------------------------------------------------------- damaged and hostile checkpoints


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("content", ["empty", "truncated", "pickle"])
def test_a_damaged_or_hostile_checkpoint_on_resume_is_refused_and_never_run(tmp_path, assets_dir, content):
    from conftest import interrupting_progress

    out = tmp_path / "run"
    config = _config(assets_dir)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=interrupting_progress("Recovering", 3))
    checkpoint = out / "recovery.ckpt"
    marker = tmp_path / "code-ran"
    if content == "empty":
        checkpoint.write_bytes(b"")
    elif content == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    else:
        torch.save({"iteration": 3, "student": _RunsACommand(marker)}, checkpoint)
        assert not marker.exists()
    result = _cli("run", "--resume", "--out", out, "--quiet")
    _one_line_error(result, "recovery.ckpt is not a usable recovery checkpoint", "delete it")
    assert not marker.exists(), "the pickle's code never ran"


# ---------------------------------------------------------------- privacy and reruns


def test_a_run_from_real_images_keeps_their_names_and_hashes_not_their_pixels(run_dir, assets_dir, tmp_path):
    import hashlib

    assert not (run_dir / "samples.png").exists()
    entries = read_file_list(run_dir / "tiny_set.txt")
    assert len(entries) == 12 and all(label is not None for _, label in entries)
    for line in [l for l in (run_dir / "tiny_set.txt").read_text().splitlines() if not l.startswith("#")]:
        name, label, sha = line.split("\t")
        assert hashlib.sha256(open(name, "rb").read()).hexdigest() == sha
    asked = tmp_path / "with-samples"
    compress(_config(assets_dir, **{"data.save_samples": True, "recovery.iterations": 0}), asked)
    assert (asked / "samples.png").stat().st_size > 0
