"""Does ``dfpractise latency`` in a fresh process read the cut the run verified? (issue: faster and steadier)

Takes a finished run folder, reads the cut its run verified, then times the same pair
(``dfpractise latency RUN --json``) in ``--processes`` fresh processes, each twice in a row: with
the C-heap thresholds fixed before timing (``dfpractise.allocator``, what every measurement does)
and with that step switched off, as before the fix.

    python -m benchmarks.latency_agreement runs/default
    python -m benchmarks.write_benchmarks

Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import engine_grid

ROOT = Path(__file__).resolve().parents[1]
UNFIXED = "import dfpractise.backends as b; b.steady_allocator = lambda: False; "
LATENCY = ("import sys; from dfpractise.cli import main; "
           "sys.argv = ['dfpractise', 'latency', sys.argv[1], '--json']; main()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latency_agreement.json")
    args = parser.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    env = {**os.environ}
    env.setdefault("DFPRACTISE_ASSETS", str(ROOT.parent / "shared" / "assets"))
    readings: dict[str, list[dict]] = {"fixed": [], "unfixed": []}
    for _ in range(args.processes):
        for name, prefix in (("fixed", ""), ("unfixed", UNFIXED)):
            done = subprocess.run([sys.executable, "-c", prefix + LATENCY, str(args.run_dir)], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"dfpractise latency failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout)
            readings[name].append({k: result[k] for k in ("reduction", "reduction_spread", "teacher_ms", "pruned_ms")})
            print(name, readings[name][-1], flush=True)
    record = {
        "run": str(args.run_dir), "run_reduction": report["latency"]["reduction"],
        "run_teacher_ms": report["teacher"]["latency_ms"], "run_pruned_ms": report["pruned"]["latency_ms"],
        "readings": readings, "date": engine_grid.summarise(report, 0)["date"], "machine": engine_grid.machine(),
        "commit": engine_grid.commit(), "command": f"python -m benchmarks.latency_agreement {args.run_dir}",
    }
    engine_grid.save_results(record, args.results)


def section(record: dict) -> list[str]:
    """The BENCHMARKS.md lines: the run's cut beside each fresh process's, with and without the fix."""
    if not record:
        return []
    lines = [
        "## One pair, two measurements: the run against `dfpractise latency`",
        "",
        f"The run `{record['run']}` verified a {100 * record['run_reduction']:.1f}% cut (teacher "
        f"{record['run_teacher_ms']:.1f} ms, pruned {record['run_pruned_ms']:.1f} ms at batch 64). The same pair "
        "timed by `dfpractise latency` in fresh processes, with the C heap's thresholds fixed before timing (as "
        "every measurement now does) and without (as before):",
        "",
        f"Machine: {record['machine']}. Date: {record['date']}, commit `{record['commit']}`. Command: "
        f"`{record['command']}`; raw results `benchmarks/results/latency_agreement.json`.",
        "",
        "| process | thresholds | measured cut | teacher (ms) | pruned (ms) | minus the run's cut |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("fixed", "unfixed"):
        for i, reading in enumerate(record["readings"][name], 1):
            q25, q75 = reading["reduction_spread"]
            lines.append(f"| {i} | {name} | {100 * reading['reduction']:.1f}% [{100 * q25:.1f}, {100 * q75:.1f}] | "
                         f"{reading['teacher_ms']:.1f} | {reading['pruned_ms']:.1f} | "
                         f"{100 * (reading['reduction'] - record['run_reduction']):+.1f} |")
    return lines


if __name__ == "__main__":
    main()
