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

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol, TypeVar

from torch import nn

from .errors import ConfigError, DataError, ModelError
from .models.weights import read_safetensors, save_safetensors
from .latency import BlockLatencyProfile
from .recoverability import BlockCosts
from .report import read_json, save_sample_grid, write_json
from .sources.base import reported_part
from .selection import Selection
from .trials import Trials

MANIFEST_FORMAT = "dfpractise-manifest/2"  # /2 adds the sha256 of the weights files in the folder
READABLE_FORMATS = ("dfpractise-manifest/1", MANIFEST_FORMAT)
RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TEACHER_WEIGHTS = "teacher.safetensors"
FILE_LIST = "tiny_set.txt"
TINY_SET_REPORT = "tiny_set.json"
SAMPLES = "samples.png"
CHECKPOINT = "recovery.ckpt"
REPORT = "report.json"
LOCK = ".lock"  # held (flock) by the process writing the folder
STAGING = ".next"  # an --overwrite run is built here and moved in once it has finished
PHASES = (BlockLatencyProfile, BlockCosts, Selection, Trials)
ARTEFACTS = (RECIPE, MANIFEST, WEIGHTS, TEACHER_WEIGHTS, FILE_LIST, TINY_SET_REPORT, SAMPLES,
             *(phase.FILE for phase in PHASES), Trials.PARTIAL, CHECKPOINT, REPORT)


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
        "sha256": {},  # filled by RunFolder.save_model once the files exist
    }


def save_model(folder: str | Path, pruned: nn.Module, teacher: nn.Module, manifest: dict[str, Any]) -> None:
    """The pruned weights and the manifest that rebuilds them (the teacher's too if it has no
    file), with the checksum of each weights file written: what ``load_run`` reads back."""
    from .models.weights import weights_sha256

    folder = Path(folder)
    written = [WEIGHTS] + ([TEACHER_WEIGHTS] if manifest["weights"] is None else [])
    save_weights(pruned, folder / WEIGHTS)
    if manifest["weights"] is None:
        save_weights(teacher, folder / TEACHER_WEIGHTS)
    manifest = {**manifest, "sha256": {name: weights_sha256(folder / name) for name in written}}
    write_json(manifest, folder / MANIFEST)


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


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Refuse a manifest this project did not write (or that was edited): wrong types, sizes out of
    range, file names that leave the run folder, external weights without a checksum."""
    def bad(why: str) -> DataError:
        return DataError(f"{path} is not a valid run manifest: {why}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") not in READABLE_FORMATS:
        raise bad(f"format {manifest.get('format')!r} is not {MANIFEST_FORMAT}")
    if not isinstance(manifest.get("architecture"), str) or not manifest["architecture"]:
        raise bad("no architecture")
    for key in ("num_classes", "input_size"):
        value = manifest.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise bad(f"{key} must be a positive whole number, found {value!r}")
    for key in ("mean", "std"):
        value = manifest.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != 3
                                  or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
            raise bad(f"{key} must be three numbers, found {value!r}")
    if manifest.get("std") and min(manifest["std"]) <= 0:
        raise bad("std must be positive")
    dropped = manifest.get("dropped")
    if not isinstance(dropped, list) or not all(isinstance(n, str) for n in dropped):
        raise bad("dropped must be a list of block names")
    if not isinstance(manifest.get("blocks") or {}, dict):
        raise bad("blocks must be an object")
    if manifest.get("weights") is not None:
        if not isinstance(manifest["weights"], str) or not _is_sha256(manifest.get("weights_sha256")):
            raise bad("external teacher weights without their sha256 cannot be verified")
    elif not _is_file_name(manifest.get("teacher_weights")):
        raise bad(f"teacher_weights {manifest.get('teacher_weights')!r} is not a file name inside the run folder")
    if not _is_file_name(manifest.get("pruned_weights", WEIGHTS)):
        raise bad(f"pruned_weights {manifest.get('pruned_weights')!r} is not a file name inside the run folder")
    hashes = manifest.get("sha256")
    if manifest["format"] == MANIFEST_FORMAT and not (
            isinstance(hashes, dict) and all(_is_file_name(k) and _is_sha256(v) for k, v in hashes.items())):
        raise bad("sha256 must map the folder's weights files to their checksums")
    return manifest


def _is_file_name(name: Any) -> bool:
    """``name`` is a plain file name (no folders, no '..', not hidden) of a file in ``folder``."""
    return isinstance(name, str) and name == Path(name).name and not name.startswith(".") and name != ""


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _verified(run_dir: Path, manifest: dict[str, Any], name: str) -> Path:
    """The folder's file ``name``, refused when its checksum differs from the manifest's."""
    from .models.weights import weights_sha256

    path = run_dir / name
    if not path.is_file():
        raise DataError(f"{run_dir} is missing {name}, which its manifest names")
    recorded = (manifest.get("sha256") or {}).get(name)
    if manifest["format"] == MANIFEST_FORMAT and recorded is None:
        raise DataError(f"{run_dir / MANIFEST} records no checksum for {name}")
    if recorded is not None and weights_sha256(path) != recorded:
        raise DataError(f"{path} is not the file this run wrote (its sha256 differs from the manifest's); "
                        "the folder was changed after the run")
    return path


def build_architecture(manifest: dict[str, Any]) -> nn.Module:
    """The manifest's architecture with its input spec recorded (``set_spec``), weights as built."""
    from dataclasses import replace

    from .models.adapter import set_spec
    from .models.reference import ModelReference, build, parse_reference

    reference = (ModelReference.from_json(manifest["reference"]) if manifest.get("reference")
                 else parse_reference(manifest["architecture"]))
    model, spec = build(reference, num_classes=manifest["num_classes"])
    known = {k: manifest[k] for k in ("input_size", "mean", "std") if manifest.get(k) is not None}
    return set_spec(model, replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()}))


