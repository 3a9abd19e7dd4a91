"""The trade-off a user chooses a target from: a sweep of latency targets for ResNet-56.

Teacher cifar10jpeg-resnet56; one ``dfpractise.sweep.sweep`` per tiny set (500 real CIFAR-10
training images, and the data-free source: 512 BN-inversion images), each target its own run
folder, blocks timed and scored once per tiny set, with the filter-pruning baseline (Torch-Pruning,
L1) at each PRACTISE model's measured cut, recovered the same way. CPU latency at batch 64, 32x32;
accuracy on cifar10-jpeg/val.

    python -m benchmarks.sweep                        # both tiny sets, targets 0.1-0.5, baseline, 2000 iterations
    python -m benchmarks.write_benchmarks             # the BENCHMARKS.md section and plots from the JSON

The sweep folders (``--runs-dir``) are resumable: after an interruption the same command continues
where it stopped. When a sweep ends, its ``sweep.json`` goes into the results file under its key,
with date, machine and commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import engine_grid
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sweep.json"
TINY_SETS = {
    "real500": ("resnet56-real500.yaml", 500),
    "synthetic512": ("resnet56-synthetic512.yaml", 512),
}
"""Tiny set name -> (recipe, number of images)."""
TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5)


def sweep_key(tiny_set: str, iterations: int, seed: int) -> str:
    return f"{tiny_set}-s{seed}-it{iterations}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-sets", nargs="+", choices=sorted(TINY_SETS), default=list(TINY_SETS))
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recovery-iterations", type=int, default=2000)
    parser.add_argument("--no-baseline", action="store_true", help="PRACTISE only, without filter pruning")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more settings for a quick look, e.g. data.eval_path=DIR latency.repeats=2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-sweep")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    engine_grid.CODE_VERSION = engine_grid.commit()
    results = engine_grid.load_results(args.results, empty={"sweeps": {}})
    for tiny_set in args.tiny_sets:
        recipe, num_images = TINY_SETS[tiny_set]
        key = sweep_key(tiny_set, args.recovery_iterations, args.seed)
        out = args.runs_dir / key
        overrides: dict = {"seed": args.seed, "data": {"num_images": num_images},
                           "recovery": {"iterations": args.recovery_iterations}}
        if tiny_set.startswith("synthetic"):  # the images stay with the sweep, made once for every target
            overrides["data"]["cache_dir"] = str(args.runs_dir / f"{key}-images")
        for pair in args.overrides:
            _set(overrides, pair)
        config = resolve_config(ROOT / "recipes" / recipe, overrides)
        print(f"sweep {key}: targets {', '.join(f'{t:g}' for t in sorted(args.targets))} -> {out}", flush=True)
        started = time.perf_counter()
        result = sweep(config, args.targets, out, baseline=None if args.no_baseline else "filter-pruning",
                       progress=Progress(quiet=args.quiet))
        results["sweeps"][key] = {
            **result.to_json(), "tiny_set": tiny_set, "out": str(out),
            "wall_seconds": round(time.perf_counter() - started, 1), "date": dt.date.today().isoformat(),
            "machine": engine_grid.machine(), "commit": engine_grid.CODE_VERSION, "torch": torch.__version__,
            "command": "python -m benchmarks.sweep " + shlex.join(sys.argv[1:]),
        }
        engine_grid.save_results(results, args.results)
        for point in result.points:
            cut = f"{100 * point.measured_cut:.1f}%" if point.measured_cut is not None else point.status
            top1 = f"{point.top1:.2f}" if point.top1 is not None else "-"
            print(f"  {point.method} {100 * point.target:g}%: cut {cut}, top-1 {top1}", flush=True)


def _set(tree: dict, pair: str) -> None:
    """``a.b=VALUE`` into a nested dict, the value read as a recipe reads it."""
    from dfpractise.recipe import read_yaml

    key, _, value = pair.partition("=")
    *parents, name = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[name] = read_yaml(value)


if __name__ == "__main__":
    main()
