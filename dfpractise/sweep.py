"""One scoring, several targets: the latency-cut / top-1 trade-off a user chooses a target from.

``sweep(config, [0.1, 0.2, 0.3, 0.4], DIR)`` writes::

    DIR/target-0.10/ ...           one ordinary run folder per target (evaluate, latency, export take it)
    DIR/filter-pruning/target-0.10/  with baseline="filter-pruning": the baseline at that target
    DIR/sweep.json                 the settings and one row per target (and per baseline target)
    DIR/sweep.png                  measured latency cut against top-1: teacher, PRACTISE, baseline

Steps, for every target in increasing order:

1. The blocks are timed and scored once. The first target's run does it; every later target's
   run folder is started with that run's recipe (with its own target) and its two finished
   phases (``latency.json``, ``scores.json``), which depend on no target, so a later target, in
   this process or a resumed one, only selects, recovers and evaluates.
2. ``compress`` selects (measured), recovers and evaluates in the target's folder, resuming what
   an earlier call left unfinished; a finished folder is read, not redone.
3. A target the model cannot reach (beyond the measured cut of dropping every candidate, or not
   confirmed by measurement) is a row marked ``unreachable`` with the reason, not a failed sweep.
   Its folder keeps its phases, and the next call tries it again (cheaply: they are read back).
4. With ``baseline="filter-pruning"``: Torch-Pruning filter pruning (L1, block-internal channels)
   at the ratio whose measured cut matches the PRACTISE model's measured cut at that target
   (``baseline_goal``), recovered with the same recovery settings, images and seed, evaluated on the same images and
   timed against the teacher as the run's model is (``dfpractise.baselines``).
5. ``sweep.json`` (rewritten after every target) and ``sweep.png`` (needs matplotlib).

A second call with the same settings resumes unfinished targets and reuses finished ones; other
targets may be given (rows are those of the targets asked for). Other settings are refused:
a sweep folder holds one sweep.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .config import RunConfig
from .errors import ConfigError, DFPractiseError, TargetError
from .progress import Progress

FORMAT = "dfpractise-sweep/1"
RECORD = "sweep.json"
PLOT = "sweep.png"
BASELINES = ("filter-pruning",)
BASELINE_DIR = "filter-pruning"
SHARED_PHASES = ("latency.json", "scores.json")  # the phases no target changes: timing and scoring
BASELINE_IMPORTANCE = "l1"
BASELINE_TOLERANCE = 0.02  # the filter-pruned cut must be this close to PRACTISE's
BASELINE_ROUND_TO = (8, None)  # widths in multiples of 8 first, then unrounded


@dataclass
class SweepPoint:
    """One model of the sweep: a target and what came of it, PRACTISE's or the baseline's.

    Cuts are fractions of the teacher's measured latency; top-1 in percent. ``status`` is ``done``,
    ``unreachable`` (``reason`` says why) or ``skipped`` (a baseline with no PRACTISE model to match).
    """

    target: float
    method: str  # "practise" or a baseline's name
    status: str
    folder: str  # relative to the sweep folder
    dropped: list[str] = field(default_factory=list)
    predicted_cut: float | None = None  # the dropped blocks' single-block ΔLat, summed
    selection_cut: float | None = None  # measured while selecting
    measured_cut: float | None = None  # measured against the teacher once the model was made
    measured_spread: list[float] | None = None  # IQR of measured_cut
    teacher_top1: float | None = None
    top1: float | None = None
    teacher_ms: float | None = None
    latency_ms: float | None = None
    recovery_seconds: float | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the baseline's ratio, rounding, matched cut

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    """What ``sweep`` returns and writes as ``sweep.json``."""

    out_dir: Path
    settings: dict[str, Any]
    targets: list[float]
    points: list[SweepPoint]
    baseline: str | None = None
    plot: Path | None = None

    @property
    def practise(self) -> list[SweepPoint]:
        return [p for p in self.points if p.method == "practise"]

    @property
    def baseline_points(self) -> list[SweepPoint]:
        return [p for p in self.points if p.method != "practise"]

    @property
    def teacher(self) -> dict[str, float | None]:
        """The teacher's top-1 and its median measured latency over the finished runs."""
        done = [p for p in self.practise if p.status == "done"]
        return {"top1": done[0].teacher_top1 if done else None,
                "latency_ms": statistics.median(p.teacher_ms for p in done) if done else None}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.settings.get("model"),
            "source": self.settings.get("data", {}).get("source"),
            "num_images": self.settings.get("data", {}).get("num_images"),
            "targets": self.targets,
            "teacher": self.teacher,
            "practise": [p.to_json() for p in self.practise],
            "baseline": ({"method": self.baseline, "importance": BASELINE_IMPORTANCE,
                          "rows": [p.to_json() for p in self.baseline_points]} if self.baseline else None),
            "plot": self.plot.name if self.plot is not None else None,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], out_dir: str | Path) -> "SweepResult":
        """The result ``sweep.json`` holds (``out_dir``: the sweep folder it came from)."""
        baseline = record.get("baseline") or {}
        points = [SweepPoint(**row) for row in [*record.get("practise", []), *baseline.get("rows", [])]]
        plot = Path(out_dir) / record["plot"] if record.get("plot") else None
        return cls(Path(out_dir), record["settings"], list(record["targets"]), points, baseline.get("method"), plot)


