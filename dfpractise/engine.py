"""The PRACTISE pipeline, phase by phase, from a teacher and a tiny set to a saved faster model.

    tiny set -> latency of each block -> drop cost of each block -> selection (measured)
             -> drop + recovery -> evaluation -> run folder

``compress`` reads as the list of those phases. Each phase's result is a small typed object
written to the run folder as soon as it exists (``RunFolder.phase``), so an interrupted run
resumes from the last finished phase (and recovery from its last checkpoint) with
``compress(..., resume=True)``.

Under ``torchrun`` (``dfpractise.distributed``) every rank runs ``compress`` with the same
arguments. Rank 0 alone holds the run folder (its lock, every write), times latency (phases 3
and 5, the final verification: timings of processes sharing a machine mean nothing) and
evaluates, while the others wait; what it finds reaches every rank. Synthesis, scoring and
recovery are shared out. One process: none of this happens.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import distributed, runs
from .augment import normalize, train_augmentation
from .backends import check_backend
from .config import RunConfig
from .envinfo import check_device
from .errors import ConfigError, DataError, TargetError
from .latency import BlockLatencyProfile, Timing, compare_latency, cut_measure, profile_blocks
from .models.adapter import ModelAdapter, adapter_for, set_spec, spec_of
from .models.reference import reference_of, with_overrides
from .models.blocks import Block
from .models.registry import ModelSpec
from .progress import Progress
from .recoverability import BlockCosts, DropCost, ScoringContext, create_drop_cost
from .recovery import RECOVERY_METHODS, check_settings, label_free_methods, recover
from .run_report import build_report
from .selection import (BlockScore, MeasuredCut, Selection, alternatives, check_reachable, cut_goal,
                        select_blocks)
from .trials import Trials, held_back_judge, partial_record, try_sets
from .sources.images import class_indices, label_names


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


@dataclass
class Setup:
    """The teacher of a run and everything derived from it before any image is seen."""

    teacher: nn.Module
    weights_ref: str | None
    weights_sha: str | None
    adapter: ModelAdapter
    drop_cost: DropCost
    timing: Timing

    @property
    def spec(self) -> ModelSpec:
        return self.adapter.spec

    @property
    def blocks(self) -> list[Block]:
        return self.adapter.blocks

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.spec.mean, self.spec.std)


def compress(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    teacher: nn.Module | None = None,
    source: Any = None,
    drop_cost: DropCost | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    overwrite: bool = False,
    reuse: dict | None = None,
) -> CompressionResult:
    """Run PRACTISE end to end; see the module docstring. Returns the pruned model and report.

    ``teacher``, ``source`` and ``drop_cost`` replace what ``config`` names with your own objects.
    ``reuse``: see ``RunFolder`` (only runs fully described by their config share results).
    """
    config.validate()
    progress = progress or Progress()
    shareable = teacher is None and source is None and drop_cost is None
    with _run_folder(out_dir, config, resume, overwrite, reuse if shareable else None) as folder:
        return _compress(config, folder, teacher, source, drop_cost, progress)


@contextmanager
def _run_folder(out_dir: str | Path | None, config: RunConfig, resume: bool, overwrite: bool,
                reuse: dict | None) -> Iterator[runs.RunFolder]:
    """The locked run folder; under torchrun rank 0's, the other ranks a folder that writes nothing."""
    if not distributed.active():
        with runs.RunFolder.open(out_dir, config, resume=resume, overwrite=overwrite, reuse=reuse) as folder:
            yield folder
        return
    opened: list[runs.RunFolder] = []
    distributed.on_main(lambda: opened.append(
        runs.RunFolder.open(out_dir, config, resume=resume, overwrite=overwrite, reuse=reuse)))
    folder = opened[0] if opened else runs.RunFolder(None, True, False, False)
    with folder:
        yield folder


def _phase(folder: runs.RunFolder, kind: type, compute: Callable[[], Any], *, key: Any = None,
           log: Callable[[str], None] | None = None, everyone: bool = False) -> Any:
    """``folder.phase`` on every rank: rank 0 reads or writes the folder, every rank gets the result.

    ``everyone``: every rank takes part in ``compute`` (scoring); otherwise rank 0 computes alone.
    """
    if not distributed.active():
        return folder.phase(kind, compute, key=key, log=log)
    if not everyone:
        return distributed.on_main(lambda: folder.phase(kind, compute, key=key, log=log))
    known = distributed.on_main(lambda: folder.known(kind, key=key, log=log))
    result = known if known is not None else compute()
    distributed.on_main(lambda: folder.phase(kind, lambda: result, key=key) and None)
    return result


