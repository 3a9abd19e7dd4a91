"""The run folder: what a run writes, and how a compressed model is rebuilt from it.

A run folder holds the resolved recipe (``recipe.yaml``), the drop manifest (``manifest.json``:
architecture, weights reference and checksum, dropped blocks), the compressed weights
(``model.safetensors``), the tiny set's file list, a grid of its images (``samples.png``) and,
for synthesised sets, their quality report (``tiny_set.json``), the result of each finished phase
(``latency.json``, ``scores.json``, ``selection.json``; ``recovery.ckpt`` while recovery runs) and
``report.json``. The manifest plus the weights rebuild the pruned model exactly; never a pickled
module. ``RunFolder`` is how the engine writes one: it reads a finished phase back on resume or
computes and saves it, through one method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol, TypeVar

from torch import nn

from .errors import ConfigError, DataError, ModelError
from .models.weights import read_safetensors, save_safetensors
from .latency import BlockLatencyProfile
from .recoverability import BlockCosts
from .report import read_json, save_sample_grid, write_json
from .selection import Selection

MANIFEST_FORMAT = "dfpractise-manifest/1"
RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TEACHER_WEIGHTS = "teacher.safetensors"
FILE_LIST = "tiny_set.txt"
TINY_SET_REPORT = "tiny_set.json"
SAMPLES = "samples.png"
CHECKPOINT = "recovery.ckpt"
REPORT = "report.json"
PHASES = (BlockLatencyProfile, BlockCosts, Selection)
ARTEFACTS = (RECIPE, MANIFEST, WEIGHTS, TEACHER_WEIGHTS, FILE_LIST, TINY_SET_REPORT, SAMPLES,
             *(phase.FILE for phase in PHASES), CHECKPOINT, REPORT)


def save_weights(model: nn.Module, path: str | Path) -> None:
    save_safetensors(model, path)


def make_manifest(
    architecture: str,
    spec: Any,
    weights: str | None,
    weights_sha256: str | None,
    dropped: list[str],
    reference: Any = None,
    blocks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What rebuilds the pruned model: the architecture (and how it was built), what it expects
    as input, the teacher's weights (or where they are kept) and the units dropped."""
    return {
        "format": MANIFEST_FORMAT,
        "architecture": architecture,
        "reference": reference.to_json() if reference is not None else None,
        "num_classes": spec.num_classes,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "weights": weights,
        "weights_sha256": weights_sha256,
        "teacher_weights": TEACHER_WEIGHTS if weights is None else None,
        "blocks": dict(blocks or {}),
        "dropped": list(dropped),
        "pruned_weights": WEIGHTS,
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
    from dataclasses import replace

    from .models.adapter import set_spec
    from .models.reference import ModelReference, build, parse_reference
    from .models.weights import load_weights, resolve_weights, weights_sha256

    reference = (ModelReference.from_json(manifest["reference"]) if manifest.get("reference")
                 else parse_reference(manifest["architecture"]))
    teacher, spec = build(reference, num_classes=manifest["num_classes"])
    known = {k: manifest[k] for k in ("input_size", "mean", "std") if manifest.get(k) is not None}
    set_spec(teacher, replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()}))
    if manifest.get("weights"):
        path = resolve_weights(manifest["weights"])
        recorded = manifest.get("weights_sha256")
        if recorded and weights_sha256(path) != recorded:
            raise ModelError(
                f"weights '{manifest['weights']}' ({path}) differ from the ones this run used "
                f"(sha256 {recorded[:12]}...)"
            )
        load_weights(teacher, str(path))
        return teacher
    if run_dir is None:
        raise ModelError("this manifest's teacher weights live in its run folder; give the folder")
    teacher.load_state_dict(read_safetensors(run_dir / manifest["teacher_weights"]))
    return teacher


def build_pruned(manifest: dict[str, Any], teacher: nn.Module, weights_path: Path | None) -> nn.Module:
    """Drop the manifest's units from the teacher's architecture and load the pruned weights."""
    from .models.adapter import adapter_for

    pruned = adapter_for(teacher, **(manifest.get("blocks") or {})).drop(manifest["dropped"])
    if weights_path is not None:
        missing, unexpected = pruned.load_state_dict(read_safetensors(weights_path), strict=False)
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


class PhaseResult(Protocol):
    """What a phase leaves in the run folder: a dataclass that writes and reads itself as JSON."""

    FILE: str

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=PhaseResult)


