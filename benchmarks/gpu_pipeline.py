"""The PRACTISE pipeline timed on a GPU: an ImageNet-sized ResNet-34 at batch 64, 224x224.

What it answers: how long each phase of ``compress`` takes on an accelerator for a network of the
size users bring, and what the cheap recoverability scoring saves there against the reference
protocol (1000 adaptor iterations per block at batch 64, as in ``scoring_cost.py``).

The teacher has random weights (seeded), with BatchNorm statistics re-estimated on the tiny set:
accuracy is not measured, only time, so no ImageNet weights are needed. The tiny set is drawn
from a folder of images (``--images``, by default the ImageNet sample images of the asset
mirror) through the ``ood`` source, as a user would pass one.

Each invocation appends one measurement to ``--results``, and each finished part is written at
once, so a run cut short keeps what it measured. The reference scoring fits every block;
``--reference one-per-stage`` fits one block a stage, for slower devices, and extrapolates the
total stage by stage (the record says so).

    python -m benchmarks.gpu_pipeline --device cuda --results benchmarks/results/gpu_pipeline.json
    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import engine_grid
from benchmarks.scoring_cost import REFERENCE, rank_agreement
from dfpractise.augment import normalize, train_augmentation
from dfpractise.config import DataConfig, LatencyConfig, RecoveryConfig, RunConfig, ScoringConfig
from dfpractise.engine import compress, load_tiny_set
from dfpractise.models import create_model
from dfpractise.models.blocks import find_blocks
from dfpractise.progress import Progress
from dfpractise.recoverability import RecoverabilityCost, ScoringContext

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_pipeline.json"


def device_info(device: torch.device) -> dict:
    """What the timings ran on: the accelerator by name, and the library versions that drive it."""
    info = {"device": str(device), "torch": torch.__version__, "host": engine_grid.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


def run_config(args) -> RunConfig:
    return RunConfig(
        model=args.model, weights=None, latency_reduction=args.target, seed=args.seed, device=args.device,
        data=DataConfig(source="ood", path=str(args.images), num_images=args.num_images),
        latency=LatencyConfig(batch_size=args.batch_size, resolution=args.resolution),
        scoring=ScoringConfig(iterations=args.scoring_iterations),
        recovery=RecoveryConfig(iterations=args.recovery_iterations),
    )


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Re-estimate BatchNorm statistics of a randomly initialised network on the tiny set.

    With random weights and default statistics, activations grow block after block until feature
    MSEs overflow and every adaptor fit stops at its first step; statistics of real inputs bring
    each layer back to the unit scale a trained network has, so every phase does its full work.
    """
    cfg = model.model_spec
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over all batches
    model.train().to(device)
    with torch.no_grad():
        for chunk in images.split(batch_size):
            model(normalize(chunk.to(device), cfg.mean, cfg.std))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


def time_pipeline(config: RunConfig, teacher: torch.nn.Module, progress: Progress) -> dict:
    """``compress`` end to end (no evaluation: random weights have no accuracy to keep)."""
    started = time.perf_counter()
    report = compress(config, teacher=teacher, progress=progress).report
    return {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "phases": report["phases"],
        "teacher_ms": report["teacher"]["latency_ms"],
        "pruned_ms": report["pruned"]["latency_ms"],
        "reduction": report["latency"]["reduction"],
        "reduction_spread": report["latency"]["reduction_spread"],
        "speedup": report["latency"]["speedup"],
        "dropped": report["dropped"],
        "blocks": [{"name": b["name"], "delta_lat": b["delta_lat"], "recoverability": b["recoverability"]}
                   for b in report["blocks"]],
        "teacher_macs": report["teacher"]["macs"], "pruned_macs": report["pruned"]["macs"],
        "recovery_final_loss": report["recovery"]["final_loss"],
    }


