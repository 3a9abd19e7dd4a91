"""Drop costs: how hard is each block to do without (lower is better).

Selection ranks blocks by score = cost / ΔLat (PRACTISE.md section 3); a ``DropCost`` supplies
the cost. ``RecoverabilityCost`` is PRACTISE's measure: drop the block, put identity-initialised
1x1 adaptors around the hole, fit only the adaptors to mimic the teacher's final feature map, and
report the remaining error. Made cheap by caching: the network before the block's stage is frozen
and unchanged, so its output is computed once for a fixed set of augmented views of the tiny set,
as are the teacher's target features. ``random`` and ``latency-only`` exist so benchmarks can show
what recoverability buys. ``set_costs`` measures the same for whole sets of blocks at once, to compare
candidate selections (``benchmarks/set_costs.py``).

Drop costs are small classes behind one interface (``__call__(context) -> {block: cost}``), in
the manner of Torch-Pruning's importance criteria: pass an instance of your own to plug one in,
or register it under a name for recipes (``@register_drop_cost("mine")``); the setting that
names one is ``scoring.scorer`` (``--scorer``).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
import torch.nn.functional as F
from synthesizers.registry import Registry
from torch import nn

from . import distributed
from . import precision as precisions
from .config import ScoringConfig
from .errors import ConfigError, DivergedError
from .models.adapter import ModelAdapter, Stage, adapter_for
from .models.blocks import Block
from .progress import Progress


@dataclass
class ScoringContext:
    """What a drop cost may look at."""

    teacher: nn.Module
    blocks: list[Block]
    delta_lat: dict[str, float]  # percent, as used for the score
    images: torch.Tensor | None  # the tiny set, pixels in [0, 1]
    augment: Callable[[torch.Tensor], torch.Tensor] | None
    normalize: Callable[[torch.Tensor], torch.Tensor]
    config: ScoringConfig
    seed: int = 0
    device: torch.device = torch.device("cpu")
    progress: Progress | None = None
    adapter: ModelAdapter | None = None  # the teacher's (its own is used when not given)
    precision: str = "fp32"  # of the adaptor fits (dfpractise.precision); costs are measured in fp32


@dataclass
class BlockCosts:
    """The scoring phase of a run: the cost of dropping each candidate block, and who said so."""

    FILE = "scores.json"
    scorer: str
    costs: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "costs": dict(self.costs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BlockCosts":
        return cls(str(data["scorer"]), {k: float(v) for k, v in data["costs"].items()})


class DropCost(ABC):
    """The cost of dropping each candidate block; selection divides it by the block's ΔLat."""

    name: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, context: ScoringContext) -> dict[str, float]: ...


D = TypeVar("D", bound=type[DropCost])
DROP_COSTS: Registry[type[DropCost]] = Registry("scorer", "scorers", unknown=ConfigError, invalid=ConfigError)


def register_drop_cost(name: str) -> Callable[[D], D]:
    """Class decorator: make a drop cost available to recipes and ``--scorer`` by name."""
    return DROP_COSTS.register(name)


def create_drop_cost(name: str) -> DropCost:
    return DROP_COSTS.get(name)()


@register_drop_cost("random")
class RandomCost(DropCost):
    """A random cost per block (seeded): the baseline that knows nothing."""

    def __call__(self, context: ScoringContext) -> dict[str, float]:
        rng = random.Random(context.seed)
        return {b.name: rng.random() for b in context.blocks}


@register_drop_cost("latency-only")
class UniformCost(DropCost):
    """The same cost for every block, so the score ranks blocks by ΔLat alone."""

    def __call__(self, context: ScoringContext) -> dict[str, float]:
        return {b.name: 1.0 for b in context.blocks}


