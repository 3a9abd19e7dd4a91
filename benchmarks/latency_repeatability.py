"""How far apart are repeated latency measurements of the same two networks on this machine?

Loads a finished run, then measures teacher vs pruned ``--times`` times in one process (each a
full paired, interleaved comparison of ``--repeats`` rounds), once more with a fresh, untrained
copy of the pruned architecture beside them, and writes the cuts to JSON.

    python -m benchmarks.latency_repeatability runs/bench/n100-t25-s1-latency-only-it500
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from benchmarks.engine_grid import commit, machine
from dfpractise.latency import Timing, compare_latency
from dfpractise.models.blocks import drop_blocks
from dfpractise.runs import load_run
from synthesizers.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--times", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency_repeatability.json")
    args = parser.parse_args()

    run = load_run(args.run_dir)
    size = run.teacher.model_spec.input_size
    timing = Timing(batch_size=64, resolution=size, repeats=args.repeats)
    cuts = []
    for _ in range(args.times):
        c = compare_latency({"teacher": run.teacher, "pruned": run.pruned}, timing)
        cuts.append(c.reduction("pruned", "teacher")[0])
    fresh = drop_blocks(run.teacher, run.manifest["dropped"])
    c = compare_latency({"teacher": run.teacher, "untrained": fresh, "pruned": run.pruned}, timing)
    result = {
        "run": args.run_dir.name,
        "dropped": run.manifest["dropped"],
        "report_cut": run.report["latency"]["reduction"] if run.report else None,
        "selection_cut": run.report["latency"]["selection_reduction"] if run.report else None,
        "repeated_cuts": cuts,
        "untrained_copy_cut": c.reduction("untrained", "teacher")[0],
        "trained_cut_same_rounds": c.reduction("pruned", "teacher")[0],
        "repeats": args.repeats,
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "commit": commit(),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