def build_teacher(manifest: dict[str, Any], run_dir: Path | None = None) -> nn.Module:
    """The teacher the manifest names, with its weights (checksum verified when recorded)."""
    from .models.weights import load_weights, resolve_weights, weights_sha256

    teacher = build_architecture(manifest)
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
    teacher.load_state_dict(_read_weights(_verified(run_dir, manifest, manifest["teacher_weights"])))
    return teacher


def _read_weights(path: Path) -> dict[str, Any]:
    try:
        return read_safetensors(path)
    except Exception as err:  # noqa: BLE001 - truncated, empty or not safetensors: one answer
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path} cannot be read as safetensors ({reason[:120]}); the file is damaged") from None


def build_pruned(manifest: dict[str, Any], teacher: nn.Module, weights_path: Path | None) -> nn.Module:
    """Drop the manifest's units from the teacher's architecture and load the pruned weights; the
    pruned model keeps the teacher's input spec."""
    from .models.adapter import adapter_for, set_spec, spec_of

    pruned = set_spec(adapter_for(teacher, **(manifest.get("blocks") or {})).drop(manifest["dropped"]),
                      spec_of(teacher))
    if weights_path is not None:
        missing, unexpected = pruned.load_state_dict(_read_weights(weights_path), strict=False)
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
    manifest = check_manifest(read_json(manifest_path), manifest_path)
    teacher = build_teacher(manifest, run_dir)
    pruned = build_pruned(manifest, teacher, _verified(run_dir, manifest, manifest.get("pruned_weights", WEIGHTS)))
    report = read_json(run_dir / REPORT) if (run_dir / REPORT).exists() else None
    return LoadedRun(run_dir, manifest, teacher, pruned, report)


class PhaseResult(Protocol):
    """What a phase leaves in the run folder: a dataclass that writes and reads itself as JSON."""

    FILE: str

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=PhaseResult)


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``.lock``): a second process writing the same
    folder is refused at once. The kernel drops the lock when its process dies, even by SIGKILL,
    so a killed run never leaves a folder locked."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self.handle = path, handle

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock | None":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return None
        path = folder / LOCK
        while True:
            try:
                handle = open(path, "a+", encoding="utf-8")
            except OSError as err:
                raise ConfigError(f"cannot write to the run folder {folder}: {err.strerror or err}") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                handle.close()
                raise ConfigError(f"another dfpractise process (pid {owner}) is writing {folder}; wait for it to "
                                  f"finish or choose another --out (lock file {path})") from None
            try:  # the previous holder may have removed the file between our open and our lock
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        import fcntl

        self.path.unlink(missing_ok=True)
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


