"""Benchmark grid of the PRACTISE engine on real few-shot data (issue: engine end to end).

Teacher cifar10jpeg-resnet56, tiny sets drawn from cifar10-jpeg/train, accuracy on cifar10-jpeg/val,
CPU latency at batch 64, 32x32. Every run goes through ``dfpractise.compress`` with the default
recipe plus the grid's overrides; results are appended to a JSON file one run at a time, so an
interrupted grid continues where it stopped (finished runs are skipped).

    python -m benchmarks.engine_grid --grid headline          # 500 images, 30%, three scorers
    python -m benchmarks.engine_grid --grid small             # 50/100 images, 25%/40%, 3 seeds
    python -m benchmarks.write_benchmarks                     # BENCHMARKS.md from the JSON

Block timings and scores are shared between runs that differ only in target or scorer
(``compress(reuse=...)``): they depend on neither.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import time
from pathlib import Path

from dfpractise.engine import compress
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from synthesizers.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SCORERS = ("recoverability", "random", "latency-only")
CODE_VERSION = "unknown"
GRIDS = {
    "headline": {"num_images": [500], "targets": [0.3], "seeds": [1]},
    "small": {"num_images": [50, 100], "targets": [0.25, 0.4], "seeds": [1, 2, 3]},
}


def run_key(num_images: int, target: float, seed: int, scorer: str, iterations: int) -> str:
    return f"n{num_images}-t{int(round(target * 100))}-s{seed}-{scorer}-it{iterations}"


def commit() -> str:
    """The code version a run measured (with '+dirty' when the tree had uncommitted changes)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"


def load_results(path: Path, empty: dict | None = None) -> dict:
    """The results file, or ``empty`` (default: no runs) when there is none yet."""
    if path.exists():
        return json.loads(path.read_text())
    return empty if empty is not None else {"runs": {}}


def save_results(results: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def summarise(report: dict, wall: float) -> dict:
    return {
        "teacher_top1": report["teacher"]["top1"],
        "pruned_top1": report["pruned"]["top1"],
        "drop_top1": report["teacher"]["top1"] - report["pruned"]["top1"],
        "reduction": report["latency"]["reduction"],
        "reduction_spread": report["latency"]["reduction_spread"],
        "selection_reduction": report["latency"]["selection_reduction"],
        "predicted_reduction": report["latency"].get("predicted_reduction"),
        "teacher_ms": report["teacher"]["latency_ms"],
        "pruned_ms": report["pruned"]["latency_ms"],
        "dropped": report["dropped"],
        "phases": report["phases"],
        "wall_seconds": round(wall, 1),
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "commit": CODE_VERSION,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="headline")
    parser.add_argument("--scorers", nargs="+", default=list(SCORERS))
    parser.add_argument("--seeds", nargs="+", type=int, help="override the grid's seeds")
    parser.add_argument("--num-images", nargs="+", type=int, help="override the grid's tiny-set sizes")
    parser.add_argument("--targets", nargs="+", type=float, help="override the grid's latency targets")
    parser.add_argument("--recovery-iterations", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "engine.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()

    global CODE_VERSION
    CODE_VERSION = commit()  # the code this process imported, not whatever HEAD is when a run ends
    grid = GRIDS[args.grid]
    results = load_results(args.results)
    reuse: dict = {}
    combos = itertools.product(args.num_images or grid["num_images"], args.seeds or grid["seeds"],
                               args.targets or grid["targets"], args.scorers)
    for num_images, seed, target, scorer in combos:
        key = run_key(num_images, target, seed, scorer, args.recovery_iterations)
        if key in results["runs"]:
            print(f"skip {key} (done)", flush=True)
            continue
        config = resolve_config(ROOT / "recipes" / "resnet56-real500.yaml", {
            "latency_reduction": target,
            "seed": seed,
            "data": {"num_images": num_images},
            "scoring": {"scorer": scorer},
            "recovery": {"iterations": args.recovery_iterations},
        })
        print(f"run {key}", flush=True)
        start = time.perf_counter()
        result = compress(config, args.runs_dir / key, progress=Progress(quiet=True), overwrite=True, reuse=reuse)
        results["runs"][key] = {
            "num_images": num_images, "target": target, "seed": seed, "scorer": scorer,
            "recovery_iterations": args.recovery_iterations,
            **summarise(result.report, time.perf_counter() - start),
        }
        save_results(results, args.results)
        summary = results["runs"][key]
        print(f"  top-1 {summary['teacher_top1']:.2f} -> {summary['pruned_top1']:.2f}, "
              f"cut {100 * summary['reduction']:.1f}%, {summary['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
