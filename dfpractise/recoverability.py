"""Drop costs: how hard is each block to do without (lower is better).

Selection ranks blocks by score = cost / ΔLat (PRACTISE.md section 3); a ``DropCost`` supplies
the cost. ``RecoverabilityCost`` is PRACTISE's measure: drop the block, put identity-initialised
1x1 adaptors around the hole, fit only the adaptors to mimic the teacher's final feature map, and
report the remaining error. Made cheap by caching: the network before the block's stage is frozen
and unchanged, so its output is computed once for a fixed set of augmented views of the tiny set,
as are the teacher's target features. ``random`` and ``latency-only`` exist so benchmarks can show
what recoverability buys.

Drop costs are small classes behind one interface (``__call__(context) -> {block: cost}``), in
the manner of Torch-Pruning's importance criteria: pass an instance of your own to plug one in,
or register it under a name for recipes (``@register_drop_cost("mine")``); the setting that
names one is ``scoring.scorer`` (``--scorer``).
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from synthesizers.registry import Registry
from torch import nn

from .config import ScoringConfig
from .errors import ConfigError
from .models.blocks import Block, Step, branch_convs, feature_steps, shortcut_convs, stage_steps
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
        """
        self.done = dict(done or {})
        self.on_block = on_block

    def __call__(self, context: ScoringContext) -> dict[str, float]:
        if context.images is None or len(context.images) == 0:
            raise ConfigError("the recoverability scorer needs a tiny set of images")
        teacher = context.teacher
        steps = feature_steps(teacher)
        stages = sorted({b.stage for b in context.blocks})
        starts = {s: stage_steps(steps, s)[0].index for s in stages}
        channels_last = context.device.type == "cpu"
        requires_grad = {n: p.requires_grad for n, p in teacher.named_parameters()}
        was_training = teacher.training
        teacher.eval().requires_grad_(False).to(context.device)
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
        try:
            views = _make_views(context)
            stage_inputs, targets = _cache_activations(
                steps, views, starts, context.config.batch_size, channels_last
            )
            clean = len(context.images)
            config = context.config
            progress = context.progress or Progress()
            costs = {b.name: self.done[b.name] for b in context.blocks if b.name in self.done}
            todo = [b for b in context.blocks if b.name not in costs]
            with progress.task("Scoring blocks", total=len(todo) * config.iterations) as task:
                for block in todo:
                    started = time.perf_counter()
                    generator = torch.Generator().manual_seed(context.seed * 1000 + block.step)
                    torch.manual_seed(context.seed * 1000 + block.step)
                    costs[block.name] = _fit_adaptors(
                        steps, block, stage_inputs[block.stage], targets, clean, config,
                        generator, channels_last, lambda loss, b=block.name: task.advance(1, block=b, loss=loss),
                    )
                    if self.on_block is not None:
                        self.on_block(block.name, costs[block.name], time.perf_counter() - started)
            costs = {b.name: costs[b.name] for b in context.blocks}  # network order, as before
        finally:
            teacher.to(memory_format=torch.contiguous_format)
            for n, p in teacher.named_parameters():
                p.requires_grad_(requires_grad[n])
            teacher.train(was_training)
        return costs


def _make_views(context: ScoringContext) -> torch.Tensor:
    """The clean tiny set followed by ``views - 1`` fixed augmented copies, normalised."""
    torch.manual_seed(context.seed)
    images = context.images.to(context.device)
    views = [images]
    for _ in range(context.config.views - 1):
        augmented = [context.augment(chunk) for chunk in images.split(context.config.batch_size)]
        views.append(torch.cat(augmented))
    return context.normalize(torch.cat(views))