class RunFolder:
    """The folder a run writes as it goes, so that an interrupted run resumes where it stopped.

    ``path`` None is a run that keeps nothing (a Python caller's experiment). ``reuse`` is a dict
    shared across runs in one process (benchmarks, sweeps): phase results kept under keys made of
    every setting they depend on, so runs differing only in target or recovery do not time and
    score the same blocks again.
    """

    def __init__(self, path: Path | None, fresh: bool, resume: bool, overwrite: bool, reuse: dict | None = None):
        self.path, self.fresh, self.resume, self.overwrite = path, fresh, resume, overwrite
        self.reuse = reuse if reuse is not None else {}

    @classmethod
    def open(cls, path: str | Path | None, config: Any, *, resume: bool = False, overwrite: bool = False,
             reuse: dict | None = None) -> "RunFolder":
        """Check ``path`` for this run: refuse to mix with, or silently replace, another run."""
        if path is None:
            return cls(None, True, False, False, reuse)
        path = Path(path)
        recipe_path = path / RECIPE
        if recipe_path.exists() and resume:
            from .config import RunConfig
            from .recipe import load_recipe

            if RunConfig.from_dict(load_recipe(recipe_path)).to_dict() != config.to_dict():
                raise ConfigError(
                    f"{path} was started with different settings; resume it with its own recipe "
                    f"(dfpractise run --resume --out {path}) or choose another --out"
                )
            return cls(path, False, True, False, reuse)
        if recipe_path.exists() and not overwrite:
            raise ConfigError(
                f"{path} already holds a run; continue it with --resume, replace it with --overwrite, "
                "or choose another --out"
            )
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        if path.exists() and any(path.iterdir()) and not overwrite and not recipe_path.exists():
            raise ConfigError(f"{path} exists and is not empty; choose another --out or pass --overwrite")
        return cls(path, True, False, overwrite, reuse)

    @property
    def finished(self) -> bool:
        return self.path is not None and not self.fresh and (self.path / REPORT).exists()

    @property
    def checkpoint(self) -> Path | None:
        return self.path / CHECKPOINT if self.path is not None else None

    def start(self, config: Any) -> None:
        """Write the recipe of a fresh run (once its inputs are known to be good)."""
        if self.path is None or not self.fresh:
            return
        from .recipe import save_recipe

        if self.overwrite and self.path.exists():
            for name in ARTEFACTS:  # only what a run writes: --overwrite never empties a folder
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        save_recipe(config, self.path / RECIPE)

    def phase(self, kind: type[R], compute: Callable[[], R], *, key: Hashable | None = None,
              log: Callable[[str], None] | None = None) -> R:
        """The phase's result: read back from a resumed run, else reused by ``key``, else computed.

        Whatever is not read back is written to the folder at once.
        """
        saved = self.path / kind.FILE if self.path is not None else None
        if self.resume and saved is not None and saved.exists():
            if log is not None:
                log(f"resuming: {kind.FILE} read from the run folder")
            try:
                return kind.from_json(read_json(saved))  # type: ignore[attr-defined]
            except (KeyError, TypeError, ValueError, AttributeError):
                raise DataError(f"{saved} is damaged or was written by another version; delete it to redo "
                                "that phase, or start over with --overwrite") from None
        result = self.reuse.get(key) if key is not None else None
        if result is None:
            result = compute()
        if key is not None:
            self.reuse[key] = result
        if saved is not None:
            write_json(result.to_json(), saved)
        return result

    def save_tiny_set(self, tiny: Any) -> None:
        """File list, a picture of some samples, and (for synthesised sets) their quality report."""
        if self.path is None:
            return
        if tiny.files:
            tiny.save_file_list(self.path / FILE_LIST)
        save_sample_grid(tiny.images, tiny.labels, self.path / SAMPLES)
        if tiny.report is not None:
            write_json(tiny.report, self.path / TINY_SET_REPORT)

    def save_model(self, pruned: nn.Module, teacher: nn.Module, manifest: dict[str, Any]) -> None:
        """The pruned weights and the manifest that rebuilds them (the teacher's too if it has no file)."""
        if self.path is None:
            return
        save_weights(pruned, self.path / WEIGHTS)
        if manifest["weights"] is None:
            save_weights(teacher, self.path / TEACHER_WEIGHTS)
        write_json(manifest, self.path / MANIFEST)

    def finish(self, report: dict[str, Any]) -> None:
        if self.path is None:
            return
        write_json(report, self.path / REPORT)
        (self.path / CHECKPOINT).unlink(missing_ok=True)