def time_scoring(config: RunConfig, teacher, progress: Progress, record: dict, save, all_blocks: bool,
                 reference_iterations: int) -> None:
    """Default scoring against the reference protocol, through the same scorer on the same images."""
    tiny = load_tiny_set(config, teacher, progress=progress)
    cfg = teacher.model_spec
    blocks = find_blocks(teacher, cfg.input_size)
    device = torch.device(config.device)

    def context(scoring, only=None) -> ScoringContext:
        return ScoringContext(
            teacher=teacher, blocks=only or blocks, delta_lat={b.name: 1.0 for b in blocks}, images=tiny.images,
            augment=train_augmentation(cfg.input_size), normalize=lambda x: normalize(x, cfg.mean, cfg.std),
            config=scoring, seed=config.seed, device=device, progress=progress,
        )

    started = time.perf_counter()
    cheap = RecoverabilityCost()(context(config.scoring))
    record["cheap"] = {"settings": config.scoring.model_dump(), "costs": cheap,
                       "seconds": round(time.perf_counter() - started, 1)}
    save()
    print(f"default scoring of {len(blocks)} blocks: {record['cheap']['seconds']:.1f} s; costs "
          + ", ".join(f"{cost:.3g}" for cost in cheap.values()), flush=True)

    reference_scoring = config.scoring.replace(**{**REFERENCE, "iterations": reference_iterations})
    reference = record["reference"] = {"settings": reference_scoring.model_dump(), "costs": {},
                                       "block_seconds": {}}

    def save_block(name: str, cost: float, seconds: float) -> None:
        reference["costs"][name] = cost
        reference["block_seconds"][name] = round(seconds, 2)
        save()
        print(f"reference {name}: cost {cost:.4g}, {seconds:.1f} s", flush=True)

    fitted = blocks if all_blocks else one_per_stage(blocks)
    started = time.perf_counter()
    RecoverabilityCost(on_block=save_block)(context(reference_scoring, only=fitted))
    reference["cache_seconds"] = round(time.perf_counter() - started - sum(reference["block_seconds"].values()), 1)
    reference["seconds"] = round(reference["cache_seconds"] + extrapolate(reference["block_seconds"], blocks), 1)
    reference["blocks_fitted"] = len(fitted)
    reference["extrapolated"] = len(fitted) < len(blocks)
    record["speedup"] = round(reference["seconds"] / record["cheap"]["seconds"], 2)
    if not reference["extrapolated"]:
        record["agreement"] = rank_agreement(cheap, reference["costs"])
    save()
    print(f"reference scoring: {reference['seconds']:.0f} s"
          + (f" (extrapolated from {len(fitted)} blocks)" if reference["extrapolated"] else "")
          + f", {record['speedup']:.1f}x the default", flush=True)


def one_per_stage(blocks: list) -> list:
    """A block from the middle of each stage: within a stage every candidate's adaptor fit runs
    the same layers (the stage without one block, then the later stages), so one times them all."""
    stages: dict[int, list] = {}
    for block in blocks:
        stages.setdefault(block.stage, []).append(block)
    return [members[len(members) // 2] for members in stages.values()]


def extrapolate(block_seconds: dict[str, float], blocks: list) -> float:
    """Seconds to fit every block, from the fitted ones: each unfitted block costs its stage's mean."""
    stage_of = {b.name: b.stage for b in blocks}
    by_stage: dict[int, list[float]] = {}
    for name, seconds in block_seconds.items():
        by_stage.setdefault(stage_of[name], []).append(seconds)
    return sum(block_seconds.get(b.name, sum(by_stage[b.stage]) / len(by_stage[b.stage])) for b in blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    assets = Path(os.environ.get("DFPRACTISE_ASSETS", ROOT.parent / "shared" / "assets"))
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=Path, default=assets / "imagenet-sample-256")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="latency batch")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--target", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recovery-iterations", type=int, default=RecoveryConfig.iterations)
    parser.add_argument("--scoring-iterations", type=int, default=ScoringConfig.iterations)
    parser.add_argument("--reference-iterations", type=int, default=REFERENCE["iterations"])
    parser.add_argument("--reference", choices=("none", "one-per-stage", "all"), default="all",
                        help="which blocks the 1000-iteration reference scoring fits")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--commit", help="the code version measured, where the tree travelled without git")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no GPU here")
    config = run_config(args)
    torch.manual_seed(args.seed)
    teacher = create_model(args.model)  # random weights, seeded: only time is measured
    calibrate_batchnorm(teacher, load_tiny_set(config, teacher).images, args.batch_size, device)
    progress = Progress(quiet=not sys.stdout.isatty())
    results = engine_grid.load_results(args.results, empty={"runs": []})
    record = {
        "model": args.model, "weights": "random, BatchNorm statistics from the tiny set", "num_images": args.num_images, "target": args.target,
        "batch_size": args.batch_size, "resolution": args.resolution, "seed": args.seed,
        "recovery_iterations": args.recovery_iterations, **device_info(device),
        "date": dt.date.today().isoformat(), "commit": args.commit or engine_grid.commit(),
    }
    results["runs"].append(record)  # each invocation adds a measurement: repeats show the spread
    save = lambda: engine_grid.save_results(results, args.results)  # noqa: E731
    save()
    record["pipeline"] = time_pipeline(config, teacher, progress)
    save()
    pipeline = record["pipeline"]
    print(f"pipeline {pipeline['wall_seconds']:.0f} s; phases {pipeline['phases']}; "
          f"teacher {pipeline['teacher_ms']:.1f} ms, cut {100 * pipeline['reduction']:.1f}%, "
          f"recovery loss {pipeline['recovery_final_loss']}", flush=True)
    if args.reference != "none":
        record["scoring"] = {}
        time_scoring(config, teacher, progress, record["scoring"], save, all_blocks=args.reference == "all",
                     reference_iterations=args.reference_iterations)


if __name__ == "__main__":
    main()
