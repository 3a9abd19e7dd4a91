"""The run folder: what a run writes, and how a compressed model is rebuilt from it.

A run folder holds the resolved recipe (``recipe.yaml``), the drop manifest (``manifest.json``:
architecture, weights reference and checksum, dropped blocks), the compressed weights
(``model.safetensors``), the tiny set's file list, a grid of its images (``samples.png``) and,
for synthesised sets, their quality report (``tiny_set.json``), intermediate results that let an interrupted
run resume (``scores.json``, ``selection.json``, ``recovery.ckpt``) and ``report.json``. The
manifest plus the weights rebuild the pruned model exactly; never a pickled module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from synthesizers.files import atomic_write
from torch import nn

from .errors import DataError, ModelError
from .report import read_json, write_json

MANIFEST_FORMAT = "dfpractise-manifest/1"
RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TEACHER_WEIGHTS = "teacher.safetensors"
FILE_LIST = "tiny_set.txt"
TINY_SET_REPORT = "tiny_set.json"
SAMPLES = "samples.png"
SCORES = "scores.json"
SELECTION = "selection.json"
CHECKPOINT = "recovery.ckpt"
REPORT = "report.json"
ARTEFACTS = (RECIPE, MANIFEST, WEIGHTS, TEACHER_WEIGHTS, FILE_LIST, TINY_SET_REPORT, SAMPLES, SCORES, SELECTION,
             CHECKPOINT, REPORT)


def save_weights(model: nn.Module, path: str | Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def make_manifest(
    architecture: str,
    num_classes: int,
    weights: str | None,
    weights_sha256: str | None,
    dropped: list[str],
    input_size: int,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "architecture": architecture,
        "num_classes": num_classes,
        "weights": weights,
        "weights_sha256": weights_sha256,
        "teacher_weights": TEACHER_WEIGHTS if weights is None else None,
        "dropped": list(dropped),
        "pruned_weights": WEIGHTS,
        "input_size": input_size,
    }


@dataclass
class LoadedRun:
    """A finished run, rebuilt from its folder."""

    path: Path
    manifest: dict[str, Any]
    teacher: nn.Module
    pruned: nn.Module
    report: dict[str, Any] | None

    @property
    def config(self):
        from .recipe import load_recipe
        from .config import RunConfig

        return RunConfig.from_dict(load_recipe(self.path / RECIPE))


def build_teacher(manifest: dict[str, Any], run_dir: Path | None = None) -> nn.Module:
    """The teacher the manifest names, with its weights (checksum verified when recorded)."""
    from .models import create_model
    from .models.weights import resolve_weights, weights_sha256

    if manifest.get("weights"):
        path = resolve_weights(manifest["weights"])
        recorded = manifest.get("weights_sha256")
        if recorded and weights_sha256(path) != recorded:
            raise ModelError(
                f"weights '{manifest['weights']}' ({path}) differ from the ones this run used "
                f"(sha256 {recorded[:12]}...)"
            )
        return create_model(manifest["architecture"], weights=str(path), num_classes=manifest["num_classes"])
    teacher = create_model(manifest["architecture"], num_classes=manifest["num_classes"])
    if run_dir is None:
        raise ModelError("this manifest's teacher weights live in its run folder; give the folder")
    teacher.load_state_dict(load_file(str(run_dir / manifest["teacher_weights"])))
    return teacher


def build_pruned(manifest: dict[str, Any], teacher: nn.Module, weights_path: Path | None) -> nn.Module:
    """Drop the manifest's blocks from the teacher's architecture and load the pruned weights."""
    from .models.blocks import drop_blocks

    pruned = drop_blocks(teacher, manifest["dropped"], manifest.get("input_size"))
    if weights_path is not None:
        state = load_file(str(weights_path))
        missing, unexpected = pruned.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"{weights_path} does not fit the manifest's pruned model "
                f"(missing: {', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
            )
    return pruned


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild teacher and pruned model of a finished run."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise DataError(f"run folder {run_dir} does not exist")
    if not manifest_path.exists() or not (run_dir / WEIGHTS).exists():
        raise DataError(f"{run_dir} holds no finished run (no {MANIFEST} and {WEIGHTS})")
    manifest = read_json(manifest_path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{manifest_path} is not a {MANIFEST_FORMAT} manifest")
    teacher = build_teacher(manifest, run_dir)
    pruned = build_pruned(manifest, teacher, run_dir / WEIGHTS)
    report = read_json(run_dir / REPORT) if (run_dir / REPORT).exists() else None
    return LoadedRun(run_dir, manifest, teacher, pruned, report)