class RunFolder:
    """The folder a run writes as it goes, so that an interrupted run resumes where it stopped.

    ``path`` None is a run that keeps nothing (a Python caller's experiment). ``reuse`` is a dict
    shared across runs in one process (benchmarks, sweeps): phase results kept under keys made of
    every setting they depend on, so runs differing only in target or recovery do not time and
    score the same blocks again.

    Use it as a context manager: the folder is locked while the run writes it. ``--overwrite`` of a
    finished or started run builds the new one in ``.next/`` inside the folder and moves it in only
    when it has finished, so a failed replacement never costs the old model (``path`` is where this
    run writes, ``final`` the folder the user named).
    """

    def __init__(self, path: Path | None, fresh: bool, resume: bool, overwrite: bool, reuse: dict | None = None,
                 final: Path | None = None, lock: RunLock | None = None, created: bool = False):
        self.path, self.fresh, self.resume, self.overwrite = path, fresh, resume, overwrite
        self.reuse = reuse if reuse is not None else {}
        self.final = final if final is not None else path
        self.lock, self.created = lock, created

    @classmethod
    def open(cls, path: str | Path | None, config: Any, *, resume: bool = False, overwrite: bool = False,
             reuse: dict | None = None) -> "RunFolder":
        """Lock ``path`` for this run and decide how to write it: refuse to mix with, or silently
        replace, another run."""
        if path is None:
            return cls(None, True, False, False, reuse)
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder {path}: {err.strerror or err}") from None
        lock = RunLock.acquire(path)
        try:
            return cls._decide(path, config, resume, overwrite, reuse, lock, created)
        except BaseException:
            cls(path, True, False, False, reuse, lock=lock, created=created).close()
            raise

    @classmethod
    def _decide(cls, path: Path, config: Any, resume: bool, overwrite: bool, reuse: dict | None,
                lock: RunLock | None, created: bool) -> "RunFolder":
        here = dict(reuse=reuse, final=path, lock=lock, created=created)
        staging = path / STAGING
        if (staging / REPORT).exists():  # a replacement that finished but was stopped while moving in
            cls(staging, False, False, False, final=path)._move_in()
        if resume and overwrite and _same_run(staging, config):  # an interrupted replacement
            return cls(staging, False, True, False, **here)
        if (path / RECIPE).exists():
            if resume and _same_run(path, config):
                return cls(path, False, True, False, **here)
            if not overwrite:
                if resume:
                    raise ConfigError(
                        f"{path} was started with different settings; resume it with its own recipe "
                        f"(dfpractise run --resume --out {path}), replace it with --overwrite, or choose another --out"
                    )
                raise ConfigError(f"{path} already holds a run; continue it with --resume, replace it with "
                                  "--overwrite, or choose another --out")
            shutil.rmtree(staging, ignore_errors=True)
            return cls(staging, True, False, False, **here)
        if any(p.name not in (LOCK, STAGING) for p in path.iterdir()) and not overwrite:
            raise ConfigError(f"{path} exists and is not empty; choose another --out or pass --overwrite")
        return cls(path, True, False, overwrite, **here)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; a folder this run created and never wrote is removed again."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created and self.final is not None and self.final.is_dir() and not any(self.final.iterdir()):
            self.final.rmdir()

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
            return self.known(kind, log=log)  # type: ignore[return-value]
        result = self.known(kind, key=key)
        if result is None:
            result = compute()
        if key is not None:
            self.reuse[key] = result
        if saved is not None:
            write_json(result.to_json(), saved)
        return result

    def known(self, kind: type[R], *, key: Hashable | None = None,
              log: Callable[[str], None] | None = None) -> R | None:
        """The phase's result if it needs no computing (read back from a resumed run, or reused by
        ``key``), else None; nothing is written."""
        saved = self.path / kind.FILE if self.path is not None else None
        if self.resume and saved is not None and saved.exists():
            if log is not None:
                log(f"resuming: {kind.FILE} read from the run folder")
            try:
                return kind.from_json(read_json(saved))  # type: ignore[attr-defined]
            except (KeyError, TypeError, ValueError, AttributeError):
                raise DataError(f"{saved} is damaged or was written by another version; delete it to redo "
                                "that phase, or start over with --overwrite") from None
        return self.reuse.get(key) if key is not None else None

    def save_tiny_set(self, tiny: Any, save_samples: bool = False) -> None:
        """File list (names and hashes), for synthesised sets their quality report and a picture of
        some samples; a picture of real or out-of-domain images only when asked (``save_samples``):
        their pixels may not be the user's to share."""
        if self.path is None:
            return
        if tiny.files:
            tiny.save_file_list(self.path / FILE_LIST)
        if save_samples:
            save_sample_grid(tiny.images, tiny.labels, self.path / SAMPLES)
        elif tiny.report is not None:  # a quality report: images made here (not a user's photos beside them)
            save_sample_grid(*reported_part(tiny), self.path / SAMPLES)
        if tiny.report is not None:
            write_json(tiny.report, self.path / TINY_SET_REPORT)

    def save_model(self, pruned: nn.Module, teacher: nn.Module, manifest: dict[str, Any]) -> None:
        if self.path is not None:
            save_model(self.path, pruned, teacher, manifest)

    def finish(self, report: dict[str, Any]) -> None:
        """Write the report (the run is finished from then on); a replacement run moves in now."""
        if self.path is None:
            return
        write_json(report, self.path / REPORT)
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        if self.path != self.final:
            self._move_in()

    def _move_in(self) -> None:
        """Replace the old run's files by this one's, in an order that a crash cannot confuse: the old
        report goes first (the old run is no longer finished), the new report comes last."""
        final, staging = self.final, self.path
        for name in (REPORT, *ARTEFACTS):
            (final / name).unlink(missing_ok=True)
        for name in (RECIPE, *[a for a in ARTEFACTS if a not in (RECIPE, REPORT)], REPORT):
            if (staging / name).exists():
                os.replace(staging / name, final / name)
        shutil.rmtree(staging, ignore_errors=True)
        self.path = final


def _same_run(folder: Path, config: Any) -> bool:
    """Whether ``folder`` holds a run started with exactly ``config``'s settings."""
    if not (folder / RECIPE).exists():
        return False
    from .config import RunConfig
    from .recipe import load_recipe

    return RunConfig.from_dict(load_recipe(folder / RECIPE)).to_dict() == config.to_dict()