def _compress(config: RunConfig, folder: runs.RunFolder, teacher: nn.Module | None, source: Any,
              drop_cost: DropCost | None, progress: Progress) -> CompressionResult:
    """``compress`` in a locked run folder."""
    if distributed.broadcast_object(folder.finished):
        progress.log(f"{folder.path} is already finished; nothing to resume")
        return distributed.on_main(lambda: _finished(folder.path))
    timer = PhaseTimer()
    torch.manual_seed(config.seed)
    on_main = distributed.on_main

    # 1. Teacher, candidate blocks, and what the target asks of them
    with timer("setup"):
        setup = prepare(config, teacher, drop_cost)
    # 2. The tiny set; the run folder is written only once the inputs are known to be good
    with timer("data"):
        tiny = load_tiny_set(config, setup.teacher, setup.weights_sha, progress, source=source)
        tiny = check_tiny_set(config, tiny, progress, setup.spec)
        on_main(lambda: (folder.start(config), folder.save_tiny_set(tiny, save_samples=config.data.save_samples))
                and None)
    augment = train_augmentation(setup.spec.input_size)
    key = ("latency", config.model, setup.weights_sha or setup.weights_ref, config.device, repr(config.latency))
    # 3. ΔLat of each block, measured on the real pruned network
    with timer("latency"):
        latency = _phase(folder, BlockLatencyProfile, lambda: measure_blocks(config, setup, progress), key=key,
                         log=progress.log)
        if config.latency_reduction is not None:  # known now, before the long scoring
            check_reachable(config.latency_reduction, latency.all_dropped_cut_percent, config.model)
    # 4. The cost of dropping each block (recoverability, or a baseline's stand-in)
    with timer("scoring"):
        costs = _phase(folder, BlockCosts, lambda: score_blocks(config, setup, latency, tiny.images, augment, progress),
                       key=("scores", key, repr(config.data), config.seed, repr(config.scoring)), everyone=True)
    # 5. Which blocks to drop, confirmed by measurement
    with timer("selection"):
        selection = _phase(folder, Selection, lambda: select_for(config, setup, latency, costs, progress))
    if config.trials.sets > 1:
        with timer("trials"):
            trials = _phase(folder, Trials, lambda: trial_sets(config, setup, latency, costs, selection, tiny.images,
                                                               augment, folder, progress), log=progress.log,
                            everyone=True)
            selection = trials.selection(selection)
    pruned = setup.adapter.drop(selection.dropped)
    progress.log(f"dropping {len(selection.dropped)} blocks: {', '.join(selection.dropped)}")
    # 6. Recovery on the tiny set, then the model leaves in the run folder
    with timer("recovery"):
        recovery = recover(pruned, setup.teacher, tiny.images, config.recovery, augment, setup.normalize,
                           labels=tiny.labels, seed=config.seed, device=config.device, progress=progress,
                           checkpoint=folder.checkpoint, adapter=setup.adapter, precision=config.precision)
    on_main(lambda: folder.save_model(pruned, setup.teacher, runs.make_manifest(
        config.model, setup.spec, setup.weights_ref if setup.weights_sha else None, setup.weights_sha, selection.dropped,
        reference_of(setup.teacher), setup.adapter.options)))
    # 7. Accuracy on held-out images, latency verified in this process
    with timer("evaluation"):
        accuracy = on_main(lambda: evaluate(config, setup, pruned, progress))
    with timer("verification"):
        final = on_main(lambda: compare_latency({"teacher": setup.teacher, "pruned": pruned}, setup.timing.longer(2),
                                                progress=progress, description="Verifying latency"))

    # 8. The report
    def finish() -> dict[str, Any]:
        report = build_report(config, setup.teacher, setup.weights_ref, tiny, selection, final, accuracy, pruned,
                              latency, costs, recovery, timer.total())
        folder.finish(report)
        return report

    report = on_main(finish)
    return CompressionResult(setup.teacher, pruned, selection.dropped, report, folder.path)


def prepare(config: RunConfig, teacher: nn.Module | None = None, drop_cost: DropCost | None = None) -> Setup:
    """Load the teacher, find its droppable blocks, and refuse what can be refused before any work:
    a device this machine lacks, recovery settings that do not go together, a target they cannot
    meet by count, an evaluation folder that is missing or whose classes are not the model's."""
    check_device(config.device)
    check_settings(config.recovery)
    if teacher is not None:
        weights_ref, weights_sha = config.weights, None
        spec = spec_of(teacher)
        set_spec(teacher, with_overrides(spec, config.input_size, config.mean, config.std))
    else:
        teacher, weights_ref, weights_sha = load_teacher(config.model, config.weights, config)
    adapter = adapter_for(teacher, keep_stage_first=config.blocks.keep_stage_first, halves=config.blocks.halves)
    groups = len({b.group for b in adapter.blocks})
    if config.drop is not None and config.drop > groups:
        raise TargetError(f"asked to drop {config.drop} blocks but {config.model} has only {groups} droppable blocks")
    if config.data.eval_path:
        from .evaluate import labelled_files

        labelled_files(config.data.eval_path, spec=adapter.spec)
    timing = Timing.from_config(config.latency, adapter.spec.input_size, config.device)
    check_backend(timing)  # a missing onnxruntime is said now, not after the tiny set is read
    return Setup(teacher, weights_ref, weights_sha, adapter, drop_cost or create_drop_cost(config.scoring.scorer),
                 timing)


