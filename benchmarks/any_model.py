"""Any model: what the adapter finds in each architecture family, and the CIFAR benchmark through
the generic path.

``--table``: for each family (torchvision and timm, random weights, 64 px), the droppable units
found (whole blocks and transformer branches), the discovery time, the measured latency cut with
every block dropped (batch 8), and a tiny end-to-end run's wall time (32 out-of-domain images,
two blocks dropped, 10 scoring and 20 recovery iterations; no accuracy, random weights).

``--resnet56``: the 500-real-image, 30% ResNet-56 benchmark (``recipes/resnet56-real500.yaml``,
seed 1) with the teacher as this project's registered model and as a plain module from a file
(``benchmarks/plain_cifar_resnet.py``, none of the project's protocol), same weights; and the
plain module once more on the registered run's block timings (its ``latency.json`` put in the
new run folder before it starts), so that both paths decide from the same measurements.

    python -m benchmarks.any_model --table
    python -m benchmarks.any_model --resnet56
    python -m benchmarks.write_benchmarks

Rows are saved one at a time; a rerun skips finished rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks import engine_grid
from dfpractise.engine import compress
from dfpractise.latency import BlockLatencyProfile, Timing, compare_latency
from dfpractise.models.adapter import adapter_for
from dfpractise.models.reference import load_model
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.report import read_json
from dfpractise.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "any_model.json"
SIZE = 64


def families(size: int) -> dict[str, dict]:
    """Family name -> builder options at input side ``size`` (also tests/test_any_model.py's list)."""
    return {
        "resnet34": {},  # this project's registered copy of torchvision's
        "mobilenet_v2": {},
        "resnext50_32x4d": {},
        "mobilenet_v3_small": {},
        "efficientnet_b0": {},
        "mnasnet0_5": {},
        "regnet_x_400mf": {},
        "convnext_tiny": {},
        "swin_t": {},
        "vit_b_16": {"image_size": size},
        "timm/resnet18": {},
        "timm/resnetv2_50": {},
        "timm/convnext_atto": {},
        "timm/efficientnet_b0": {},
        "timm/mobilenetv3_small_100": {},
        "timm/regnetx_002": {},
        "timm/vit_tiny_patch16_224": {"img_size": size},
        "timm/deit_tiny_patch16_224": {"img_size": size},
        "timm/swin_tiny_patch4_window7_224": {"img_size": size, "window_size": max(2, size // 16)},
        "timm/mixer_s16_224": {"img_size": size},
        "timm/poolformer_s12": {},
        "timm/levit_128s": {"img_size": size},
    }


TRANSFORMERS = {"swin_t", "vit_b_16", "timm/vit_tiny_patch16_224", "timm/deit_tiny_patch16_224",
                "timm/swin_tiny_patch4_window7_224", "timm/mixer_s16_224", "timm/poolformer_s12", "timm/levit_128s"}
"""The families whose blocks have two branches (attention or token mixing, then an MLP)."""
FAMILIES = families(SIZE)
PLAIN_RESNET56 = "benchmarks/plain_cifar_resnet.py:resnet56"
SHARED_TIMINGS = PLAIN_RESNET56 + " (registered run's timings)"


def stamp() -> dict:
    return {"date": dt.date.today().isoformat(), "machine": engine_grid.machine(), "commit": engine_grid.commit(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def family_row(name: str, options: dict, runs_dir: Path) -> dict:
    torch.manual_seed(0)
    teacher, _, _ = load_model(name, "none", options=options, input_size=SIZE)
    started = time.perf_counter()
    adapter = adapter_for(teacher)
    discovery = time.perf_counter() - started
    whole = [b for b in adapter.blocks if b.part is None]
    every = compare_latency({"teacher": teacher, "pruned": adapter.drop([b.name for b in whole])},
                            Timing(batch_size=8, resolution=SIZE, repeats=10, warmup=2))
    config = resolve_config(None, {
        "model": name, "weights": "none", "model_options": options, "input_size": SIZE, "drop": 2,
        "latency_reduction": None, "seed": 1,
        "data": {"source": "ood", "path": str(assets() / "imagenet-sample-256"), "num_images": 32},
        "latency": {"batch_size": 8, "repeats": 3},
        "scoring": {"iterations": 10, "batch_size": 16}, "recovery": {"iterations": 20, "batch_size": 16},
    })
    started = time.perf_counter()
    report = compress(config, runs_dir / name.replace("/", "-"), overwrite=True).report
    return {
        "family": name, "options": options, "params": sum(p.numel() for p in teacher.parameters()),
        "blocks": len(whole), "branches": len(adapter.blocks) - len(whole), "stages": len(adapter.stages),
        "discovery_seconds": round(discovery, 3), "all_dropped_cut": every.reduction("pruned", "teacher")[0],
        "run_seconds": round(time.perf_counter() - started, 1), "run_cut": report["latency"]["reduction"],
        "run_dropped": report["dropped"], "feature_point": adapter.feature_point.kind
        + (f" {adapter.feature_point.module}" if adapter.feature_point.module else ""), **stamp(),
    }


def resnet56_row(model: str, runs_dir: Path, timings_from: Path | None = None) -> dict:
    overrides = {"model": model, "input_size": 32} if model == PLAIN_RESNET56 else {"model": model}
    config = resolve_config(ROOT / "recipes" / "resnet56-real500.yaml", overrides)
    name = ("plain" if model == PLAIN_RESNET56 else "native") + ("-shared-timings" if timings_from else "")
    out = runs_dir / name
    if timings_from is not None and not out.exists():
        RunFolder.open(out, config).start(config)
        shutil.copy(timings_from / BlockLatencyProfile.FILE, out / BlockLatencyProfile.FILE)
    started = time.perf_counter()
    report = compress(config, out, progress=Progress(quiet=True), resume=out.exists()).report
    costs = read_json(out / "scores.json")["costs"]
    return {
        "model": model, "teacher_top1": report["teacher"]["top1"], "pruned_top1": report["pruned"]["top1"],
        "reduction": report["latency"]["reduction"], "reduction_spread": report["latency"]["reduction_spread"],
        "dropped": report["dropped"], "candidates": [b["name"] for b in report["blocks"]], "costs": costs,
        "phases": report["phases"], "wall_seconds": round(time.perf_counter() - started, 1), **stamp(),
    }


def assets() -> Path:
    return Path(os.environ.get("DFPRACTISE_ASSETS") or ROOT.parent / "shared" / "assets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="the architecture table")
    parser.add_argument("--resnet56", action="store_true", help="ResNet-56 native against a plain module")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-any-model")
    args = parser.parse_args()
    os.environ.setdefault("DFPRACTISE_ASSETS", str(assets()))
    results = engine_grid.load_results(args.results, empty={"families": {}, "resnet56": {}})
    if args.table:
        for name in args.families:
            if name in results["families"]:
                print(f"skip {name} (done)", flush=True)
                continue
            row = family_row(name, FAMILIES[name], args.runs_dir / "families")
            results["families"][name] = row
            engine_grid.save_results(results, args.results)
            print(f"{name}: {row['blocks']} blocks + {row['branches']} branches, discovery "
                  f"{row['discovery_seconds']:.2f} s, all dropped {100 * row['all_dropped_cut']:.1f}%, "
                  f"run {row['run_seconds']:.0f} s", flush=True)
    if args.resnet56:
        native_run = args.runs_dir / "resnet56" / "native"
        for key, model, timings in (("cifar10_resnet56", "cifar10_resnet56", None),
                                    (PLAIN_RESNET56, PLAIN_RESNET56, None),
                                    (SHARED_TIMINGS, PLAIN_RESNET56, native_run)):
            if key in results["resnet56"]:
                print(f"skip {key} (done)", flush=True)
                continue
            row = resnet56_row(model, args.runs_dir / "resnet56", timings)
            results["resnet56"][key] = row
            engine_grid.save_results(results, args.results)
            print(f"{key}: top-1 {row['pruned_top1']:.2f}, cut {100 * row['reduction']:.1f}%, dropped "
                  f"{', '.join(row['dropped'])}, {row['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
