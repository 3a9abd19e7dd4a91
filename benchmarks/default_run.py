"""Time the default job (`make run`: recipes/default.yaml) from nothing, as a new user would run it.

Runs `dfpractise run --recipe recipes/default.yaml` in a fresh run folder with an empty synthetic
cache (so synthesis is really done), records the wall time of the whole command, the report's
phases and the teacher-vs-compressed table, and saves them to benchmarks/results/default_run.json.

    python -m benchmarks.default_run
    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import engine_grid

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    out = ROOT / "runs" / "bench-default"
    cache = ROOT / "runs" / "bench-default-cache"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "DFPRACTISE_CACHE": str(cache)}
    env.setdefault("DFPRACTISE_ASSETS", str(ROOT.parent / "shared" / "assets"))
    script = Path(sys.executable).parent / "dfpractise"  # the console script pip installed beside python
    command = [str(script), "run", "--recipe", "recipes/default.yaml", "--out", str(out)]
    commit = engine_grid.commit()
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"default run failed ({finished.returncode}):\n{finished.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    path = ROOT / "benchmarks" / "results" / "default_run.json"
    results = engine_grid.load_results(path)
    results["runs"]["default"] = {
        "command": "dfpractise run --recipe recipes/default.yaml --out runs/bench-default",
        "wall_seconds": round(wall, 1),
        "printed_table": finished.stdout,
        "tiny_set": report.get("tiny_set"),
        **engine_grid.summarise(report, wall),
        "commit": commit,
    }
    engine_grid.save_results(results, path)
    print(finished.stdout)
    print(f"default job: {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
