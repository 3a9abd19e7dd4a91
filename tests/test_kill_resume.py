"""SIGKILL, not Ctrl-C: a process killed mid-synthesis or mid-recovery leaves nothing its resume
cannot use, and the resumed result is bit-identical to an uninterrupted one (CPU, same seed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfpractise.engine import compress
from dfpractise.recipe import save_recipe

from conftest import tiny_run_config

CLI = [sys.executable, "-c", "from dfpractise.cli import main; main()"]


def _kill_when(command: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if child.poll() is not None:
                pytest.fail(f"the process ended before it could be killed: {child.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was never reached")
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def _finish(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _batches(folder: Path) -> int:
    try:
        return len(json.loads((folder / "index.json").read_text())["batches"])
    except (OSError, ValueError, KeyError):
        return 0


def test_synthesis_killed_mid_way_resumes_to_the_same_png_bytes(tmp_path):
    def synthesize(out: Path) -> list[str]:
        return [*CLI, "synthesize", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20",
                "--num-images", "8", "--batch-size", "2", "--steps", "15", "--seed", "2", "--out", str(out), "--quiet"]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _finish(synthesize(whole))
    _kill_when(synthesize(killed), lambda: _batches(killed) >= 1)
    assert _batches(killed) < 4, "killed before the end"
    _finish(synthesize(killed))
    names = sorted(p.name for p in (whole / "images").iterdir())
    assert names == sorted(p.name for p in (killed / "images").iterdir()) and len(names) == 8
    for name in names:
        assert (whole / "images" / name).read_bytes() == (killed / "images" / name).read_bytes(), name
    assert not [p for p in killed.rglob("*.tmp")], "no temporary file survives the resume"


def test_recovery_killed_mid_way_resumes_to_the_same_weights(tmp_path, assets_dir):
    config = tiny_run_config(assets_dir, seed=5, **{"data.num_images": 16, "scoring.batch_size": 8,
                                                   "recovery.iterations": 80, "recovery.batch_size": 8})
    whole = tmp_path / "whole"
    compress(config, whole)

    # The same run stopped after selection (its finished phases copied), then killed in recovery.
    killed = tmp_path / "killed"
    killed.mkdir()
    for name in ("latency.json", "scores.json", "selection.json", "tiny_set.txt"):
        shutil.copy(whole / name, killed / name)
    save_recipe(config, killed / "recipe.yaml")
    resume = [*CLI, "run", "--resume", "--out", str(killed), "--quiet"]
    _kill_when(resume, lambda: (killed / "recovery.ckpt").exists())
    assert not (killed / "report.json").exists() and not (killed / "model.safetensors").exists()
    _finish(resume)
    report = json.loads((killed / "report.json").read_text())
    assert report["recovery"]["resumed_from"] > 0, "recovery went on from the checkpoint"
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
