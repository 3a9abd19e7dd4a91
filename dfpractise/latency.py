"""Measured latency: interleaved rounds, medians of paired ratios.

These machines are noisy (the same forward varies by 10% run to run), so models being compared
are timed in the same rounds, one forward each per round, in a rotating order; a reduction is the
median over rounds of the per-round ratio, and its spread is the inter-quartile range of those
ratios. Always eval mode and no grad: a train-mode forward would change BatchNorm statistics.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch import nn

from .progress import Progress


@dataclass
class LatencyComparison:
    """Per-round forward times (seconds) of several models measured together."""

    times: dict[str, list[float]] = field(default_factory=dict)
    batch_size: int = 0
    resolution: int = 0
    threads: int = 0
    device: str = "cpu"

    def median_ms(self, name: str) -> float:
        return 1000.0 * statistics.median(self.times[name])

    def reduction(self, name: str, reference: str) -> tuple[float, float, float]:
        """Median, 25th and 75th percentile of (T_ref - T_name) / T_ref over rounds."""
        ratios = sorted(
            (ref - t) / ref for ref, t in zip(self.times[reference], self.times[name], strict=True)
        )
        return statistics.median(ratios), _quantile(ratios, 0.25), _quantile(ratios, 0.75)


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=4, method="inclusive")[int(q * 4) - 1]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def compare_latency(
    models: Mapping[str, nn.Module],
    batch_size: int,
    resolution: int,
    repeats: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    progress: Progress | None = None,
    description: str = "Timing",
) -> LatencyComparison:
    """Time every model in interleaved rounds on one random batch; models are left in eval mode."""
    device = torch.device(device)
    progress = progress or Progress()
    x = torch.randn(batch_size, 3, resolution, resolution, device=device)
    if channels_last and device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    names = list(models)
    states = {name: _prepare(model, device, channels_last) for name, model in models.items()}
    with torch_threads(threads) as used_threads, torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        _synchronize(device)
        times: dict[str, list[float]] = {name: [] for name in names}
        with progress.task(description, total=repeats) as task:
            for round_index in range(repeats):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    times[name].append(_time_forward(models[name], x, device))
                task.advance(1)
    for name, model in models.items():
        _restore(model, states[name])
    return LatencyComparison(times, batch_size, resolution, used_threads, str(device))


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> bool:
    was_training = model.training
    model.eval().to(device)
    if channels_last and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return was_training


def _restore(model: nn.Module, was_training: bool) -> None:
    model.to(memory_format=torch.contiguous_format)
    model.train(was_training)


def _time_forward(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    model(x)
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    teacher_ms: float
    blocks: list[BlockLatency]
    all_dropped: float  # measured cut, percent, with every candidate dropped
    comparison: LatencyComparison

    def by_name(self) -> dict[str, BlockLatency]:
        return {b.name: b for b in self.blocks}


def profile_blocks(
    model: nn.Module,
    blocks: list,
    batch_size: int,
    resolution: int,
    repeats: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    pool_identical: bool = True,
    progress: Progress | None = None,
) -> BlockLatencyProfile:
    """Measure ΔLat(b) for every candidate block, interleaved with the teacher.

    Candidates are timed as "the teacher's own steps minus b" (no copies of the weights). Blocks
    with identical structure in the same stage do identical work, so with ``pool_identical`` they
    share the median of their measurements: this removes most of the noise that would otherwise
    reorder them. A saving that is near zero or negative is clamped to a small positive floor so
    that it cannot blow up or flip a score; the record says so.
    """
    from .models.blocks import StepsModel

    models: dict[str, nn.Module] = {"teacher": model}
    for block in blocks:
        models[block.name] = StepsModel(model, skip=[block.name])
    models["<all>"] = StepsModel(model, skip=[b.name for b in blocks])
    comparison = compare_latency(
        models, batch_size, resolution, repeats, warmup, threads, device,
        progress=progress, description="Timing blocks",
    )
    raw = {}
    spreads = {}
    for block in blocks:
        median, q25, q75 = comparison.reduction(block.name, "teacher")
        raw[block.name] = 100.0 * median
        spreads[block.name] = (100.0 * q25, 100.0 * q75)
    used = dict(raw)
    if pool_identical:
        groups: dict[tuple, list[str]] = {}
        for block in blocks:
            groups.setdefault(_signature(model, block), []).append(block.name)
        for names in groups.values():
            pooled = statistics.median(raw[n] for n in names)
            for n in names:
                used[n] = pooled
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
    all_dropped = 100.0 * comparison.reduction("<all>", "teacher")[0] if blocks else 0.0
    return BlockLatencyProfile(comparison.median_ms("teacher"), records, all_dropped, comparison)


def _signature(model: nn.Module, block) -> tuple:
    module = model.get_submodule(block.name)
    shapes = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    return (block.stage, type(module).__name__, shapes)
