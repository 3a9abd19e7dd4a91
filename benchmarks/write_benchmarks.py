"""Write BENCHMARKS.md from the JSON results of the benchmark scripts (nothing is typed by hand).

    python benchmarks/write_benchmarks.py
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "engine.json"
OUT = ROOT / "BENCHMARKS.md"
SCORER_NAMES = {"recoverability": "PRACTISE (recoverability)", "random": "random blocks", "latency-only": "latency-only"}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def engine_section(runs: dict) -> list[str]:
    if not runs:
        return ["No engine runs recorded yet."]
    any_run = next(iter(runs.values()))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs.values():
        groups[(run["num_images"], run["target"], run["recovery_iterations"], run["scorer"])].append(run)
    dates = sorted({r["date"] for r in runs.values()})
    lines = [
        "## PRACTISE on real few-shot data (ResNet-56, CIFAR-10)",
        "",
        f"Teacher `cifar10jpeg-resnet56` (top-1 {any_run['teacher_top1']:.2f}% on `cifar10-jpeg/val`, 5,000 images); "
        "tiny sets drawn at random from `cifar10-jpeg/train`; MiR recovery; CPU latency at batch 64, 32x32, "
        "eval mode, measured in the same process as the teacher's (median of paired, interleaved ratios; "
        "IQR in brackets).",
        "",
        f"Machine: {any_run['machine']}. Dates: {', '.join(dates)}.",
        "Command: `python benchmarks/engine_grid.py --grid headline` and `--grid small`, then "
        "`python benchmarks/write_benchmarks.py`. Raw results: `benchmarks/results/engine.json`.",
        "",
        "| images | target | recovery iters | scorer | runs (seeds) | top-1 pruned | top-1 drop (points) | measured cut % | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (num_images, target, iterations, scorer), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], list(SCORER_NAMES).index(kv[0][3]))):
        seeds = ",".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"]))
        cut = mean_std([100 * r["reduction"] for r in group])
        if len(group) == 1:
            q25, q75 = group[0]["reduction_spread"]
            cut += f" [{100 * q25:.1f}, {100 * q75:.1f}]"
        lines.append(
            f"| {num_images} | {int(round(100 * target))}% | {iterations} | {SCORER_NAMES.get(scorer, scorer)} | "
            f"{len(group)} ({seeds}) | {mean_std([r['pruned_top1'] for r in group])} | "
            f"{mean_std([r['drop_top1'] for r in group])} | {cut} | {mean_std([r['wall_seconds'] for r in group])} |"
        )
    lines += ["", "Phase wall times of each run (seconds; latency and scoring are 0 where a run reused "
              "the timings and scores of an earlier run in the same process), and the commit it measured:", "",
              "| run | latency | scoring | selection | recovery | evaluation | total | commit |",
              "|---|---|---|---|---|---|---|---|"]
    for key, run in sorted(runs.items()):
        p = run["phases"]
        lines.append(
            f"| {key} | {p.get('latency', 0):.0f} | {p.get('scoring', 0):.0f} | {p.get('selection', 0):.0f} | "
            f"{p.get('recovery', 0):.0f} | {p.get('evaluation', 0):.0f} | {p.get('total', 0):.0f} | "
            f"`{run.get('commit', '?')}` |"
        )
    lines += ["", "Blocks dropped:", ""]
    for key, run in sorted(runs.items()):
        lines.append(f"- {key}: {', '.join(run['dropped'])}")
    return lines


def main() -> None:
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else {}
    notes_path = ROOT / "benchmarks" / "NOTES.md"
    lines = [
        "# Benchmarks",
        "",
        "Every figure below is written by `benchmarks/write_benchmarks.py` from JSON that the scripts in "
        "`benchmarks/` produce; rerun them to reproduce. Speed is always a ratio measured within one run.",
        "",
        *engine_section(runs),
    ]
    if notes_path.exists():
        lines += ["", notes_path.read_text().strip()]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
