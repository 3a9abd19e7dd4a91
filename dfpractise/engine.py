"""The PRACTISE pipeline, phase by phase, from a teacher and a tiny set to a saved faster model.

    tiny set -> latency of each block -> recoverability scores -> selection (measured)
             -> drop + recovery -> evaluation -> run folder

Each phase's result is written to the run folder as soon as it exists, so an interrupted run
resumes from the last finished phase (and recovery from its last checkpoint) with
``compress(..., resume=True)``.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import runs
from .complexity import count_macs, count_params
from .config import RunConfig
from .errors import ConfigError, DataError, TargetError
from .latency import BlockLatency, BlockLatencyProfile, compare_latency, profile_blocks
from .models.blocks import Block, drop_blocks, find_blocks
from .progress import Progress
from .recoverability import DropCost, ScoringContext, create_drop_cost
from .recovery import recover
from .selection import BlockScore, next_block, select_by_count, select_by_target


@dataclass
class CompressionResult:
    """What ``compress`` returns: the models and the report that was written."""

    teacher: nn.Module
    pruned: nn.Module
    dropped: list[str]
    report: dict[str, Any]
    out_dir: Path | None


class PhaseTimer:
    """Wall time of each phase, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> dict[str, float]:
        return {**{k: round(v, 2) for k, v in self.seconds.items()}, "total": round(time.perf_counter() - self._start, 2)}


