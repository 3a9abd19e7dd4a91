"""Robustness under corruption of the sources benchmark's models (ResNet-56, 30% target).

The teacher and the three pruned models of ``benchmarks/sources_grid.py`` (500 real, 512
synthetic and 1000 out-of-domain images, seed 1, 2000 MiR iterations), scored on
``cifar10-jpeg/val`` clean and under every registered corruption at severities 1-5. Run folders
missing from ``--runs-dir`` are made first, exactly as the sources benchmark makes them.

    python -m benchmarks.robustness_grid
    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import torch

from benchmarks import engine_grid
from benchmarks.sources_grid import RECIPES
from dfpractise.engine import compress
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.report import read_json
from dfpractise.robustness import robustness_of_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "robustness.json"
ORDER = ("real", "synthetic", "ood")


def ensure_run(source: str, runs_dir: Path, progress: Progress) -> Path:
    """The sources benchmark's run folder for ``source`` (seed 1), made or finished if needed."""
    key = f"{source}-s1-it2000"
    out = runs_dir / key
    if (out / "report.json").exists():
        return out
    overrides: dict = {"seed": 1, "recovery": {"iterations": 2000}}
    if source == "synthetic":
        overrides["data"] = {"cache_dir": str(runs_dir / f"{key}-images")}
    config = resolve_config(ROOT / "recipes" / RECIPES[source], overrides)
    print(f"run {key}", flush=True)
    compress(config, out, progress=progress, resume=(out / "recipe.yaml").exists())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-sources")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    assets = Path(os.environ.setdefault("DFPRACTISE_ASSETS", str(ROOT.parent / "shared" / "assets")))
    progress = Progress(quiet=True)
    runs = [ensure_run(source, args.runs_dir, progress) for source in ORDER]
    started = time.perf_counter()
    result, out = robustness_of_runs(runs, assets / "cifar10-jpeg" / "val", args.runs_dir / "robustness",
                                     batch_size=args.batch_size, progress=progress)
    record = {
        **result.to_json(),
        "sources": dict(zip([r.name for r in runs], ORDER)),
        "runs": {r.name: {k: read_json(r / "report.json")[k] for k in ("num_images", "latency", "dropped")}
                 for r in runs},
        "seconds": round(time.perf_counter() - started, 1), "date": dt.date.today().isoformat(),
        "machine": engine_grid.machine(), "commit": engine_grid.commit(), "torch": torch.__version__,
    }
    engine_grid.save_results(record, args.results)
    summary = result.summary()
    for model in result.models:
        print(f"{model}: clean {summary[model]['clean']:.2f}, mean corruption "
              f"{summary[model]['mean_corruption_accuracy']:.2f}", flush=True)


if __name__ == "__main__":
    main()
