"""Speed of the 500-image / 30% run, plain against fast settings, phase by phase, in one run.

The run is `recipes/resnet56-real500.yaml` (ResNet-56, 500 real images, 30% target, 2000 MiR
iterations). Two parts, both in this one process, one after the other:

- ``choose``: recovery alone on one fixed selection (the blocks the plain run dropped, same seed,
  same tiny set) with each speed setting (``--variants``: precision x teacher_views). Each model
  is scored on a held-out slice of cifar10-jpeg/train that is disjoint from the tiny set (that is
  what the defaults are chosen on) and on cifar10-jpeg/val (reported, not chosen on).
- ``runs``: the whole command twice from an empty cache, so that latency is really timed: once
  with the plain settings (fp32, teacher every step, blocks timed as pruned variants) and once
  with the fast ones (``--fast-precision``, ``--fast-views``, blocks timed by hooks), phase by
  phase.

    python -m benchmarks.speed
    python -m benchmarks.write_benchmarks

On a GPU (``--device cuda``), the same two parts with every phase on the device; its results go to
their own file (``benchmarks/results/speed_cuda.json``) with the accelerator named in them:

    python -m benchmarks.speed --device cuda --results benchmarks/results/speed_cuda.json

Run it on a quiet machine; the load average before and after each part is recorded with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import engine_grid

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "resnet56-real500.yaml"
HOLDOUT_PER_CLASS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-speed")
    parser.add_argument("--parts", nargs="+", choices=("runs", "choose"), default=["runs", "choose"])
    parser.add_argument("--variants", nargs="+", default=["bf16:0", "fp32:32", "bf16:8", "bf16:32"],
                        help="PRECISION:TEACHER_VIEWS recoveries of the choose part")
    parser.add_argument("--fast-precision", default="auto")
    parser.add_argument("--fast-views", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="where every phase runs (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--commit", help="the code version measured, where the tree travelled without its git "
                        "history (a device machine)")
    args = parser.parse_args()
    engine_grid.CODE_VERSION = args.commit or engine_grid.commit()  # the code this process imported
    results = engine_grid.load_results(args.results, empty={"runs": {}, "choose": {}})
    results["command"] = " ".join(["python -m benchmarks.speed", *sys.argv[1:]])
    if args.device != "cpu":
        from benchmarks.gpu_pipeline import device_info

        results["device"] = device_info(torch.device(args.device))
    plain_dir = args.out / "plain"
    for part in args.parts:
        if part == "runs":
            for name, precision, views, profile in (("plain", "fp32", 0, "variants"),
                                                    ("fast", args.fast_precision, args.fast_views, "hooks")):
                results["runs"][name] = whole_run(args.out / name, precision, views, profile, args.device)
                engine_grid.save_results(results, args.results)
        else:
            results["choose"].update(choose(plain_dir, args.out, args.variants, args.device))
            engine_grid.save_results(results, args.results)
    print(json.dumps(results, indent=2))


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def whole_run(out: Path, precision: str, views: int, profile: str, device: str = "cpu") -> dict:
    """``dfpractise run`` from an empty cache with these speed settings; its report's phases."""
    cache = out.with_name(out.name + "-cache")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "DFPRACTISE_CACHE": str(cache)}
    env.setdefault("DFPRACTISE_ASSETS", str(ROOT.parent / "shared" / "assets"))
    command = [sys.executable, "-m", "dfpractise", "run", "--recipe", str(RECIPE.relative_to(ROOT)),
               "--precision", precision, "--teacher-views", str(views), "--set", f"latency.profile={profile}",
               *(["--device", device] if device != "cpu" else []), "--out", str(out)]
    load_before = load_average()
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({finished.returncode}):\n{finished.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    row = {**engine_grid.summarise(report, wall), "precision": report["recovery"].get("precision"),
           "teacher_views": views, "latency_profile": profile, "load_before": load_before, "load_after": load_average(),
           "command": " ".join(["dfpractise", *command[3:]]), "commit": engine_grid.CODE_VERSION}
    print(f"{out.name}: {wall:.0f} s, top-1 {row['pruned_top1']:.2f}, phases {row['phases']}", flush=True)
    return row


def holdout_slice(tiny_files: list[str], train: Path, out: Path, seed: int = 15) -> Path:
    """A labelled folder of ``HOLDOUT_PER_CLASS`` train images per class, none of them in the tiny set
    (links into ``train``): where settings are chosen, so val stays unseen."""
    used = {Path(f).resolve() for f in tiny_files}
    rng = random.Random(seed)
    return linked_folder(train, out, lambda spare: rng.sample(spare, min(HOLDOUT_PER_CLASS, len(spare))), used)


def linked_folder(train: Path, out: Path, pick, leave_out: set[Path]) -> Path:
    """``out`` made afresh as a labelled folder of links into ``train``: for each class folder (in
    name order), ``pick`` of its images (sorted) that are not in ``leave_out`` (resolved paths)."""
    if out.exists():
        shutil.rmtree(out)
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        spare = sorted(p for p in folder.iterdir() if p.resolve() not in leave_out)
        (out / folder.name).mkdir(parents=True)
        for picked in pick(spare):
            (out / folder.name / picked.name).symlink_to(picked.resolve())
    return out


def choose(plain_dir: Path, out: Path, variants: list[str], device: str = "cpu") -> dict:
    """Recovery alone on the plain run's selection with each speed setting; top-1 on both sets."""
    import dfpractise
    from dfpractise.augment import normalize, train_augmentation
    from dfpractise.engine import load_teacher
    from dfpractise.evaluate import evaluate_models, load_labelled_folder
    from dfpractise.models.adapter import adapter_for
    from dfpractise.progress import Progress
    from dfpractise.recipe import resolve_config
    from dfpractise.recovery import recover
    from dfpractise.sources import RealFolderSource

    config = resolve_config(RECIPE, {})
    report = json.loads((plain_dir / "report.json").read_text())
    teacher, _, _ = load_teacher(config.model, config.weights)
    spec = teacher.model_spec
    tiny = RealFolderSource(config.data.path).load(config.data.num_images, spec.input_size, config.seed)
    holdout = load_labelled_folder(holdout_slice(tiny.files, Path(config.data.path), out / "holdout"), spec.input_size)
    val = load_labelled_folder(config.data.eval_path, spec.input_size)
    quiet = Progress(quiet=True)

    def accuracy(model) -> dict:
        return {name: evaluate_models({"m": model}, data, spec.mean, spec.std, spec.input_size,
                                      device=device, progress=quiet)["m"]["top1"]
                for name, data in (("holdout", holdout), ("val", val))}

    adapter = adapter_for(teacher)
    rows = {"fp32:0": {"precision": "fp32", "teacher_views": 0, "seconds": report["phases"]["recovery"],
                       "top1": accuracy(dfpractise.load(plain_dir)), "from": "the plain run"}}
    for variant in variants:
        precision, views = variant.split(":")
        student = adapter.drop(report["dropped"])
        torch.manual_seed(0)
        load_before = load_average()
        result = recover(student, teacher, tiny.images, config.recovery.replace(teacher_views=int(views)),
                         train_augmentation(spec.input_size), lambda x: normalize(x, spec.mean, spec.std),
                         seed=config.seed, adapter=adapter, precision=precision, device=device,
                         progress=Progress(quiet=not sys.stdout.isatty()))
        rows[variant] = {"precision": result.precision, "teacher_views": int(views), "seconds": round(result.seconds, 1),
                         "final_loss": result.final_loss, "top1": accuracy(student), "load_before": load_before,
                         "load_after": load_average()}
        print(variant, rows[variant], flush=True)
    return {"dropped": report["dropped"], "holdout_images": len(holdout.images), "variants": rows,
            "date": engine_grid.summarise(report, 0)["date"], "machine": engine_grid.machine(),
            "commit": engine_grid.CODE_VERSION}


if __name__ == "__main__":
    main()