@register_drop_cost("recoverability")
class RecoverabilityCost(DropCost):
    """Feature error left after fitting adaptors around the dropped block (PRACTISE)."""

    def __init__(
        self,
        done: dict[str, float] | None = None,
        on_block: Callable[[str, float, float], None] | None = None,
    ) -> None:
        """``done``: costs already known (a resumed long scoring), returned without refitting.
        ``on_block(name, cost, seconds)`` is called as each block finishes, so a caller can save
        it; the shared activation cache is built once per call and is not in ``seconds``.

        Under ``torchrun`` every rank builds the activation cache, fits the adaptors of its share
        of the blocks (blocks r, r + N, ... of those still to score; ``on_block`` is called on the
        rank that fitted it) and the costs are gathered: each block's fit depends on its own seed
        alone (``block_seed``), so the costs are the one-process costs.
        """
        self.done = dict(done or {})
        self.on_block = on_block

    def __call__(self, context: ScoringContext) -> dict[str, float]:
        with _scoring(context) as (adapter, views):
            stages = [adapter.stages[s] for s in sorted({b.stage for b in context.blocks})]
            runs, targets = _cache_activations(adapter, stages, views, context.config.batch_size)
            clean = len(context.images)
            config = context.config
            progress = context.progress or Progress()
            costs = {b.name: self.done[b.name] for b in context.blocks if b.name in self.done}
            mine = distributed.shard([b for b in context.blocks if b.name not in costs])

            def fit_mine() -> dict[str, float]:
                fitted: dict[str, float] = {}
                with progress.task("Scoring blocks", total=len(mine) * config.iterations) as task:
                    for block in mine:
                        fitted[block.name] = self._fit(context, adapter, block, runs, targets, clean, task, progress)
                return fitted

            for share in distributed.together(fit_mine):
                costs.update(share)
        return {b.name: costs[b.name] for b in context.blocks}  # network order, as before

    def _fit(self, context: ScoringContext, adapter: ModelAdapter, block: Block, runs: dict[int, "StageRun"],
             targets: torch.Tensor, clean: int, task: Any, progress: Progress) -> float:
        """The cost of one block: its adaptors fitted from its own seed (the same on any rank)."""
        config = context.config
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(block_seed(context.seed, block.name))
        torch.manual_seed(block_seed(context.seed, block.name))
        cost = _fit_adaptors(
            adapter, [block], runs[block.stage], targets, clean, config, generator,
            lambda loss, b=block.name: task.advance(1, block=b, loss=loss),
            dtype=precisions.resolve(context.precision, context.device),
            on_diverged=lambda step, b=block.name: progress.log(
                f"scoring: the adaptor fit of {b} diverged at iteration {step} of {config.iterations} "
                f"(scoring.lr {config.lr:g}); its cost is the identity adaptors' error"),
        )
        if not math.isfinite(cost):
            raise DivergedError(f"scoring stopped at block {block.name}: the teacher's features "
                                "without it are NaN/Inf, so no drop cost can be measured")
        if self.on_block is not None:
            self.on_block(block.name, cost, time.perf_counter() - started)
        return cost


def set_costs(context: ScoringContext, sets: list[list[str]]) -> list[float]:
    """PRACTISE's recoverability of whole sets of blocks, one cost per set: all of a set's holes at
    once and every hole's adaptors fitted together, the feature error left after.

    A set's cost is not the sum of its blocks' costs: two holes can be easier to bridge together
    than each alone suggests, or harder. Measured to compare candidate selections; ``context.blocks``
    are the candidates the sets are drawn from. Whole blocks only (a set holding one branch of a
    block is refused). Each set's fit is seeded by the run's seed and the set alone.
    """
    by_name = {b.name: b for b in context.blocks}
    for names in sets:
        unknown = [n for n in names if n not in by_name]
        if unknown or not names:
            raise ConfigError(f"set {names}: {', '.join(unknown) or 'no blocks'} not among the candidate blocks")
        if any(by_name[n].part is not None for n in names):
            raise ConfigError(f"set {names}: set costs are for whole blocks, not one branch of a block")
    with _scoring(context) as (adapter, views):
        stages = [adapter.stages[s] for s in sorted({by_name[n].stage for names in sets for n in names})]
        runs, targets = _cache_activations(adapter, stages, views, context.config.batch_size)
        config = context.config
        costs = []
        with (context.progress or Progress()).task("Scoring block sets", total=len(sets) * config.iterations) as task:
            for names in sets:
                blocks = [by_name[n] for n in names]
                key = "+".join(names)
                generator = torch.Generator().manual_seed(block_seed(context.seed, key))
                torch.manual_seed(block_seed(context.seed, key))
                costs.append(_fit_adaptors(
                    adapter, blocks, runs[min(b.stage for b in blocks)], targets, len(context.images), config,
                    generator, lambda loss, k=key: task.advance(1, blocks=k, loss=loss),
                    dtype=precisions.resolve(context.precision, context.device)))
    return costs


