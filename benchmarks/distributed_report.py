"""The BENCHMARKS.md section for ``distributed.py``: 1 process against 2 under torchrun."""

from __future__ import annotations

TASKS = {
    "synthesis": lambda s: f"BN-inversion synthesis, {s['num_images']} images at 32x32 (batch {s['batch_size']}, "
                           f"{s['steps']} steps)",
    "scoring": lambda s: f"recoverability scoring of every block, {s['num_images']} real images, "
                         f"{s['iterations']} adaptor iterations",
}


def _agreement(task: str, agreement: dict) -> str:
    if task == "synthesis":
        return "same PNG bytes" if agreement["same_png_bytes"] else "**PNG bytes differ**"
    ranking = "same ranking" if agreement["same_ranking"] else "**ranking differs**"
    return f"{ranking} of {agreement['blocks']} blocks, costs within {agreement['max_relative_cost_difference']:.1e} (relative)"


def section(results: dict) -> list[str]:
    records = [r for r in results.values() if not r.get("quick")]
    if not records:
        return []
    lines = [
        "## torchrun: 1 process against 2 (synthesis and scoring)",
        "",
        "Each task timed in one run as a plain process and as `torchrun --nproc_per_node 2 --standalone` "
        "(gloo, one thread per process), the task alone (teacher and images loaded first) and the whole command. "
        "**On a 2-core CPU machine, 2 processes show correctness, not speed**: the ratio says what sharing costs "
        "or saves here, not what N GPUs give.",
        "",
        "Command: `python -m benchmarks.distributed`, then `python -m benchmarks.write_benchmarks`. Raw results: "
        "`benchmarks/results/distributed.json`.",
        "",
        "| task | model | 1 process (s) | 2 processes (s) | ratio 1/2 | whole command 1 / 2 (s) | 2 processes against 1 | date | machine | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, record in sorted(results.items()):
        if record.get("quick"):
            continue
        describe = TASKS.get(task, lambda s: task)(record["settings"])
        lines.append(
            f"| {describe} | {record['model']} | {record['one']['seconds']:.1f} | {record['two']['seconds']:.1f} | "
            f"{record['ratio']:.2f} | {record['one']['command_seconds']:.0f} / {record['two']['command_seconds']:.0f} | "
            f"{_agreement(task, record['agreement'])} | {record['date']} | {record['machine']} | `{record['commit']}` |"
        )
    return lines
