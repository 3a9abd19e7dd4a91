"""Wall time of 1 process against 2 under torchrun, for synthesis and for scoring (issue 16).

Each task runs as a worker (this file, ``--worker TASK``) started once as a plain process and
once by ``torch.distributed.run --nproc_per_node 2 --standalone``, one after the other in this
run, both with one thread per process (``OMP_NUM_THREADS=1``, what torchrun gives each of
several workers). The worker times the task alone (teacher and images loaded first) and rank 0
writes it down; the launcher also times the whole command. The ratio is 1-process time over
2-process time, measured in one run. The 2-process result is checked against the 1-process one
(the same PNG bytes; the same costs and ranking), since on a 2-core machine that is the point:
2 CPU processes on 2 cores show correctness, not speed.

    python -m benchmarks.distributed                  # 64 BN-inversion images and 500-image scoring, ResNet-56
    python -m benchmarks.distributed --quick          # a minute's check that it works (not for the record)
    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import engine_grid

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"
MODEL, WEIGHTS = "cifar10_resnet56", "cifar10jpeg-resnet56"
FULL = {"synthesis": {"num_images": 64, "batch_size": 16, "steps": 200},
        "scoring": {"num_images": 500, "iterations": 50}}
QUICK = {"synthesis": {"num_images": 8, "batch_size": 2, "steps": 4},
         "scoring": {"num_images": 32, "iterations": 2}}
TWO = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def worker(task: str, settings: dict, out: Path) -> None:
    """One task under ``distributed.launched``; rank 0 writes ``{seconds, result}`` to ``out``."""
    from dfpractise import distributed

    with distributed.launched("cpu"):
        if task == "synthesis":
            seconds, result = _synthesis(settings, out.parent / "images")
        else:
            seconds, result = _scoring(settings)
        if distributed.is_main():
            out.write_text(json.dumps({"seconds": seconds, "result": result, "world": distributed.world_size()}))


def _synthesis(settings: dict, folder: Path) -> tuple[float, dict]:
    import hashlib

    from dfpractise.engine import load_teacher
    from dfpractise.sources import SourceContext
    from dfpractise.sources.synthetic import SyntheticSource

    teacher, _, sha = load_teacher(MODEL, WEIGHTS)
    source = SyntheticSource(cache_dir=folder, batch_size=settings["batch_size"], steps=settings["steps"])
    context = SourceContext.for_teacher(teacher, teacher_id=sha)
    started = time.perf_counter()
    tiny = source.load(settings["num_images"], context.input_size, 1, context)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in tiny.files)).hexdigest()
    return seconds, {"png_sha256": digest}


def _scoring(settings: dict) -> tuple[float, dict]:
    from dfpractise.augment import normalize, train_augmentation
    from dfpractise.engine import load_teacher, load_tiny_set
    from dfpractise.models.adapter import adapter_for
    from dfpractise.recipe import resolve_config
    from dfpractise.recoverability import RecoverabilityCost, ScoringContext

    config = resolve_config(ROOT / "recipes" / "resnet56-real500.yaml", {
        "seed": 1, "data": {"num_images": settings["num_images"]}, "scoring": {"iterations": settings["iterations"]}})
    teacher, _, sha = load_teacher(config.model, config.weights)
    tiny = load_tiny_set(config, teacher, sha)
    adapter = adapter_for(teacher)
    spec = adapter.spec
    context = ScoringContext(
        teacher=teacher, blocks=adapter.blocks, delta_lat={b.name: 1.0 for b in adapter.blocks}, images=tiny.images,
        augment=train_augmentation(spec.input_size), normalize=lambda x: normalize(x, spec.mean, spec.std),
        config=config.scoring, seed=1, adapter=adapter,
    )
    started = time.perf_counter()
    costs = RecoverabilityCost()(context)
    return time.perf_counter() - started, {"costs": costs}


def launch(task: str, settings: dict, processes: int) -> dict:
    """Run the worker in ``processes`` processes; its timing plus the whole command's wall time."""
    with tempfile.TemporaryDirectory(prefix=f"dfpractise-{task}-{processes}-") as folder:
        out = Path(folder) / "result.json"
        command = [*(TWO if processes == 2 else [sys.executable]), "-m", "benchmarks.distributed", "--worker", task,
                   "--settings", json.dumps(settings), "--worker-out", str(out)]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{task} with {processes} processes failed:\n{done.stderr[-3000:]}")
        measured = json.loads(out.read_text())
    return {"seconds": round(measured["seconds"], 2), "command_seconds": round(wall, 2), "result": measured["result"]}


def agreement(task: str, one: dict, two: dict) -> dict:
    """How the 2-process result compares with the 1-process one."""
    if task == "synthesis":
        return {"same_png_bytes": one["png_sha256"] == two["png_sha256"]}
    a, b = one["costs"], two["costs"]
    worst = max(abs(a[n] - b[n]) / max(abs(a[n]), 1e-12) for n in a)
    return {"max_relative_cost_difference": worst, "same_ranking": sorted(a, key=a.get) == sorted(b, key=b.get),
            "blocks": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(FULL), default=sorted(FULL))
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script works")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=sorted(FULL), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.settings), args.worker_out)
        return

    version = engine_grid.commit()
    results = engine_grid.load_results(args.results, empty={})
    for task in args.tasks:
        settings = (QUICK if args.quick else FULL)[task]
        one = launch(task, settings, 1)
        two = launch(task, settings, 2)
        record = {
            "task": task, "model": MODEL, "settings": settings,
            "one": {k: one[k] for k in ("seconds", "command_seconds")},
            "two": {k: two[k] for k in ("seconds", "command_seconds")},
            "ratio": round(one["seconds"] / two["seconds"], 3),
            "command_ratio": round(one["command_seconds"] / two["command_seconds"], 3),
            "agreement": agreement(task, one["result"], two["result"]),
            "threads_per_process": 1, "date": dt.date.today().isoformat(), "machine": engine_grid.machine(),
            "commit": version, "quick": args.quick,
        }
        results[task] = record
        print(json.dumps(record), flush=True)
        engine_grid.save_results(results, args.results)


if __name__ == "__main__":
    main()