def compress(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    teacher: nn.Module | None = None,
    source: Any = None,
    scorer: DropCost | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    overwrite: bool = False,
    reuse: dict | None = None,
) -> CompressionResult:
    """Run PRACTISE end to end; see the module docstring. Returns the pruned model and report.

    ``reuse``: a dict shared across calls in one process (benchmarks, sweeps) in which block
    latencies and scores are kept under keys made of every setting they depend on, so runs that
    differ only in target or recovery do not time and score the same blocks again.
    """
    config.validate()
    progress = progress or Progress()
    timer = PhaseTimer()
    out = Path(out_dir) if out_dir is not None else None
    fresh = _check_out_dir(out, config, resume, overwrite)
    if not fresh and out is not None and (out / runs.REPORT).exists():
        progress.log(f"{out} is already finished; nothing to resume")
        loaded = runs.load_run(out)
        return CompressionResult(loaded.teacher, loaded.pruned, loaded.manifest["dropped"], loaded.report, out)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)

    # only runs fully described by their config may share cached timings and scores
    cache = reuse if (reuse is not None and teacher is None and scorer is None and source is None) else {}
    with timer("setup"):
        teacher, weights_ref, weights_sha = _load_teacher(config, teacher)
        cfg = teacher.model_spec
        resolution = config.latency.resolution or cfg.input_size
        blocks = find_blocks(teacher, cfg.input_size)
        if not blocks:
            raise ConfigError(f"{config.model} has no droppable residual blocks")
        if config.drop is not None and config.drop > len(blocks):
            raise TargetError(
                f"asked to drop {config.drop} blocks but {config.model} has only {len(blocks)} droppable blocks"
            )
        scorer = scorer or create_drop_cost(config.scoring.scorer)

    with timer("data"):
        tiny = load_tiny_set(config, teacher, weights_sha, progress, source=source)
        if len(tiny) < config.data.num_images:
            progress.log(f"only {len(tiny)} of {config.data.num_images} images could be read")
        if config.recovery.method == "bp" and tiny.labels is None:
            raise ConfigError(f"BP recovery needs labelled images and the '{config.data.source}' source has no "
                              "labels; use --recovery mir (feature mimicking) or kd")
        if fresh:  # the folder is written only once the inputs are known to be good
            _start_out_dir(out, config, overwrite)
        if out is not None:
            _save_tiny_set(out, tiny)
        progress.log(f"tiny set: {len(tiny)} images from '{config.data.source}'"
                     + (f" ({tiny.skipped} unreadable skipped)" if tiny.skipped else ""))

    from .augment import normalize, train_augmentation

    augment = train_augmentation(cfg.input_size)
    norm = lambda images: normalize(images, cfg.mean, cfg.std)  # noqa: E731

    saved_scores = _read_if(out, runs.SCORES, resume)
    if saved_scores is not None:
        profile_records = [BlockLatency(**{**b["latency"], "spread": tuple(b["latency"]["spread"])}) for b in saved_scores["blocks"]]
        costs = {b["latency"]["name"]: b["cost"] for b in saved_scores["blocks"]}
        teacher_ms, all_dropped = saved_scores["teacher_ms"], saved_scores["all_dropped"]
        progress.log("resuming: block latencies and scores read from the run folder")
    else:
        latency_key = ("latency", config.model, weights_sha or weights_ref, config.device, repr(config.latency))
        scores_key = ("scores", latency_key, repr(config.data), config.seed, repr(config.scoring))
        with timer("latency"):
            profile = cache.get(latency_key) or profile_blocks(
                teacher, blocks, config.latency.batch_size, resolution, config.latency.repeats,
                config.latency.warmup, config.latency.threads, device, config.latency.pool_identical,
                progress,
            )
            profile_records, teacher_ms, all_dropped = profile.blocks, profile.teacher_ms, profile.all_dropped
        with timer("scoring"):
            context = ScoringContext(
                teacher=teacher,
                blocks=blocks,
                delta_lat={b.name: b.delta_lat for b in profile_records},
                images=tiny.images,
                augment=augment,
                normalize=norm,
                config=config.scoring,
                seed=config.seed,
                device=device,
                progress=progress,
            )
            costs = cache.get(scores_key) or scorer(context)
        cache[latency_key], cache[scores_key] = profile, costs
        if out is not None:
            runs.write_json(
                {
                    "teacher_ms": teacher_ms,
                    "all_dropped": all_dropped,
                    "scorer": getattr(scorer, "name", type(scorer).__name__),
                    "blocks": [{"latency": vars(b), "cost": costs[b.name]} for b in profile_records],
                },
                out / runs.SCORES,
            )

    scores = [
        BlockScore(b.name, b.stage, b.step, lat.delta_lat, float(costs[b.name]))
        for b, lat in zip(blocks, profile_records, strict=True)
    ]

    saved_selection = _read_if(out, runs.SELECTION, resume)
    with timer("selection"):
        if saved_selection is not None:
            dropped, measured = saved_selection["dropped"], saved_selection["measured"]
        else:
            dropped, measured = _select(config, teacher, scores, all_dropped, resolution, device, progress)
            if out is not None:
                runs.write_json({"dropped": dropped, "measured": measured}, out / runs.SELECTION)
        pruned = drop_blocks(teacher, dropped, cfg.input_size)
    progress.log(f"dropping {len(dropped)} blocks: {', '.join(dropped)}")

    with timer("recovery"):
        recovery = recover(
            pruned, teacher, tiny.images, config.recovery, augment, norm,
            labels=tiny.labels, seed=config.seed, device=device, progress=progress,
            checkpoint=(out / runs.CHECKPOINT) if out is not None else None,
        )

    if out is not None:
        runs.save_weights(pruned, out / runs.WEIGHTS)
        if weights_ref is None:
            runs.save_weights(teacher, out / runs.TEACHER_WEIGHTS)
        runs.write_json(
            runs.make_manifest(config.model, cfg.num_classes, weights_ref, weights_sha, dropped, cfg.input_size),
            out / runs.MANIFEST,
        )

    with timer("evaluation"):
        accuracy = _evaluate(config, teacher, pruned, cfg, device, progress)

    with timer("verification"):
        final = compare_latency(
            {"teacher": teacher, "pruned": pruned}, config.latency.batch_size, resolution,
            2 * config.latency.repeats, config.latency.warmup, config.latency.threads, device,
            progress=progress, description="Verifying latency",
        )

    report = _report(
        config, weights_ref, tiny, dropped, measured, final, accuracy, teacher, pruned, cfg,
        profile_records, costs, recovery, timer, scorer,
    )
    if out is not None:
        runs.write_json(report, out / runs.REPORT)
        (out / runs.CHECKPOINT).unlink(missing_ok=True)
    return CompressionResult(teacher, pruned, dropped, report, out)


def _check_out_dir(out: Path | None, config: RunConfig, resume: bool, overwrite: bool) -> bool:
    """Whether this is a fresh run; refuse to mix with, or silently replace, an existing one."""
    if out is None:
        return True
    recipe_path = out / runs.RECIPE
    if recipe_path.exists() and resume:
        from .recipe import load_recipe

        saved = RunConfig.from_dict(load_recipe(recipe_path))
        if saved.to_dict() != config.to_dict():
            raise ConfigError(
                f"{out} was started with different settings; resume it with its own recipe "
                f"(dfpractise run --resume --out {out}) or choose another --out"
            )
        return False
    if recipe_path.exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds a run; continue it with --resume, replace it with --overwrite, "
            "or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite and not recipe_path.exists():
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    return True


