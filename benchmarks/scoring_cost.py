"""What PRACTISE's cheap recoverability scoring costs, and whether it ranks blocks like the reference.

The reference protocol (PRACTISE.md section 3) fits the adaptors of each block for 1000
iterations at batch 64. This project's default fits them for 50 iterations at batch 32 on a cache
of 4 augmented views. Both run here through the same ``RecoverabilityCost`` on the same teacher
and tiny set; the reference gets 16 cached views (closer to fresh augmentation every step) and
its frozen-prefix activations cached too, which only makes it cheaper than a literal
implementation, so the speed-up reported is a lower bound.

Reported: wall time of each, their ratio, and Spearman's rank correlation of the two block
rankings (by cost, and by cost per ΔLat when a run's block latencies are given). The reference is
saved block by block: an interrupted run continues where it stopped.

    python -m benchmarks.scoring_cost                    # 500 real images, seed 1
    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import engine_grid
from dfpractise.augment import normalize, train_augmentation
from dfpractise.engine import load_teacher, load_tiny_set
from dfpractise.models.blocks import find_blocks
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.recoverability import RecoverabilityCost, ScoringContext

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"iterations": 1000, "batch_size": 64, "views": 16}
RESULTS = ROOT / "benchmarks" / "results" / "scoring_cost.json"


def rank_agreement(a: dict[str, float], b: dict[str, float], k: int = 8) -> dict:
    """Spearman's rho of two block rankings, and how many of each one's k cheapest blocks agree."""
    from scipy.stats import spearmanr

    names = list(a)
    rho = spearmanr([a[n] for n in names], [b[n] for n in names]).statistic
    cheapest = lambda costs: set(sorted(names, key=costs.__getitem__)[:k])  # noqa: E731
    return {"spearman": float(rho), "top_k": k, "top_k_overlap": len(cheapest(a) & cheapest(b))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--delta-lat-from", type=Path, default=None,
                        help="a run folder's report.json whose block ΔLat ranks blocks by cost per ΔLat too")
    args = parser.parse_args()

    engine_grid.CODE_VERSION = engine_grid.commit()
    config = resolve_config(ROOT / "recipes" / "resnet56-real500.yaml",
                            {"seed": args.seed, "data": {"num_images": args.num_images}})
    teacher, _, sha = load_teacher(config.model, config.weights)
    cfg = teacher.model_spec
    progress = Progress(quiet=not sys.stdout.isatty())
    tiny = load_tiny_set(config, teacher, sha, progress)
    blocks = find_blocks(teacher, cfg.input_size)

    def context(scoring) -> ScoringContext:
        return ScoringContext(
            teacher=teacher, blocks=blocks, delta_lat={b.name: 1.0 for b in blocks}, images=tiny.images,
            augment=train_augmentation(cfg.input_size), normalize=lambda x: normalize(x, cfg.mean, cfg.std),
            config=scoring, seed=args.seed, progress=progress,
        )

    results = engine_grid.load_results(args.results, empty={})
    key = f"n{args.num_images}-s{args.seed}"
    record = results.setdefault(key, {"num_images": args.num_images, "seed": args.seed, "blocks": len(blocks)})
    stamp = lambda: {"date": dt.date.today().isoformat(), "machine": engine_grid.machine(),  # noqa: E731
                     "commit": engine_grid.CODE_VERSION, "threads": torch.get_num_threads()}

    if "cheap" not in record:
        started = time.perf_counter()
        costs = RecoverabilityCost()(context(config.scoring))
        record["cheap"] = {"settings": config.scoring.model_dump(), "costs": costs,
                           "seconds": round(time.perf_counter() - started, 1), **stamp()}
        engine_grid.save_results(results, args.results)
    print(f"default scoring: {record['cheap']['seconds']:.0f} s", flush=True)

    reference = record.setdefault("reference", {"settings": {}, "costs": {}, "block_seconds": {}})
    reference["settings"] = config.scoring.replace(**REFERENCE).model_dump()
    reference.update(stamp())

    fitted_now: list[float] = []

    def save_block(name: str, cost: float, seconds: float) -> None:
        reference["costs"][name] = cost
        reference["block_seconds"][name] = round(seconds, 2)
        fitted_now.append(seconds)
        engine_grid.save_results(results, args.results)
        print(f"reference {name}: cost {cost:.5f}, {seconds:.0f} s", flush=True)

    started = time.perf_counter()
    RecoverabilityCost(done=reference["costs"], on_block=save_block)(
        context(config.scoring.replace(**REFERENCE)))
    if fitted_now:  # the views and activations are cached once per call: count that once
        reference["cache_seconds"] = round(time.perf_counter() - started - sum(fitted_now), 1)
    reference["seconds"] = round(reference.get("cache_seconds", 0.0) + sum(reference["block_seconds"].values()), 1)
    agreement = rank_agreement(record["cheap"]["costs"], reference["costs"])
    if args.delta_lat_from is not None:
        report = json.loads(args.delta_lat_from.read_text())
        delta = {b["name"]: b["delta_lat"] for b in report["blocks"]}
        per_lat = lambda costs: {n: c / delta[n] for n, c in costs.items()}  # noqa: E731
        agreement["per_delta_lat"] = rank_agreement(per_lat(record["cheap"]["costs"]), per_lat(reference["costs"]))
    record["agreement"] = agreement
    record["speedup"] = round(reference["seconds"] / record["cheap"]["seconds"], 2)
    engine_grid.save_results(results, args.results)
    print(f"reference {reference['seconds']:.0f} s, {record['speedup']:.1f}x the default; "
          f"Spearman rho {agreement['spearman']:.3f}", flush=True)


if __name__ == "__main__":
    main()