def check_targets(targets: Iterable[Any]) -> list[float]:
    """The targets in increasing order; a ConfigError for none, one outside (0, 1), or a repeat."""
    checked: dict[str, float] = {}
    for target in targets:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
            raise ConfigError(f"sweep targets are latency cuts between 0 and 1 (e.g. 0.3), got {target!r}")
        name = target_folder(float(target))
        if name in checked and checked[name] == target:
            raise ConfigError(f"sweep target {target:g} is given twice")
        if name in checked:
            raise ConfigError(f"sweep targets {checked[name]:g} and {target:g} would share the folder {name}; "
                              "give at most four decimals")
        checked[name] = float(target)
    if not checked:
        raise ConfigError("give at least one sweep target, e.g. --targets 0.1 0.2 0.3 0.4")
    return sorted(checked.values())


def target_folder(target: float) -> str:
    """``target-0.30``: two decimals, more where the target has them (up to four)."""
    text = f"{target:.2f}" if abs(100 * target - round(100 * target)) < 1e-9 else f"{target:.4f}".rstrip("0")
    return f"target-{text}"


def sweep(
    config: RunConfig,
    targets: Iterable[float],
    out_dir: str | Path,
    *,
    baseline: str | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Compress ``config``'s model for every target; see the module docstring.

    ``config``'s own target (``latency_reduction`` or ``drop``) is ignored; it needs
    ``data.eval_path``, since a sweep compares top-1.
    """
    from .runs import RunLock

    targets = check_targets(targets)
    if baseline is not None and baseline not in BASELINES:
        raise ConfigError(f"unknown sweep baseline {baseline!r}; known: {', '.join(BASELINES)}")
    settings = sweep_settings(config)
    if not config.data.eval_path:
        raise ConfigError("a sweep compares top-1, so it needs held-out labelled images: give --eval-data "
                          "(data.eval_path)")
    progress = progress or Progress()
    out = _sweep_folder(out_dir)
    lock = RunLock.acquire(out)
    try:
        _check_record(out, settings)
        result = SweepResult(out, settings, targets, [], baseline)
        _save(result)
        for index, target in enumerate(targets, 1):
            progress.log(f"[bold]sweep target {100 * target:g}% ({index} of {len(targets)})[/bold]")
            result.points.append(_practise_point(config, target, out, targets, progress))
            _save(result)
            progress.log(_describe(result.points[-1]))
        if baseline is not None:
            _baseline_points(result, config, progress)
        result.plot = _plot(result, progress)
        _save(result)
        return result
    finally:
        if lock is not None:
            lock.release()


def sweep_settings(config: RunConfig) -> dict[str, Any]:
    """Every setting of the sweep's runs but the target: what a sweep folder holds one of."""
    return {**config.to_dict(), "latency_reduction": None, "drop": None}


def target_config(config: RunConfig, target: float) -> RunConfig:
    """``config`` with ``target`` as its latency target (a drop count cleared)."""
    return RunConfig.from_dict({**config.to_dict(), "latency_reduction": target, "drop": None}).validate()


def load_sweep(out_dir: str | Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep folder."""
    from .report import read_json

    return read_json(Path(out_dir) / RECORD)


# ---------------------------------------------------------------- the sweep folder


def _sweep_folder(out_dir: str | Path) -> Path:
    """The sweep folder, made if needed."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the sweep folder {out}: {err.strerror or err}") from None
    return out


def _check_record(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder that holds something else than a sweep with these settings.

    A sweep none of whose runs has started (it failed on its inputs) is no work to lose: a call
    with corrected settings replaces it.
    """
    from .report import read_json
    from .runs import RECIPE

    record = out / RECORD
    if not record.exists():
        if any(p.name != ".lock" for p in out.iterdir()):
            raise ConfigError(f"{out} exists and holds no sweep ({RECORD}); choose another --out")
        return
    saved = read_json(record)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ConfigError(f"{record} is not a sweep record ({FORMAT}); choose another --out")
    differs = _first_difference(saved.get("settings"), settings)
    started = any((p / RECIPE).exists() for p in out.glob("target-*"))
    if differs is not None and started:
        raise ConfigError(f"{out} holds a sweep with other settings ({differs} differs); give the same settings "
                          "to resume it, or choose another --out")


def _first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """The dotted name of the first setting where two settings trees differ, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = _first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if saved == current else (path or "settings")


def _save(result: SweepResult) -> None:
    from .report import write_json

    write_json(result.to_json(), result.out_dir / RECORD)


# ---------------------------------------------------------------- PRACTISE, one target


def _practise_point(config: RunConfig, target: float, out: Path, targets: list[float],
                    progress: Progress) -> SweepPoint:
    """The run of one target: read if finished, else started from the shared phases and run."""
    from .engine import compress
    from .report import read_json
    from .runs import RECIPE, REPORT

    run_config = target_config(config, target)
    name = target_folder(target)
    folder = out / name
    if (folder / REPORT).exists() and _holds(folder, run_config):
        progress.log(f"{name} is finished: reused")
        return _point_from_report(target, name, read_json(folder / REPORT))
    if not (folder / RECIPE).exists():
        shared = _shared_phases(config, out, targets)
        if shared is not None:
            _start_from(folder, run_config, shared)
            progress.log(f"{name}: block timings and scores from {shared.name}")
    try:
        result = compress(run_config, folder, progress=progress, resume=(folder / RECIPE).exists())
    except TargetError as err:
        return SweepPoint(target, "practise", "unreachable", name, reason=str(err))
    return _point_from_report(target, name, result.report)


def _holds(folder: Path, config: RunConfig) -> bool:
    """Whether ``folder`` holds a run started with exactly ``config``."""
    from .recipe import load_recipe
    from .runs import RECIPE

    if not (folder / RECIPE).exists():
        return False
    return RunConfig.from_dict(load_recipe(folder / RECIPE)).to_dict() == config.to_dict()


def _shared_phases(config: RunConfig, out: Path, targets: list[float]) -> Path | None:
    """A run folder of this sweep (any target, these settings) whose timing and scoring are done."""
    names = {target_folder(t) for t in targets}
    names |= {p.name for p in out.glob("target-*") if p.is_dir()}
    for name in sorted(names):
        folder = out / name
        if all((folder / phase).exists() for phase in SHARED_PHASES):
            from .recipe import load_recipe
            from .runs import RECIPE

            try:
                saved = RunConfig.from_dict(load_recipe(folder / RECIPE))
            except DFPractiseError:  # a damaged or foreign recipe: not a folder to share from
                continue
            if sweep_settings(saved) == sweep_settings(config):
                return folder
    return None


def _start_from(folder: Path, config: RunConfig, shared: Path) -> None:
    """Start ``folder`` as a run of ``config`` whose timing and scoring are ``shared``'s (copied):
    ``compress(..., resume=True)`` then reads them back instead of doing them."""
    from synthesizers.files import atomic_write

    from .recipe import save_recipe
    from .runs import RECIPE

    folder.mkdir(parents=True, exist_ok=True)
    for phase in SHARED_PHASES:
        atomic_write(folder / phase, lambda tmp, source=shared / phase: shutil.copyfile(source, tmp))
    save_recipe(config, folder / RECIPE)  # last: a folder with a recipe is a started run


def _point_from_report(target: float, name: str, report: dict[str, Any]) -> SweepPoint:
    latency = report["latency"]
    predicted = sum(b["delta_lat"] for b in report.get("blocks", []) if b.get("dropped")) / 100.0
    return SweepPoint(
        target, "practise", "done", name, dropped=list(report["dropped"]), predicted_cut=predicted,
        selection_cut=latency.get("selection_reduction"), measured_cut=latency["reduction"],
        measured_spread=list(latency["reduction_spread"]), teacher_top1=report["teacher"]["top1"],
        top1=report["pruned"]["top1"], teacher_ms=report["teacher"]["latency_ms"],
        latency_ms=report["pruned"]["latency_ms"], recovery_seconds=report.get("phases", {}).get("recovery"),
    )


def _describe(point: SweepPoint) -> str:
    label = "PRACTISE" if point.method == "practise" else point.method
    if point.status != "done":
        return f"{label} at {100 * point.target:g}%: {point.status}" + (f" ({point.reason})" if point.reason else "")
    return (f"{label} at {100 * point.target:g}%: measured cut {100 * point.measured_cut:.1f}%, top-1 "
            f"{point.teacher_top1:.2f} -> {point.top1:.2f}" + (f", {len(point.dropped)} blocks dropped"
                                                               if point.dropped else ""))


# ---------------------------------------------------------------- the filter-pruning baseline


def _baseline_points(result: SweepResult, config: RunConfig, progress: Progress) -> None:
    """One filter-pruned model per finished PRACTISE model, at its measured cut (see step 4)."""
    from .report import read_json

    world: _BaselineWorld | None = None
    for point in list(result.practise):
        name = f"{BASELINE_DIR}/{target_folder(point.target)}"
        folder = result.out_dir / name
        if point.status != "done":
            result.points.append(SweepPoint(point.target, "filter-pruning", "skipped", name,
                                            reason="no PRACTISE model at this target to match"))
            continue
        saved = folder / "result.json"
        if saved.exists() and read_json(saved).get("details", {}).get("matched_to") == baseline_goal(point):
            progress.log(f"{name} is finished: reused")
            result.points.append(SweepPoint(**read_json(saved)))
        else:
            world = world or _BaselineWorld(config, progress)
            result.points.append(world.point(point, folder, name))
        _save(result)
        progress.log(_describe(result.points[-1]))


def baseline_goal(practise: SweepPoint) -> float:
    """The cut the baseline is matched to: the PRACTISE model's measured cut, or its target where
    that measurement is no cut in (0, 1) (noise on a busy machine, a model timed slower)."""
    cut = practise.measured_cut
    return cut if cut is not None and 0 < cut < 1 else practise.target


class _BaselineWorld:
    """What every baseline model shares: teacher, tiny set, timing, transforms (loaded once)."""

    def __init__(self, config: RunConfig, progress: Progress) -> None:
        from .augment import train_augmentation
        from .engine import check_tiny_set, load_tiny_set, prepare

        self.config, self.progress = config, progress
        self.setup = prepare(config)
        tiny = load_tiny_set(config, self.setup.teacher, self.setup.weights_sha, progress)
        self.tiny = check_tiny_set(config, tiny, progress, self.setup.spec)
        self.augment = train_augmentation(self.setup.spec.input_size)

    def point(self, practise: SweepPoint, folder: Path, name: str) -> SweepPoint:
        """Search (or read back) the matching ratio, recover (resuming a checkpoint), evaluate, time."""
        from .baselines.filter_pruning import inner_widths, prune_filters, prune_to_cut
        from .evaluate import evaluate_models
        from .latency import compare_latency
        from .recovery import recover
        from .report import read_json, write_json
        from .runs import save_weights

        setup, config = self.setup, self.config
        search_file = folder / "search.json"
        search = read_json(search_file) if search_file.exists() else None
        goal = baseline_goal(practise)
        if search is not None and search.get("target_cut") == goal:
            student = prune_filters(setup.teacher, None, search["ratio"], search["importance"],
                                    round_to=search["round_to"])
            self.progress.log(f"{name}: ratio {search['ratio']:.4f} read from its search.json")
        else:
            (folder / "recovery.ckpt").unlink(missing_ok=True)  # a checkpoint of another structure
            matched = prune_to_cut(setup.teacher, goal, setup.timing,
                                   importance=BASELINE_IMPORTANCE, round_to=BASELINE_ROUND_TO,
                                   tolerance=BASELINE_TOLERANCE, progress=self.progress)
            student, search = matched.model, matched.to_json()
            write_json(search, search_file)
        started = time.perf_counter()
        recovery = recover(student, setup.teacher, self.tiny.images, config.recovery, self.augment, setup.normalize,
                           labels=self.tiny.labels, seed=config.seed, device=config.device, progress=self.progress,
                           checkpoint=folder / "recovery.ckpt", adapter=setup.adapter,
                           precision=config.precision)
        seconds = time.perf_counter() - started
        save_weights(student, folder / "model.safetensors")
        spec = setup.spec
        accuracy = evaluate_models({"filter-pruning": student}, config.data.eval_path, spec.mean, spec.std,
                                   spec.input_size, batch_size=config.data.eval_batch_size, device=config.device,
                                   progress=self.progress, spec=spec)["filter-pruning"]
        final = compare_latency({"teacher": setup.teacher, "filter-pruning": student}, setup.timing.longer(2),
                                progress=self.progress, description="Verifying latency")
        cut, q25, q75 = final.reduction("filter-pruning", "teacher")
        point = SweepPoint(
            practise.target, "filter-pruning", "done", name, measured_cut=cut, measured_spread=[q25, q75],
            selection_cut=search["cut"], teacher_top1=practise.teacher_top1, top1=accuracy["top1"],
            teacher_ms=final.median_ms("teacher"), latency_ms=final.median_ms("filter-pruning"),
            recovery_seconds=round(seconds, 2),
            details={"matched_to": goal, "importance": search["importance"],
                     "ratio": search["ratio"], "round_to": search["round_to"],
                     "within_tolerance": search["within_tolerance"], "inner_channels": sum(inner_widths(student).values()),
                     "recovery": recovery.method, "iterations": recovery.iterations},
        )
        write_json(point.to_json(), folder / "result.json")
        (folder / "recovery.ckpt").unlink(missing_ok=True)
        return point


# ---------------------------------------------------------------- the picture


def _plot(result: SweepResult, progress: Progress) -> Path | None:
    if not any(p.status == "done" for p in result.points):
        return None
    try:
        return save_sweep_plot(result, result.out_dir / PLOT)
    except ImportError:
        progress.log("no sweep.png: it needs matplotlib (pip install 'dfpractise[plots]')")
        return None


def save_sweep_plot(result: SweepResult, path: str | Path) -> Path:
    """A PNG: measured latency cut (x, with its IQR) against top-1 (y) of the teacher, PRACTISE and
    the baseline; each PRACTISE point labelled with its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from synthesizers.files import atomic_write

    settings = result.settings
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    teacher = result.teacher
    if teacher["top1"] is not None:
        axis.scatter([0.0], [teacher["top1"]], marker="*", s=160, color="black", zorder=3,
                     label=f"teacher ({teacher['top1']:.2f}%)")
    curves = [("practise", "PRACTISE (blocks dropped)", "o", "-", "tab:blue"),
              (result.baseline, f"filter pruning (Torch-Pruning, {BASELINE_IMPORTANCE.upper()})", "s", "--",
               "tab:orange")]
    for method, label, marker, line, color in curves:
        done = sorted((p for p in result.points if p.method == method and p.status == "done"),
                      key=lambda p: p.measured_cut)
        if not done:
            continue
        xs, ys = [100 * p.measured_cut for p in done], [p.top1 for p in done]
        axis.plot(xs, ys, marker=marker, linestyle=line, color=color, label=label)
        spreads = [p.measured_spread or [p.measured_cut] * 2 for p in done]  # the IQR of each measured cut
        axis.errorbar(xs, ys, xerr=[[max(0.0, x - 100 * s[0]) for x, s in zip(xs, spreads)],
                                    [max(0.0, 100 * s[1] - x) for x, s in zip(xs, spreads)]],
                      fmt="none", ecolor=color, alpha=0.35, capsize=2)
        if method == "practise":
            for p, x, y in zip(done, xs, ys):
                axis.annotate(f"{100 * p.target:g}%", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7,
                              color=color)
    unreachable = [f"{100 * p.target:g}%" for p in result.practise if p.status == "unreachable"]
    latency = settings.get("latency", {})
    axis.set_xlabel(f"measured latency cut (%), batch {latency.get('batch_size')}, {latency.get('backend')} "
                    f"on {settings.get('device')}")
    axis.set_ylabel(f"top-1 (%) on {Path(str(settings['data']['eval_path'])).name}")
    data = settings.get("data", {})
    title = f"{settings.get('model')}: {data.get('num_images')} {data.get('source')} images, " \
            f"{settings.get('recovery', {}).get('iterations')} recovery iterations"
    axis.set_title(title + (f"\nunreachable: {', '.join(unreachable)}" if unreachable else ""), fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return Path(path)