def _start_out_dir(out: Path | None, config: RunConfig, overwrite: bool) -> None:
    if out is None:
        return
    from .recipe import save_recipe

    if overwrite and out.exists():
        for name in runs.ARTEFACTS:  # only what a run writes: --overwrite never empties a folder
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(config, out / runs.RECIPE)


def _read_if(out: Path | None, name: str, resume: bool):
    if out is None or not resume or not (out / name).exists():
        return None
    return runs.read_json(out / name)


def _load_teacher(config: RunConfig, teacher: nn.Module | None) -> tuple[nn.Module, str | None, str | None]:
    if teacher is not None:
        return teacher, config.weights, None
    return load_teacher(config.model, config.weights)


def load_teacher(model: str, weights: str | None) -> tuple[nn.Module, str, str]:
    """(model with weights, weights reference, sha256 of the weights file); weights default per model."""
    from .models import create_model, get_model_spec
    from .models.weights import resolve_weights, weights_sha256

    ref = weights or get_model_spec(model).default_weights
    if ref is None:
        raise ConfigError(f"no weights given for {model}; pass --weights FILE or a known weights name")
    path = resolve_weights(ref)
    return create_model(model, weights=str(path)), ref, weights_sha256(path)


def load_tiny_set(config: RunConfig, teacher: nn.Module, teacher_id: str | None = None,
                  progress: Progress | None = None, source: Any = None):
    """The tiny set ``compress`` would use for ``config``: same source, size and seed, same draw.

    Benchmarks call it to recover other pruned networks on exactly the images a run used.
    """
    from .sources import SourceContext, source_from_config

    progress = progress or Progress()

    source = source or source_from_config(config.data)
    context = SourceContext.for_teacher(teacher, teacher_id=teacher_id, device=config.device, progress=progress)
    args = (config.data.num_images, teacher.model_spec.input_size, config.seed)
    if "context" not in inspect.signature(source.load).parameters:
        return source.load(*args)  # a source written before sources had a context
    return source.load(*args, context=context)


def _save_tiny_set(out: Path, tiny) -> None:
    """File list, a picture of some samples, and (for synthesised sets) their quality report."""
    from .report import save_sample_grid, write_json

    if tiny.files:
        tiny.save_file_list(out / runs.FILE_LIST)
    save_sample_grid(tiny.images, tiny.labels, out / runs.SAMPLES)
    if tiny.report is not None:
        write_json(tiny.report, out / runs.TINY_SET_REPORT)


def _select(config, teacher, scores, all_dropped, resolution, device, progress):
    """Pick blocks for the target, measure the pruned network, and correct the prediction.

    Per-block savings do not add up exactly on real hardware (on the CIFAR ResNets here, dropping
    many blocks saves about a quarter more than the sum of their single savings). So the summed
    ΔLat is scaled, first by the measured cut of dropping every candidate, then by each measured
    selection; of the selections whose measured cut reaches the target, the one with the least
    total cost wins once a second, longer measurement confirms it (a noisy first measurement can
    flatter a selection). If none does, blocks are added by score until a long measurement
    reaches the target. Measurements must clear the target by ``latency.target_margin`` points,
    so that the verified cut does not fall short through noise alone.
    """
    if config.drop is not None:
        dropped = select_by_count(scores, config.drop)
        return dropped, _measure_cut(config, teacher, dropped, resolution, device, progress)
    target = 100.0 * config.latency_reduction
    if target > all_dropped:
        raise TargetError(
            f"a {target:.0f}% latency cut is out of reach for {config.model}: dropping every "
            f"droppable block cuts {all_dropped:.1f}% (measured); ask for less"
        )
    goal = min(target + config.latency.target_margin, all_dropped)  # what a measurement must show
    by_name = {s.name: s for s in scores}
    summed_all = sum(s.delta_lat for s in scores)
    scale = all_dropped / summed_all if summed_all > 0 else 1.0
    feasible, seen = [], set()
    for _ in range(4):
        dropped = select_by_target(scores, min(goal / scale, summed_all), config.selection)
        if tuple(dropped) in seen:
            break
        seen.add(tuple(dropped))
        measured = _measure_cut(config, teacher, dropped, resolution, device, progress)
        cut = 100.0 * measured["reduction"]
        summed = sum(by_name[n].delta_lat for n in dropped)
        progress.log(f"{len(dropped)} blocks: predicted cut {summed * scale:.1f}%, measured {cut:.1f}%")
        if cut >= goal:
            feasible.append((sum(by_name[n].cost for n in dropped), dropped, measured))
        if cut > 0 and summed > 0:
            scale = cut / summed
    for _, dropped, measured in sorted(feasible, key=lambda f: f[0]):
        confirmed = _measure_cut(config, teacher, dropped, resolution, device, progress, rounds=2)
        if confirmed["reduction"] * 100.0 >= goal:
            return dropped, confirmed
        measured = confirmed
        progress.log(f"re-measured {100 * confirmed['reduction']:.1f}% < {goal:.1f}%: not confirmed")
    order = {s.name: s.step for s in scores}
    while True:
        extra = next_block(scores, dropped)
        if extra is None:
            raise TargetError(
                f"a {target:.0f}% latency cut is out of reach for {config.model}: dropping every "
                f"droppable block cut {100 * measured['reduction']:.1f}% (measured); ask for less"
            )
        progress.log(f"measured cut {100 * measured['reduction']:.1f}% < {goal:.1f}%: adding {extra.name}")
        dropped = sorted(dropped + [extra.name], key=order.__getitem__)
        measured = _measure_cut(config, teacher, dropped, resolution, device, progress, rounds=2)
        if measured["reduction"] * 100.0 >= goal:
            return dropped, measured