@contextmanager
def _scoring(context: ScoringContext) -> Iterator[tuple[ModelAdapter, torch.Tensor]]:
    """The teacher frozen in eval mode (channels-last on a CPU) and the tiny set's views, for the
    fits; the teacher is put back as it was after."""
    if context.images is None or len(context.images) == 0:
        raise ConfigError("the recoverability scorer needs a tiny set of images")
    teacher = context.teacher
    adapter = context.adapter or adapter_for(teacher)
    channels_last = context.device.type == "cpu"
    requires_grad = {n: p.requires_grad for n, p in teacher.named_parameters()}
    was_training = teacher.training
    teacher.eval().requires_grad_(False).to(context.device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    try:
        yield adapter, _make_views(context, channels_last)
    finally:
        teacher.to(memory_format=torch.contiguous_format)
        for n, p in teacher.named_parameters():
            p.requires_grad_(requires_grad[n])
        teacher.train(was_training)


def block_seed(seed: int, name: str) -> int:
    """The seed of one block's fit: from the run's seed and the block's name alone, so a block
    costs the same whichever other blocks are candidates."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _make_views(context: ScoringContext, channels_last: bool) -> torch.Tensor:
    """The clean tiny set followed by ``views - 1`` fixed augmented copies, normalised."""
    torch.manual_seed(context.seed)
    images = context.images.to(context.device)
    views = [images]
    for _ in range(context.config.views - 1):
        augmented = [context.augment(chunk) for chunk in images.split(context.config.batch_size)]
        views.append(torch.cat(augmented))
    views = context.normalize(torch.cat(views))
    return views.contiguous(memory_format=torch.channels_last) if channels_last else views


@dataclass
class StageRun:
    """How to run the network from a stage's entry: its cached input, replayed, or from the images.

    The part of the network before a stage is frozen and unchanged by any hole in it, so the input
    of the stage's opening module is computed once per view. Replaying it needs no knowledge of
    the model's code: the model is called on an empty batch and a hook on the opening module swaps
    in the cached input (checked once against a full forward; where the model's code does not
    allow it, the stage runs from the images instead).
    """

    entry: str
    inputs: torch.Tensor | None  # the opening module's cached input per view, or None: use ``views``
    views: torch.Tensor

    def features(self, adapter: ModelAdapter, model: nn.Module, index: torch.Tensor | slice) -> torch.Tensor:
        if self.inputs is None:
            return adapter.features(model, self.views[index])
        cached = self.inputs[index]
        handle = model.get_submodule(self.entry).register_forward_pre_hook(lambda module, args: (cached,))
        try:
            return adapter.features(model, self.views[:0])
        finally:
            handle.remove()


def _cache_activations(
    adapter: ModelAdapter, stages: list[Stage], views: torch.Tensor, batch_size: int,
) -> tuple[dict[int, StageRun], torch.Tensor]:
    """Each scored stage's entry input for every view, and the teacher's final features."""
    model = adapter.model
    inputs: dict[int, list[torch.Tensor]] = {s.index: [] for s in stages if s.replayable}
    finals = []
    handles = [model.get_submodule(s.members[0]).register_forward_pre_hook(
        lambda module, args, i=s.index: inputs[i].append(args[0])) for s in stages if s.replayable]
    try:
        with torch.no_grad():
            for x in views.split(batch_size):
                finals.append(adapter.features(model, x))
    finally:
        for handle in handles:
            handle.remove()
    targets = torch.cat(finals)
    runs = {}
    for stage in stages:
        run = StageRun(stage.members[0], torch.cat(inputs[stage.index]) if stage.index in inputs else None, views)
        if run.inputs is not None and not _replays(adapter, run, targets, batch_size):
            run = StageRun(stage.members[0], None, views)
        runs[stage.index] = run
    return runs, targets


def _replays(adapter: ModelAdapter, run: StageRun, targets: torch.Tensor, batch_size: int) -> bool:
    """Whether feeding the cached entry input gives the teacher's features (first batch)."""
    n = min(batch_size, len(targets))
    try:
        with torch.no_grad():
            replayed = run.features(adapter, adapter.model, slice(0, n))
    except Exception:  # the model's code needs the real batch before the stage
        return False
    return replayed.shape == targets[:n].shape and torch.allclose(replayed, targets[:n], rtol=1e-4, atol=1e-5)


def _fit_adaptors(
    adapter: ModelAdapter,
    blocks: list[Block],
    run: StageRun,
    targets: torch.Tensor,
    clean: int,
    config: ScoringConfig,
    generator: torch.Generator,
    on_step: Callable[[float], None],
    on_diverged: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Fit adaptors around the holes left by ``blocks`` (together); return the feature MSE on the
    clean set. ``run`` starts at or before the first hole's stage.

    ``dtype``: autocast of the fit's steps (bf16 or None); the errors compared are always fp32.
    """
    with adapter.holes([b.name for b in blocks]) as student:
        adaptors, handles = nn.ModuleList(), []
        gone = {b.module for b in blocks if b.part is None}
        for block in blocks:  # where two holes hook one module, their adaptors compose (both start as identity)
            around, hooked = attach_adaptors(adapter, student, block, skip=gone)
            adaptors.extend(around)
            handles.extend(hooked)
        adaptors.to(targets.device)  # made on the CPU; the cached activations may live on a GPU
        if targets.device.type == "cpu":
            adaptors.to(memory_format=torch.channels_last)
        try:
            identity_error = _clean_error(adapter, student, run, targets, clean, config.batch_size)
            if config.iterations > 0 and len(adaptors) > 0:
                optimizer = torch.optim.SGD(
                    adaptors.parameters(), lr=config.lr, momentum=config.momentum,
                    weight_decay=config.weight_decay,
                )
                scheduler = torch.optim.lr_scheduler.MultiStepLR(
                    optimizer, milestones=[max(1, int(0.4 * config.iterations))], gamma=0.1
                )
                total = len(targets)
                low = clean if total > clean else 0
                for done in range(config.iterations):
                    index = torch.randint(low, total, (min(config.batch_size, total - low),), generator=generator)
                    with precisions.autocast(dtype, targets.device):
                        loss = F.mse_loss(run.features(adapter, student, index).float(), targets[index])
                    if not torch.isfinite(loss):
                        if on_diverged is not None:
                            on_diverged(done + 1)
                        for _ in range(done, config.iterations):
                            on_step(float("nan"))
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    on_step(loss.item())
            else:
                for _ in range(config.iterations):
                    on_step(float("nan"))
            fitted = _clean_error(adapter, student, run, targets, clean, config.batch_size)
        finally:
            for handle in handles:
                handle.remove()
    # identity adaptors are always available, so the recoverable error is never worse than
    # theirs; this also keeps a diverged fit (lr too high for the feature scale) harmless
    return fitted if fitted == fitted and fitted < identity_error else identity_error


def _clean_error(adapter: ModelAdapter, student: nn.Module, run: StageRun, targets: torch.Tensor, clean: int,
                 batch_size: int) -> float:
    """Feature MSE on the un-augmented tiny set (the first ``clean`` cached rows)."""
    error = 0.0
    with torch.no_grad():
        for start in range(0, clean, batch_size):
            stop = min(start + batch_size, clean)
            out = run.features(adapter, student, slice(start, stop))
            error += F.mse_loss(out, targets[start:stop], reduction="sum").item()
    return error / targets[:clean].numel()


def identity_adaptor(channels: int, layout: str = "channels") -> nn.Module:
    """A C→C map without bias that starts as the identity: a 1x1 convolution for NCHW tensors
    (``layout="channels"``), a linear map on the last dimension for tokens (N, L, C) and
    channels-last (N, H, W, C) tensors (``layout="last"``)."""
    if layout == "channels":
        conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        return conv
    linear = nn.Linear(channels, channels, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(channels))
    return linear


def attach_adaptors(adapter: ModelAdapter, model: nn.Module, block: Block,
                    skip: set[str] = frozenset()) -> tuple[nn.ModuleList, list]:
    """Hook adaptors around the hole (PRACTISE.md 3.2), never on a skip path; none on the blocks
    in ``skip`` (other holes of the same set, taken out of ``model``).

    The stage is a sequence of branches (one per block for a CNN, two for a transformer layer).
    Before the hole: on the output of each branch's last conv/linear map (before its last BN).
    After it: on the input of each branch's first one, up to and including the first block of
    the next stage (its branch and its projection shortcut).
    """
    adaptors = nn.ModuleList()
    handles = []
    stage = adapter.stage(block)
    hole = stage.members.index(block.module)
    for position, member in enumerate(stage.members):
        if member in skip and member != block.module:
            continue
        branches = list(adapter.anatomy(member).branches)
        if position < hole:
            before, after = branches, []
        elif position > hole:
            before, after = [], branches
        elif block.part is None:
            continue
        else:
            before, after = branches[:block.part], branches[block.part + 1:]
        for branch in before:
            if branch.last is not None:
                _hook_output(model.get_submodule(f"{member}.{branch.last}"), adaptors, handles)
        for branch in after:
            if branch.first is not None:
                _hook_input(model.get_submodule(f"{member}.{branch.first}"), adaptors, handles)
    if stage.following is not None and stage.following not in skip:
        anatomy = adapter.anatomy(stage.following)
        for branch in anatomy.branches + ((anatomy.shortcut,) if anatomy.shortcut else ()):
            if branch.first is not None:
                _hook_input(model.get_submodule(f"{stage.following}.{branch.first}"), adaptors, handles)
    return adaptors, handles


def _layout(module: nn.Module, side: str) -> tuple[int, str]:
    """(channels, layout) of the tensor entering (``side="in"``) or leaving a conv/linear map."""
    if isinstance(module, nn.Conv2d):
        return (module.in_channels if side == "in" else module.out_channels), "channels"
    if isinstance(module, nn.Linear):
        return (module.in_features if side == "in" else module.out_features), "last"
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, "last"
    raise ConfigError(f"no adaptor for a {type(module).__name__} (conv2d, linear and attention only)")


def _hook_input(module: nn.Module, adaptors: nn.ModuleList, handles: list) -> None:
    if not isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
        return
    adaptor = identity_adaptor(*_layout(module, "in"))
    adaptors.append(adaptor)

    def hook(mod, args):  # attention takes its input three times (query, key, value)
        adapted = adaptor(args[0])
        return tuple(adapted if a is args[0] else a for a in args)

    handles.append(module.register_forward_pre_hook(hook))


def _hook_output(module: nn.Module, adaptors: nn.ModuleList, handles: list) -> None:
    if not isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
        return
    adaptor = identity_adaptor(*_layout(module, "out"))
    adaptors.append(adaptor)

    def hook(mod, args, output):
        if isinstance(output, tuple):
            return (adaptor(output[0]),) + output[1:]
        return adaptor(output)

    handles.append(module.register_forward_hook(hook))
