"""Measured latency: interleaved rounds, medians of paired ratios.

These machines are noisy (the same forward varies by 10% run to run), so models being compared
are timed in the same rounds, one forward each per round, in a rotating order; a reduction is the
median over rounds of the per-round ratio, and its spread is the inter-quartile range of those
ratios. Always eval mode and no grad: a train-mode forward would change BatchNorm statistics.
What to time with (batch, resolution, rounds, threads, device, runtime, clock) travels as one
``Timing``; the runtime is a backend of ``dfpractise.backends`` (eager PyTorch or onnxruntime).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from .backends import Backend, create_backend, torch_threads  # noqa: F401 - torch_threads for callers
from .errors import ConfigError
from .progress import Progress

if TYPE_CHECKING:
    from .config import LatencyConfig


@dataclass(frozen=True)
class Timing:
    """How models are timed: the one object every measurement takes.

    ``backend`` names the runtime the forwards run on (``dfpractise.backends``: ``torch`` or
    ``onnxruntime``). ``clock`` returns seconds; tests pass a fake one so that measured ratios are
    exact.
    """

    batch_size: int = 64
    resolution: int = 32
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    device: str = "cpu"
    channels_last: bool = True
    backend: str = "torch"
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: "LatencyConfig", input_size: int, device: str = "cpu") -> "Timing":
        """A run's timing: its latency settings, at the model's input size unless one is set."""
        return cls(config.batch_size, config.resolution or input_size, config.repeats, config.warmup,
                   config.threads, str(device), backend=config.backend)

    def longer(self, factor: int) -> "Timing":
        """The same timing with ``factor`` times the rounds (a confirming measurement)."""
        return replace(self, repeats=factor * self.repeats)


@dataclass
class LatencyComparison:
    """Per-round forward times (seconds) of several models measured together.

    With a reference model, each other model's forward is bracketed by two forwards of the
    reference, and ``paired[name]`` holds the mean of those two: the closest-in-time baseline a
    noisy machine allows.
    """

    times: dict[str, list[float]] = field(default_factory=dict)
    batch_size: int = 0
    resolution: int = 0
    threads: int = 0
    device: str = "cpu"
    paired: dict[str, list[float]] = field(default_factory=dict)
    backend: str = "torch"
    memory_format: str = "contiguous"  # of the input and weights (the backend's; channels-last on CPU torch)

    def median_ms(self, name: str) -> float:
        return 1000.0 * statistics.median(self.times[name])

    def reduction(self, name: str, reference: str) -> tuple[float, float, float]:
        """Median, 25th and 75th percentile of (T_ref - T_name) / T_ref over rounds."""
        baseline = self.paired.get(name) or self.times[reference]
        ratios = sorted((ref - t) / ref for ref, t in zip(baseline, self.times[name], strict=True))
        return statistics.median(ratios), _quantile(ratios, 0.25), _quantile(ratios, 0.75)


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=4, method="inclusive")[int(q * 4) - 1]


def compare_latency(
    models: Mapping[str, nn.Module],
    timing: Timing,
    *,
    progress: Progress | None = None,
    description: str = "Timing",
    reference: str | None = "teacher",
    backend: "Backend | None" = None,
) -> LatencyComparison:
    """Time every model in interleaved rounds on one random batch, on ``timing.backend``.

    If ``reference`` names one of ``models``, it is timed before and after every other model
    (see ``LatencyComparison``); otherwise the models simply take turns. ``backend``: an instance
    of ``timing.backend`` to reuse across measurements of unchanged models (it may keep what it
    prepared for them, such as the teacher's onnxruntime session); default a fresh one.
    """
    backend = backend or create_backend(timing.backend)
    backend.check(timing)
    progress = progress or Progress()
    names = list(models)
    if reference not in models:
        reference = None
    x = backend.batch(timing)
    forwards = {}  # prepared and given back outside inference mode: parameters stay ordinary tensors
    try:
        for name, model in models.items():
            forwards[name] = backend.forward(model, x, timing)

        def timed(name: str) -> float:
            start = timing.clock()
            forwards[name](x)
            return timing.clock() - start

        with backend.running(timing) as used_threads:
            for forward in forwards.values():
                for _ in range(timing.warmup):
                    forward(x)
            times: dict[str, list[float]] = {name: [] for name in names}
            paired: dict[str, list[float]] = {}
            others = [n for n in names if n != reference]
            with progress.task(description, total=timing.repeats) as task:
                for round_index in range(timing.repeats):
                    shift = round_index % len(others) if others else 0
                    order = others[shift:] + others[:shift]
                    if reference is None:
                        for name in order:
                            times[name].append(timed(name))
                    else:
                        before = timed(reference)
                        times[reference].append(before)
                        for name in order:
                            times[name].append(timed(name))
                            after = timed(reference)
                            times[reference].append(after)
                            paired.setdefault(name, []).append(0.5 * (before + after))
                            before = after
                    task.advance(1)
    finally:
        for forward in forwards.values():
            forward.close()
    return LatencyComparison(times, timing.batch_size, timing.resolution, used_threads,
                             str(torch.device(timing.device)), paired, backend=timing.backend,
                             memory_format=backend.memory_format(timing))


@dataclass
class BlockLatency:
    """ΔLat of one block, in percent of the teacher's latency."""

    name: str
    stage: int
    delta_lat: float  # the value used for scoring: pooled over identical blocks, clamped
    delta_lat_raw: float  # this block's own median of paired ratios
    spread: tuple[float, float]  # inter-quartile range of the paired ratios, percent
    clamped: bool = False


@dataclass
class BlockLatencyProfile:
    """The latency phase of a run: ΔLat of every candidate block, and the cut of dropping them all."""

    FILE = "latency.json"
    teacher_ms: float
    blocks: list[BlockLatency]
    all_dropped_cut_percent: float  # the measured cut with every candidate dropped
    backend: str = "torch"  # the runtime the blocks were timed on (dfpractise.backends)
    profile: str = "variants"  # how: shares inside the teacher's forward (hooks) or pruned copies (variants)

    def by_name(self) -> dict[str, BlockLatency]:
        return {b.name: b for b in self.blocks}

    def to_json(self) -> dict[str, Any]:
        return {"teacher_ms": self.teacher_ms, "all_dropped_cut_percent": self.all_dropped_cut_percent,
                "backend": self.backend, "profile": self.profile, "blocks": [{**asdict(b), "spread": list(b.spread)} for b in self.blocks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BlockLatencyProfile":
        blocks = [BlockLatency(**{**b, "spread": tuple(b["spread"])}) for b in data["blocks"]]
        return cls(float(data["teacher_ms"]), blocks, float(data["all_dropped_cut_percent"]),
                   str(data.get("backend", "torch")), str(data.get("profile", "variants")))


PROFILES: tuple[str, ...] = ("auto", "hooks", "variants")
"""How ``profile_blocks`` times the candidates (``latency.profile``); ``auto``: hooks where they work."""


def resolve_profile(method: str, timing: Timing) -> str:
    """The profile ``method`` means for ``timing``: ``auto`` is hooks on eager PyTorch, else variants."""
    if method not in PROFILES:
        raise ConfigError(f"latency.profile must be one of {', '.join(PROFILES)}, got {method!r}")
    if method == "auto":
        return "hooks" if timing.backend == "torch" else "variants"
    if method == "hooks" and timing.backend != "torch":
        raise ConfigError(f"latency.profile 'hooks' times blocks inside an eager PyTorch forward; with the "
                          f"{timing.backend} backend use profile 'variants' (or 'auto')")
    return method

HOOKED_ROUNDS = 3
"""Teacher forwards per timing round of the ``hooks`` profile (they are cheap: one model, no copies)."""


def profile_blocks(
    model: nn.Module,
    blocks: list,
    timing: Timing,
    *,
    pool_identical: bool = True,
    progress: Progress | None = None,
    method: str = "auto",
) -> BlockLatencyProfile:
    """Measure ΔLat(b) for every candidate block against the teacher.

    ``hooks`` (``auto`` on eager PyTorch): every candidate is timed inside the teacher's own
    forwards, from a hook before it runs to a hook after, and ΔLat(b) is its share of that
    forward. All blocks are timed in the same forwards, so machine noise moves them together, the
    shares add up by construction, and it costs ``HOOKED_ROUNDS x repeats`` teacher forwards.
    ``variants``: each candidate is the real pruned network (built and discarded one at a time so
    memory stays flat), timed in rounds bracketed by teacher forwards; it sees what a share cannot
    (a runtime fusing across blocks), and is the only way on other backends.

    Either way the cut of dropping every candidate is measured on the pruned network. Blocks with
    identical structure in the same stage do identical work, so with ``pool_identical`` their
    per-round ratios are pooled and share one median: this removes most of the noise that would
    otherwise reorder them. A saving that is near zero or negative is clamped to a small positive
    floor so that it cannot blow up or flip a score; the record says so.
    """
    from .models.blocks import drop_blocks

    method = resolve_profile(method, timing)
    progress = progress or Progress()
    backend = create_backend(timing.backend)  # one for all variants: the teacher is prepared once
    ratios: dict[str, list[float]] = {}
    teacher_times: list[float] = []
    whole = [b.name for b in blocks if getattr(b, "part", None) is None]  # a block's branches go with it
    variants = [("<all>", whole)] if method == "hooks" else [(b.name, [b.name]) for b in blocks] + [("<all>", whole)]
    with progress.task("Timing blocks", total=len(variants) + (1 if method == "hooks" else 0)) as task:
        if method == "hooks":
            shares, forwards = hooked_shares(model, [b.name for b in blocks], timing, backend)
            ratios.update(shares)
            teacher_times.extend(forwards)
            task.advance(1, block="teacher")
        for name, dropped in variants:
            comparison = compare_latency({"teacher": model, name: drop_blocks(model, dropped)}, timing,
                                         backend=backend)
            ratios[name] = [
                (ref - t) / ref for ref, t in zip(comparison.paired[name], comparison.times[name], strict=True)
            ]
            teacher_times.extend(comparison.times["teacher"])
            task.advance(1, block=name)
    groups: dict[tuple, list[str]] = {}
    for block in blocks:
        key = _signature(model, block) if pool_identical else (block.name,)
        groups.setdefault(key, []).append(block.name)
    raw = {b.name: 100.0 * statistics.median(ratios[b.name]) for b in blocks}
    used: dict[str, float] = {}
    spreads: dict[str, tuple[float, float]] = {}
    for names in groups.values():
        pooled = sorted(r for n in names for r in ratios[n])
        for n in names:
            used[n] = 100.0 * statistics.median(pooled)
            spreads[n] = (100.0 * _quantile(pooled, 0.25), 100.0 * _quantile(pooled, 0.75))
    positive = [v for v in used.values() if v > 0]
    floor = max(0.1 * statistics.median(positive), 1e-3) if positive else 1e-3
    records = [
        BlockLatency(
            name=b.name,
            stage=b.stage,
            delta_lat=max(used[b.name], floor),
            delta_lat_raw=raw[b.name],
            spread=spreads[b.name],
            clamped=used[b.name] < floor,
        )
        for b in blocks
    ]
    all_dropped = 100.0 * statistics.median(ratios["<all>"])
    return BlockLatencyProfile(1000.0 * statistics.median(teacher_times), records, all_dropped_cut_percent=all_dropped,
                               backend=timing.backend, profile=method)


def hooked_shares(model: nn.Module, names: list[str], timing: Timing,
                  backend: "Backend | None" = None) -> tuple[dict[str, list[float]], list[float]]:
    """Each named module's share of the model's forward, per forward, timed by hooks inside it;
    and the forwards' times (seconds).

    A module called several times in one forward counts all its calls. On a GPU the clock reads
    after a synchronisation, so a share is the module's kernels, not their launch.
    """
    backend = backend or create_backend(timing.backend)
    device = torch.device(timing.device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return timing.clock()

    x = backend.batch(timing)
    forward = backend.forward(model, x, timing)
    spent: dict[str, float] = dict.fromkeys(names, 0.0)
    started: dict[str, float] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, clock())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, n=name: spent.__setitem__(n, spent[n] + clock() - started[n])))
    shares: dict[str, list[float]] = {n: [] for n in names}
    forwards: list[float] = []
    try:
        with backend.running(timing):
            for _ in range(timing.warmup):
                forward(x)
            for _ in range(HOOKED_ROUNDS * timing.repeats):
                spent.update(dict.fromkeys(names, 0.0))
                start = clock()
                forward(x)
                total = clock() - start
                forwards.append(total)
                for n in names:
                    shares[n].append(spent[n] / total if total > 0 else 0.0)
    finally:
        for handle in handles:
            handle.remove()
        forward.close()
    return shares, forwards


def _signature(model: nn.Module, block) -> tuple:
    """Blocks (or branches) of one stage that do identical work: same type, same parameter shapes."""
    module = model.get_submodule(block.name)
    shapes = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    return (block.stage, block.part, type(module).__name__, shapes)


def cut_measure(model: nn.Module, timing: Timing, progress: Progress | None = None):
    """A ``selection.Measure``: the measured cut of dropping blocks from ``model``, paired against it."""
    from .models.blocks import drop_blocks
    from .selection import MeasuredCut

    backend = create_backend(timing.backend)

    def measure(blocks: list[str], rounds: int = 1) -> MeasuredCut:
        comparison = compare_latency({"teacher": model, "pruned": drop_blocks(model, blocks)}, timing.longer(rounds),
                                     progress=progress, description="Measuring selection", backend=backend)
        median, q25, q75 = comparison.reduction("pruned", "teacher")
        return MeasuredCut(median, (q25, q75), list(blocks))

    return measure
