"""Where selections land under measurement noise, this tree's selection against an earlier one's
(issue: faster and steadier, part 2).

An engine grid is one draw of the machine's noise per run, and 42 runs cannot tell 88% from 92%.
This replays ``select_blocks`` on the block tables of finished grid runs (``latency.json``,
``scores.json`` and the target in ``recipe.yaml``) against a simulated machine: a set's true cut is
the sum of its blocks' single savings, scaled so that dropping all of them cuts what the run
measured; each reading is the true cut times (1 + N(0, sigma / sqrt(rounds))), and with
probability ``busy`` also a spike of 3-8% either way (another process woke up). It counts how often
the true cut of the selected set lands in [target, target + 3 points], for the selection of this
tree and of ``--against`` (a commit, read with ``git show``), on the same seeds. The simulated
machine is kinder than a real one in one way (the true cut is exactly additive after one scale),
so the counts compare selections; the engine grid says where real runs land.

    python -m benchmarks.landing_noise runs/bench-rerun --against 77ae0b8
    python -m benchmarks.write_benchmarks

It times nothing, so it needs no quiet machine (though it takes CPU from a benchmark that times).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import random
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import engine_grid
from dfpractise import selection as current_selection
from dfpractise.recipe import load_recipe
from synthesizers.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "landing_noise.json"
LEVELS = ((0.015, 0.0), (0.025, 0.1), (0.04, 0.2))
"""(relative noise of one timing round, chance of a busy spike): quiet, this machine, busy."""
WINDOW_POINTS = 3.0
"""Where the speed issue asks a measured cut to land: [target, target + 3 points]."""


def selection_at(commit: str) -> ModuleType:
    """``dfpractise/selection.py`` as it was at ``commit``, imported beside the current one."""
    source = subprocess.run(["git", "show", f"{commit}:dfpractise/selection.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    name = f"dfpractise._selection_{commit}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "dfpractise"
    sys.modules[name] = module  # dataclasses look their module up while the source runs
    exec(compile(source, f"{commit}:dfpractise/selection.py", "exec"), module.__dict__)  # noqa: S102
    return module


def load_tables(runs_dir: Path) -> list[dict[str, Any]]:
    """The block tables of every finished run under ``runs_dir`` that selected by a target."""
    tables = []
    for folder in sorted(p for p in runs_dir.iterdir() if (p / "scores.json").exists()):
        target = load_recipe(folder / "recipe.yaml").get("latency_reduction")
        if target is None:
            continue
        latency = json.loads((folder / "latency.json").read_text())
        costs = json.loads((folder / "scores.json").read_text())["costs"]
        tables.append({"run": folder.name, "target": float(target), "latency": latency, "costs": costs})
    return tables


def landing(module: ModuleType, tables: list[dict], sigma: float, busy: float, trials: int) -> dict[str, Any]:
    """How the selections of ``module`` land on ``tables`` under one noise level."""
    inside = below = above = 0
    readings = 0
    for table in tables:
        blocks = table["latency"]["blocks"]
        scores = [module.BlockScore(b["name"], b["stage"], step, b["delta_lat"], float(table["costs"][b["name"]]))
                  for step, b in enumerate(blocks)]
        single = {b["name"]: b.get("delta_lat_raw", b["delta_lat"]) for b in blocks}
        all_dropped = table["latency"]["all_dropped_cut_percent"]
        scale = all_dropped / sum(single.values())
        for trial in range(trials):
            rng = random.Random(f"{table['run']}/{trial}")

            def truth(dropped: list[str]) -> float:
                return scale * sum(single[name] for name in dropped)

            def measure(dropped: list[str], rounds: int = 1) -> Any:
                nonlocal readings
                readings += 1
                cut = truth(dropped) * (1.0 + rng.gauss(0.0, sigma / rounds ** 0.5))
                if rng.random() < busy:
                    cut *= 1.0 + rng.choice((-1.0, 1.0)) * rng.uniform(0.03, 0.08)
                return module.MeasuredCut(cut / 100.0, (cut / 100.0, cut / 100.0), list(dropped))

            chosen = module.select_blocks(scores, measure, target=table["target"], all_dropped_cut_percent=all_dropped)
            over = truth(chosen.dropped) - 100.0 * table["target"]
            inside += 0.0 <= over <= WINDOW_POINTS
            below += over < 0.0
            above += over > WINDOW_POINTS
    total = len(tables) * trials
    return {"inside": inside, "below": below, "above": above, "selections": total,
            "readings_per_selection": readings / total if total else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path, help="finished engine-grid runs (their block tables)")
    parser.add_argument("--against", required=True, help="the commit whose selection to compare with")
    parser.add_argument("--trials", type=int, default=40, help="noise draws per run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    tables = load_tables(args.runs_dir)
    if not tables:
        sys.exit(f"no finished runs with a latency target under {args.runs_dir}")
    selections = {"this tree": current_selection, args.against: selection_at(args.against)}
    levels = []
    for sigma, busy in LEVELS:
        level: dict[str, Any] = {"sigma": sigma, "busy": busy}
        for label, module in selections.items():
            level[label] = landing(module, tables, sigma, busy, args.trials)
            print(f"sigma {sigma} busy {busy} {label}: {level[label]['inside']}/{level[label]['selections']}",
                  flush=True)
        levels.append(level)
    record = {
        "date": dt.date.today().isoformat(), "machine": engine_grid.machine(), "commit": engine_grid.commit(),
        "command": "python -m benchmarks.landing_noise " + shlex.join(sys.argv[1:]), "against": args.against,
        "runs": [t["run"] for t in tables], "trials": args.trials, "levels": levels,
    }
    write_text_atomic(args.results, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.results}", file=sys.stderr)


def section(record: dict) -> list[str]:
    """The BENCHMARKS.md section: landing share per noise level, both selections."""
    if not record:
        return []
    against = record["against"]
    lines = [
        "### Where selections land under simulated noise",
        "",
        f"`select_blocks` replayed on the block tables of {len(record['runs'])} engine-grid runs, "
        f"{record['trials']} noise draws each, against a simulated machine whose cuts add up after one scale "
        "(see the script's docstring): the share of selections whose true cut lands in [target, target + 3]. "
        f"This tree's selection (commit `{record['commit']}`) beside the one of commit `{against}`, same seeds. "
        "It compares selections; it is not a measurement of this machine.",
        "",
        f"Date {record['date']}, {record['machine']}. Command: `{record['command']}`; raw results "
        "`benchmarks/results/landing_noise.json`.",
        "",
        "| noise per round | busy spikes | selection | inside the window | below the target | above the window | readings per selection |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in record["levels"]:
        for label in ("this tree", against):
            row = level[label]
            share = 100.0 * row["inside"] / row["selections"]
            lines.append(
                f"| {100 * level['sigma']:.1f}% | {100 * level['busy']:.0f}% | {label} | "
                f"{row['inside']} of {row['selections']} ({share:.1f}%) | {row['below']} | {row['above']} | "
                f"{row['readings_per_selection']:.1f} |")
    return lines


if __name__ == "__main__":
    main()
