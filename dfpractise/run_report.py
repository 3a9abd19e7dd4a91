"""``report.json`` of a finished run: accuracy, latency, size and compute of teacher and pruned
model, the per-block table, time per phase and the environment.

Assembled here from the phases' typed results; ``report.py`` renders such a dict, and knows
nothing of how it was made.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .complexity import count_macs, count_params
from .config import RunConfig
from .latency import BlockLatencyProfile, LatencyComparison
from .models.adapter import spec_of
from .recoverability import BlockCosts
from .recovery import RecoveryResult
from .selection import Selection

TINY_SET_SUMMARY = ("method", "agreement", "bn_distance", "teacher_confidence", "cache", "generated_batches",
                    "synthesis_seconds")
"""The quality numbers of a synthesised set worth a line in the run report."""


def build_report(config: RunConfig, teacher: nn.Module, weights_ref: str | None, tiny: Any, selection: Selection,
                 final: LatencyComparison, accuracy: dict[str, dict] | None, pruned: nn.Module,
                 latency: BlockLatencyProfile, costs: BlockCosts, recovery: RecoveryResult,
                 phases: dict[str, float]) -> dict[str, Any]:
    from .envinfo import environment_info

    reduction, q25, q75 = final.reduction("pruned", "teacher")
    input_size = spec_of(teacher).input_size

    def side(name: str, model: nn.Module) -> dict[str, Any]:
        acc = (accuracy or {}).get(name, {})
        return {
            "top1": acc.get("top1"),
            "top5": acc.get("top5"),
            "latency_ms": round(final.median_ms(name), 3),
            "params": count_params(model),
            "macs": count_macs(model, input_size),
        }

    blocks = [
        {
            "name": lat.name,
            "stage": lat.stage,
            "delta_lat": round(lat.delta_lat, 3),
            "delta_lat_raw": round(lat.delta_lat_raw, 3),
            "clamped": lat.clamped,
            "recoverability": costs.costs[lat.name],
            "score": costs.costs[lat.name] / lat.delta_lat,
            "dropped": lat.name in selection.dropped,
        }
        for lat in latency.blocks
    ]
    return {
        "model": config.model,
        "weights": weights_ref,
        "source": config.data.source,
        "num_images": len(tiny),
        "skipped_images": tiny.skipped,
        "tiny_set": {k: tiny.report.get(k) for k in TINY_SET_SUMMARY} if tiny.report is not None else None,
        "seed": config.seed,
        "scorer": costs.scorer,
        "recovery": {
            "method": recovery.method,
            "iterations": recovery.iterations,
            "final_loss": recovery.final_loss,
            "resumed_from": recovery.resumed_from,
            "precision": recovery.precision,
            "mix": recovery.mix,
        },
        "target": {"latency_reduction": config.latency_reduction, "drop": config.drop},
        "dropped": selection.dropped,
        "teacher": side("teacher", teacher),
        "pruned": side("pruned", pruned),
        "latency": {
            "reduction": reduction,
            "reduction_spread": [q25, q75],
            "speedup": final.median_ms("teacher") / final.median_ms("pruned"),
            "selection_reduction": selection.measured.reduction,
            "predicted_reduction": selection.predicted,
            "batch_size": final.batch_size,
            "resolution": final.resolution,
            "threads": final.threads,
            "device": final.device,
            "backend": final.backend,
            "memory_format": final.memory_format,
            "repeats": len(final.times["teacher"]),
        },
        "blocks": blocks,
        "phases": phases,
        "environment": environment_info(),
    }
