"""Benchmark of the tiny-set sources (issue: data-free and out-of-domain sources).

Teacher cifar10jpeg-resnet56, latency-reduction target 30%, accuracy on cifar10-jpeg/val, CPU
latency at batch 64. One run per source, each from its shipped recipe, so the table shows what
having no data costs next to 500 real images:

    synthetic  recipes/resnet56-synthetic512.yaml  512 BN-inversion images, no real image anywhere
    ood        recipes/resnet56-ood1000.yaml       1000 ImageNet sample images, labels ignored
    real       recipes/resnet56-real500.yaml       500 real CIFAR-10 training images

    python -m benchmarks.sources_grid                    # all three, seed 1
    python -m benchmarks.sources_grid --sources synthetic --seeds 1 2
    python -m benchmarks.write_benchmarks                # BENCHMARKS.md from the JSON files

Synthetic images are made in a fresh cache folder under the run folder, so the synthesis time in
the table is a real generation, not a cache hit. Results are saved after each run; an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks import engine_grid
from dfpractise.engine import compress
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "synthetic": "resnet56-synthetic512.yaml",
    "ood": "resnet56-ood1000.yaml",
    "real": "resnet56-real500.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--recovery-iterations", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "sources.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-sources")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    engine_grid.CODE_VERSION = engine_grid.commit()
    results = engine_grid.load_results(args.results)
    for source in args.sources:
        for seed in args.seeds:
            key = f"{source}-s{seed}-it{args.recovery_iterations}"
            if key in results["runs"]:
                print(f"skip {key} (done)", flush=True)
                continue
            out = args.runs_dir / key
            cache = args.runs_dir / f"{key}-images"
            shutil.rmtree(cache, ignore_errors=True)
            overrides = {"seed": seed, "recovery": {"iterations": args.recovery_iterations}}
            if source == "synthetic":
                overrides["data"] = {"cache_dir": str(cache)}
            config = resolve_config(ROOT / "recipes" / RECIPES[source], overrides)
            print(f"run {key}", flush=True)
            start = time.perf_counter()
            result = compress(config, out, progress=Progress(quiet=args.quiet), overwrite=True)
            report = result.report
            results["runs"][key] = {
                "source": source, "seed": seed, "recipe": RECIPES[source], "num_images": report["num_images"],
                "recovery_iterations": args.recovery_iterations, "tiny_set": report.get("tiny_set"),
                **engine_grid.summarise(report, time.perf_counter() - start),
            }
            engine_grid.save_results(results, args.results)
            row = results["runs"][key]
            print(f"  top-1 {row['teacher_top1']:.2f} -> {row['pruned_top1']:.2f}, cut {100 * row['reduction']:.1f}%, "
                  f"{row['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