def _measure_cut(config, teacher, dropped, resolution, device, progress, rounds: int = 1) -> dict[str, Any]:
    """Measured cut of dropping ``dropped``; ``rounds`` times the configured repeats."""
    comparison = compare_latency(
        {"teacher": teacher, "pruned": drop_blocks(teacher, dropped)},
        config.latency.batch_size, resolution, rounds * config.latency.repeats, config.latency.warmup,
        config.latency.threads, device, progress=progress, description="Measuring selection",
    )
    median, q25, q75 = comparison.reduction("pruned", "teacher")
    return {"reduction": median, "reduction_spread": [q25, q75], "blocks": list(dropped)}


def _evaluate(config, teacher, pruned, cfg, device, progress) -> dict[str, dict] | None:
    if not config.data.eval_path:
        return None
    from .evaluate import evaluate_models

    return evaluate_models(
        {"teacher": teacher, "pruned": pruned}, config.data.eval_path, cfg.mean, cfg.std,
        cfg.input_size, batch_size=config.data.eval_batch_size, device=device, progress=progress,
    )


def _tiny_set_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The quality numbers of a synthesised set worth a line in the run report."""
    if report is None:
        return None
    keys = ("method", "agreement", "bn_distance", "teacher_confidence", "cache", "generated_batches",
            "synthesis_seconds")
    return {k: report.get(k) for k in keys}


def _report(config, weights_ref, tiny, dropped, measured, final, accuracy, teacher, pruned, cfg,
            latency_records, costs, recovery, timer, scorer) -> dict[str, Any]:
    from .envinfo import environment_info

    reduction, q25, q75 = final.reduction("pruned", "teacher")

    def side(name: str, model: nn.Module) -> dict[str, Any]:
        acc = (accuracy or {}).get(name, {})
        return {
            "top1": acc.get("top1"),
            "top5": acc.get("top5"),
            "latency_ms": round(final.median_ms(name), 3),
            "params": count_params(model),
            "macs": count_macs(model, cfg.input_size),
        }

    blocks = [
        {
            "name": lat.name,
            "stage": lat.stage,
            "delta_lat": round(lat.delta_lat, 3),
            "delta_lat_raw": round(lat.delta_lat_raw, 3),
            "clamped": lat.clamped,
            "recoverability": costs[lat.name],
            "score": costs[lat.name] / lat.delta_lat,
            "dropped": lat.name in dropped,
        }
        for lat in latency_records
    ]
    return {
        "model": config.model,
        "weights": weights_ref,
        "source": config.data.source,
        "num_images": len(tiny),
        "skipped_images": tiny.skipped,
        "tiny_set": _tiny_set_summary(tiny.report),
        "seed": config.seed,
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "recovery": {
            "method": recovery.method,
            "iterations": recovery.iterations,
            "final_loss": recovery.final_loss,
            "resumed_from": recovery.resumed_from,
        },
        "target": {"latency_reduction": config.latency_reduction, "drop": config.drop},
        "dropped": dropped,
        "teacher": side("teacher", teacher),
        "pruned": side("pruned", pruned),
        "latency": {
            "reduction": reduction,
            "reduction_spread": [q25, q75],
            "speedup": final.median_ms("teacher") / final.median_ms("pruned"),
            "selection_reduction": measured["reduction"],
            "batch_size": final.batch_size,
            "resolution": final.resolution,
            "threads": final.threads,
            "device": final.device,
            "repeats": len(final.times["teacher"]),
        },
        "blocks": blocks,
        "phases": timer.total(),
        "environment": environment_info(),
    }