def load_teacher(model: str, weights: str | None, config: RunConfig | None = None) -> tuple[nn.Module, str | None,
                                                                                      str | None]:
    """(model with weights, weights reference, sha256 of the weights file); ``config`` adds the model
    options and input overrides of a run. ``weights`` None: the registered model's default."""
    from .models.reference import load_model

    if config is None:
        return load_model(model, weights)
    return load_model(model, weights, options=config.model_options, input_size=config.input_size,
                      mean=config.mean, std=config.std)


def load_tiny_set(config: RunConfig, teacher: nn.Module, teacher_id: str | None = None,
                  progress: Progress | None = None, source: Any = None):
    """The tiny set ``compress`` would use for ``config``: same source, size and seed, same draw.

    Benchmarks call it to recover other pruned networks on exactly the images a run used.
    """
    from .sources import SourceContext, source_from_config

    progress = progress or Progress()
    source = source or source_from_config(config.data)
    context = SourceContext.for_teacher(teacher, teacher_id=teacher_id, device=config.device, progress=progress)
    args = (config.data.num_images, context.input_size, config.seed)
    if "context" not in inspect.signature(source.load).parameters:
        tiny = source.load(*args)  # a source written before sources had a context
    else:
        tiny = source.load(*args, context=context)
    return with_ood_photos(config, tiny, context.input_size, progress)


def with_ood_photos(config: RunConfig, tiny: Any, image_size: int, progress: Progress) -> Any:
    """The tiny set with ``data.ood_path``'s photos after its own images (unlabelled, so the whole
    set is), drawn with the run's seed; the set itself when no folder is named."""
    from .sources import OutOfDomainFolderSource, TinySet

    if config.data.ood_path is None:
        return tiny
    count = config.data.ood_images or config.data.num_images
    photos = OutOfDomainFolderSource(config.data.ood_path).load(count, image_size, config.seed)
    progress.log(f"added {len(photos)} out-of-domain photos from {config.data.ood_path}")
    return TinySet.join(tiny, photos)


def check_tiny_set(config: RunConfig, tiny: Any, progress: Progress, spec: ModelSpec | None = None) -> Any:
    """Say what was read; refuse a recovery the set cannot feed (labels) before any timing.

    Returns the set with its labels as ``spec``'s output indices: a folder's classes are matched
    to the model's by name (``sources.images.class_indices``). Classes that do not match refuse a
    recovery that trains on labels; a label-free one goes on without them.
    """
    if len(tiny) < config.data.num_images:
        progress.log(f"only {len(tiny)} of {config.data.num_images} images could be read")
    method = config.recovery.method
    needs_labels = RECOVERY_METHODS.get(method).needs_labels
    if spec is not None and tiny.labels is not None and tiny.class_names is not None:
        where = tiny.info.get("root") or f"the '{config.data.source}' tiny set"
        try:
            indices = class_indices(tiny.class_names, spec, where)
        except DataError as err:
            if needs_labels:
                raise DataError(f"{method.upper()} recovery trains on labels, and {err}") from None
            progress.log(f"labels not used ({method} recovery needs none): {err}")
            tiny = replace(tiny, labels=None, class_names=None)
        else:
            tiny = replace(tiny, labels=torch.tensor(indices, dtype=torch.int64)[tiny.labels],
                           class_names=label_names(tiny.class_names, indices, spec))
    if needs_labels and tiny.labels is None:
        why = ("out-of-domain photos (data.ood_path) have none" if config.data.ood_path is not None
               else f"the '{config.data.source}' source has no labels")
        raise ConfigError(f"{method.upper()} recovery needs labelled images and {why}; "
                          f"use --recovery {' or '.join(label_free_methods())}")
    progress.log(f"tiny set: {len(tiny)} images from '{config.data.source}'"
                 + (f" ({tiny.skipped} unreadable skipped)" if tiny.skipped else ""))
    return tiny