def _cache_activations(
    steps: list[Step],
    views: torch.Tensor,
    starts: dict[int, int],
    batch_size: int,
    channels_last: bool,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Teacher activations entering each scored stage, and the teacher's final features."""
    inputs: dict[int, list[torch.Tensor]] = {s: [] for s in starts}
    finals = []
    stage_at = {index: s for s, index in starts.items()}
    with torch.no_grad():
        for x in views.split(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for step in steps:
                if step.index in stage_at:
                    inputs[stage_at[step.index]].append(x)
                x = step.module(x)
            finals.append(x)
    return {s: torch.cat(v) for s, v in inputs.items()}, torch.cat(finals)


def _fit_adaptors(
    steps: list[Step],
    block: Block,
    stage_input: torch.Tensor,
    targets: torch.Tensor,
    clean: int,
    config: ScoringConfig,
    generator: torch.Generator,
    channels_last: bool,
    on_step: Callable[[float], None],
) -> float:
    """Fit adaptors around the hole left by ``block``; return the feature MSE on the clean set."""
    student = [s for s in steps if s.index >= stage_steps(steps, block.stage)[0].index and s.name != block.name]
    adaptors, handles = attach_adaptors(steps, block)
    adaptors.to(stage_input.device)  # made on the CPU; the cached activations may live on a GPU
    if channels_last:
        adaptors.to(memory_format=torch.channels_last)
    try:
        identity_error = _clean_error(student, stage_input, targets, clean, config.batch_size)
        if config.iterations > 0 and len(adaptors) > 0:
            optimizer = torch.optim.SGD(
                adaptors.parameters(), lr=config.lr, momentum=config.momentum,
                weight_decay=config.weight_decay,
            )
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=[max(1, int(0.4 * config.iterations))], gamma=0.1
            )
            total = len(stage_input)
            low = clean if total > clean else 0
            for done in range(config.iterations):
                index = torch.randint(low, total, (min(config.batch_size, total - low),), generator=generator)
                loss = F.mse_loss(_run(student, stage_input[index]), targets[index])
                if not torch.isfinite(loss):
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
        fitted = _clean_error(student, stage_input, targets, clean, config.batch_size)
        # identity adaptors are always available, so the recoverable error is never worse than
        # theirs; this also keeps a diverged fit (lr too high for the feature scale) harmless
        return fitted if fitted == fitted and fitted < identity_error else identity_error
    finally:
        for handle in handles:
            handle.remove()


def _clean_error(student, stage_input, targets, clean: int, batch_size: int) -> float:
    """Feature MSE on the un-augmented tiny set (the first ``clean`` cached rows)."""
    error = 0.0
    with torch.no_grad():
        for start in range(0, clean, batch_size):
            stop = min(start + batch_size, clean)
            out = _run(student, stage_input[start:stop])
            error += F.mse_loss(out, targets[start:stop], reduction="sum").item()
    return error / targets[:clean].numel()


def _run(steps: list[Step], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step.module(x)
    return x


def identity_adaptor(channels: int) -> nn.Conv2d:
    """A C→C 1x1 convolution without bias that starts as the identity."""
    conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return conv


def attach_adaptors(steps: list[Step], block: Block) -> tuple[nn.ModuleList, list]:
    """Hook adaptors around the hole (PRACTISE.md 3.2), never on a skip path.

    Before the hole (same stage): on the output of each block's residual branch, before its last
    BatchNorm (a hook on the branch's last conv). After it: on the input of each residual branch up
    to and including the first block of the next stage, and on that block's projection shortcut.
    """
    adaptors = nn.ModuleList()
    handles = []
    stage = stage_steps(steps, block.stage)
    last_index = stage[-1].index
    following = steps[last_index + 1] if last_index + 1 < len(steps) else None
    after = [s for s in stage if s.index > block.step]
    if following is not None and following.residual:
        after.append(following)
    for step in stage:
        if step.index < block.step:
            conv = branch_convs(step.module)[-1]
            adaptor = identity_adaptor(conv.out_channels)
            handles.append(conv.register_forward_hook(_output_hook(adaptor)))
            adaptors.append(adaptor)
    for step in after:
        entry_convs = branch_convs(step.module)[:1] + shortcut_convs(step.module)[:1]
        for conv in entry_convs:
            adaptor = identity_adaptor(conv.in_channels)
            handles.append(conv.register_forward_pre_hook(_input_hook(adaptor)))
            adaptors.append(adaptor)
    return adaptors, handles


def _output_hook(adaptor: nn.Module):
    def hook(module, args, output):
        return adaptor(output)

    return hook


def _input_hook(adaptor: nn.Module):
    def hook(module, args):
        return (adaptor(args[0]),) + tuple(args[1:])

    return hook