def measure_blocks(config: RunConfig, setup: Setup, progress: Progress) -> BlockLatencyProfile:
    """ΔLat of every candidate: from the latency table (the user's, else this machine's cache) or timed."""
    from .latency_table import cached_profile

    pool = config.latency.pool_identical
    return cached_profile(
        setup.teacher, setup.blocks, setup.timing, pool,
        lambda: profile_blocks(setup.teacher, setup.blocks, setup.timing, pool_identical=pool, progress=progress,
                               method=config.latency.profile),
        table=config.latency.table, remeasure=config.latency.remeasure, profile=config.latency.profile,
        log=progress.log,
    )


def score_blocks(config: RunConfig, setup: Setup, latency: BlockLatencyProfile, images: torch.Tensor,
                 augment: Callable[[torch.Tensor], torch.Tensor], progress: Progress) -> BlockCosts:
    """The drop cost of every candidate block."""
    context = ScoringContext(
        teacher=setup.teacher, blocks=setup.blocks, delta_lat={b.name: b.delta_lat for b in latency.blocks},
        images=images, augment=augment, normalize=setup.normalize, config=config.scoring, seed=config.seed,
        device=torch.device(config.device), progress=progress, adapter=setup.adapter, precision=config.precision,
    )
    name = setup.drop_cost.name or type(setup.drop_cost).__name__
    return BlockCosts(name, setup.drop_cost(context))


def block_scores(setup: Setup, latency: BlockLatencyProfile, costs: BlockCosts) -> list[BlockScore]:
    """What the selection knows of each candidate block: its ΔLat and its cost."""
    return [BlockScore(b.name, b.stage, b.step, lat.delta_lat, float(costs.costs[b.name]), b.group)
            for b, lat in zip(setup.blocks, latency.blocks, strict=True)]


def select_for(config: RunConfig, setup: Setup, latency: BlockLatencyProfile, costs: BlockCosts,
               progress: Progress) -> Selection:
    """``select_blocks`` for this run's target, measuring on the teacher with the run's timing."""
    return select_blocks(
        block_scores(setup, latency, costs), cut_measure(setup.teacher, setup.timing, progress),
        target=config.latency_reduction, drop=config.drop, all_dropped_cut_percent=latency.all_dropped_cut_percent,
        margin=config.latency.target_margin, window=config.latency.target_window,
        window_cost=config.latency.target_window_cost, method=config.selection,
        model_name=config.model, log=progress.log,
    )


def trial_sets(config: RunConfig, setup: Setup, latency: BlockLatencyProfile, costs: BlockCosts, selected: Selection,
               images: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor], folder: runs.RunFolder,
               progress: Progress) -> Trials:
    """The selection and the next cheapest sets reaching its measured cut, each briefly recovered
    (``dfpractise.trials``); the one that comes closest to the teacher on held-back images is kept."""
    scores = block_scores(setup, latency, costs)
    summed = sum(s.delta_lat for s in scores if s.name in selected.dropped)
    scale = 100.0 * selected.measured.reduction / summed if summed > 0 else 1.0
    goal = cut_goal(config.latency_reduction, config.latency.target_margin, latency.all_dropped_cut_percent)
    candidates = alternatives(scores, selected.dropped, goal / scale, config.trials.sets - 1, config.selection)
    done, save = partial_record(folder.path, resume=folder.resume)
    done = distributed.broadcast_object(done)  # under torchrun every rank recovers each trial; rank 0 decides
    measure = cut_measure(setup.teacher, setup.timing, progress)
    recovered = held_back_judge(config, setup.teacher, setup.adapter, images, augment, setup.normalize, progress)

    def measured(blocks: list[str], rounds: int = 1) -> MeasuredCut:
        return distributed.on_main(lambda: measure(blocks, rounds))

    def judge(blocks: list[str], description: str) -> float:
        return distributed.broadcast_object(recovered(blocks, description))

    trials = try_sets(selected, candidates, measured, judge, goal, done=done, save=save, log=progress.log)
    progress.log(f"trials kept {', '.join(trials.chosen)}")
    return trials


def evaluate(config: RunConfig, setup: Setup, pruned: nn.Module, progress: Progress) -> dict[str, dict] | None:
    """Top-1/top-5 of teacher and pruned model on ``data.eval_path`` (None when there is none)."""
    if not config.data.eval_path:
        return None
    from .evaluate import evaluate_models

    spec = setup.spec
    return evaluate_models(
        {"teacher": setup.teacher, "pruned": pruned}, config.data.eval_path, spec.mean, spec.std,
        spec.input_size, batch_size=config.data.eval_batch_size, device=config.device, progress=progress,
        spec=spec,
    )


def _finished(path: Path) -> CompressionResult:
    loaded = runs.load_run(path)
    return CompressionResult(loaded.teacher, loaded.pruned, loaded.manifest["dropped"], loaded.report, path)
