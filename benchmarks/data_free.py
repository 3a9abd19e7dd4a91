"""Data-free runs on every teacher in the assets, beside 500 real images (issue: data-free on any teacher).

Four teachers (the JPEG-adapted ResNet-20/56 and the original akamaster ResNet-20/56, trained on
lossless CIFAR-10 and so seeing a shifted domain here), a 30% latency target, one run per
(teacher, tiny set), all with the same default settings (no per-teacher tuning):

    real500     500 real CIFAR-10 training images (recipes/resnet56-real500.yaml)
    synthetic   512 BN-inversion images (recipes/resnet56-synthetic512.yaml: 200 steps, batch 256)
    generator   512 images of the meta-learned generator (its defaults)
    ood         1000 out-of-domain photos (the assets' ImageNet samples, labels ignored)
    synthetic+ood  the 512 BN-inversion images and the 1000 photos together (data.ood_path)

Every synthetic set is made in a fresh cache folder, so its time is a real synthesis; the quality
numbers (teacher agreement with the intended classes, BN-statistics distance per batch of 256)
come from the run's own report; for real images the same numbers are computed here on the
drawn set. Accuracy is on cifar10-jpeg/val (5,000 images).

    python -m benchmarks.data_free
    python -m benchmarks.data_free --teachers cifar10jpeg-resnet56 --sets synthetic generator
    python -m benchmarks.data_free --quality    # what each finished run's teacher saw in its set
    python -m benchmarks.data_free --sets synthetic --trials 6 --images-from pooled --label trials6

``--trials N`` lets every run try N sets of blocks briefly before recovering (``trials.sets``);
``--images-from LABEL`` recovers from another run's images, so two selections can be compared on
the same images without synthesising them again. ``--synthesis KEY=VALUE ...`` changes the
synthesizer's settings (``data.synthesis``), e.g. a faster inversion measured downstream, and
``--recovery KEY=VALUE ...`` the recovery's (``recovery``), e.g. a longer one with trials, and ``--trial
KEY=VALUE ...`` the trials' (``trials``), e.g. shorter ones:

    python -m benchmarks.data_free --sets synthetic --synthesis precision=bf16 steps=100 --label bf16-s100
    python -m benchmarks.data_free --teachers cifar10jpeg-resnet20 --sets synthetic --trials 6 \
        --recovery iterations=8000 --label trials6-8k
    python -m benchmarks.write_benchmarks

Results are saved after each run; an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks import engine_grid
from dfpractise.cli import _parse_options
from dfpractise.engine import compress
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = {
    "cifar10jpeg-resnet56": "cifar10_resnet56",
    "cifar10jpeg-resnet20": "cifar10_resnet20",
    "akamaster-cifar10-resnet56": "cifar10_resnet56",
    "akamaster-cifar10-resnet20": "cifar10_resnet20",
}
SETS = {
    "real500": ("resnet56-real500.yaml", {}),
    "synthetic": ("resnet56-synthetic512.yaml", {}),
    "generator": ("resnet56-synthetic512.yaml", {"source": "generator", "synthesis": {}}),
    "ood": ("resnet56-synthetic512.yaml", {"source": "ood", "path": "{ood}", "num_images": 1000, "synthesis": {}}),
    "synthetic+ood": ("resnet56-synthetic512.yaml", {"ood_path": "{ood}", "ood_images": 1000}),
}
"""Out-of-domain photos (``{ood}``) are the assets' 1000 ImageNet samples, all of them: unlabelled
images from another domain, which a team without its training data can still find."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", nargs="+", choices=list(TEACHERS), default=list(TEACHERS))
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label", default="", help="suffix of the result keys (e.g. 'before' for an older commit)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "data_free.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-data-free")
    parser.add_argument("--trials", type=int, default=0, metavar="N",
                        help="trials.sets of every run: try the selection and its cheapest alternatives briefly")
    parser.add_argument("--images-from", metavar="LABEL",
                        help="recover from the images a run labelled LABEL made (same teacher, set and seed) "
                             "instead of synthesising afresh; its synthesis time is not this run's")
    parser.add_argument("--synthesis", nargs="+", default=[], metavar="KEY=VALUE",
                        help="synthesizer settings over the recipe's (data.synthesis), e.g. precision=bf16 steps=100")
    parser.add_argument("--recovery", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recovery settings over the recipe's (recovery), e.g. iterations=8000")
    parser.add_argument("--trial", nargs="+", default=[], metavar="KEY=VALUE",
                        help="trial settings over the recipe's (trials), e.g. iterations=250")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--quality", action="store_true",
                        help="run nothing: measure what the teacher sees in each finished run's tiny set")
    args = parser.parse_args()
    if args.quality:
        return measure_set_quality(args.results, args.runs_dir)

    synthesis = _parse_options(tuple(args.synthesis), "--synthesis")  # as `dfpractise run --synthesis-option`
    recovery = _parse_options(tuple(args.recovery), "--recovery")
    trial = _parse_options(tuple(args.trial), "--trial")
    engine_grid.CODE_VERSION = engine_grid.commit()
    results = engine_grid.load_results(args.results)
    for teacher in args.teachers:
        for name in args.sets:
            key = f"{teacher}-{name}-s{args.seed}" + (f"-{args.label}" if args.label else "")
            if key in results["runs"]:
                print(f"skip {key} (done)", flush=True)
                continue
            recipe, data = SETS[name]
            out = args.runs_dir / key
            cache = args.runs_dir / f"{key}-images"
            if args.images_from:
                cache = args.runs_dir / f"{teacher}-{name}-s{args.seed}-{args.images_from}-images"
                if name != "real500" and not cache.exists():
                    raise SystemExit(f"no images at {cache}: run --label {args.images_from} first")
            else:
                shutil.rmtree(cache, ignore_errors=True)
            data = {k: v.format(ood=ood_folder()) if isinstance(v, str) else v for k, v in data.items()}
            overrides = {"model": TEACHERS[teacher], "weights": teacher, "seed": args.seed,
                         "data": {**data, **({"cache_dir": str(cache)} if name != "real500" else {})},
                         **({"trials": {"sets": args.trials}} if args.trials else {})}
            config = resolve_config(ROOT / "recipes" / recipe, overrides)
            if synthesis and name != "real500":
                config.data.synthesis = {**config.data.synthesis, **synthesis}
            config.recovery = config.recovery.replace(**recovery)
            config.trials = config.trials.replace(**trial)
            print(f"run {key}", flush=True)
            start = time.perf_counter()
            result = compress(config, out, progress=Progress(quiet=args.quiet), overwrite=True)
            report = result.report
            tiny = report.get("tiny_set") or folder_quality(config)
            results["runs"][key] = {
                "teacher": teacher, "set": name, "seed": args.seed, "label": args.label, "recipe": recipe,
                "trials": args.trials, "images_from": args.images_from,
                **({"synthesis_changes": synthesis} if synthesis and name != "real500" else {}),
                **({"recovery_changes": recovery} if recovery else {}),
                **({"trial_changes": trial} if trial else {}),
                "num_images": report["num_images"],
                "tiny_set": tiny, "precision": report["recovery"].get("precision"),
                **engine_grid.summarise(report, time.perf_counter() - start),
            }
            engine_grid.save_results(results, args.results)
            row = results["runs"][key]
            print(f"  top-1 {row['teacher_top1']:.2f} -> {row['pruned_top1']:.2f} (drop {row['drop_top1']:.2f}), "
                  f"cut {100 * row['reduction']:.1f}%, synthesis {tiny.get('synthesis_seconds')} s, "
                  f"agreement {tiny.get('agreement')}, {row['wall_seconds']:.0f} s", flush=True)


def folder_quality(config) -> dict:
    """Agreement (labelled sets only) and BN distance of a set read from a folder (real images,
    out-of-domain photos), measured as the synthetic sets' are; nothing was synthesised."""
    from dfpractise.engine import load_teacher, load_tiny_set
    from synthesizers import quality_report

    teacher, _, _ = load_teacher(config.model, config.weights)
    spec = teacher.model_spec
    tiny = load_tiny_set(config, teacher, progress=Progress(quiet=True))
    report = quality_report(teacher, tiny.images, tiny.labels, spec.mean, spec.std)
    return {"method": config.data.source, "agreement": report.get("agreement"),
            "bn_distance": report.get("bn_distance"), "synthesis_seconds": 0.0}


def measure_set_quality(results_path: Path, runs_dir: Path) -> None:
    """For every run in the results whose folder is still here, what its teacher sees in the tiny set
    it recovered from (the same images, read back through its recipe): how confident, how varied
    its features, how its predictions spread over the classes. Synthesis-side signals, measured the
    same way on every source, to set beside each source's drop."""
    from dfpractise.engine import load_teacher, load_tiny_set
    from synthesizers import quality_report

    results = engine_grid.load_results(results_path)
    version = engine_grid.commit()
    teachers: dict = {}
    for key, run in sorted(results["runs"].items()):
        folder = runs_dir / key
        if "set_quality" in run or not (folder / "recipe.yaml").exists():
            continue
        config = resolve_config(folder / "recipe.yaml", {})
        made = config.data.source not in ("real", "ood")  # folder sources keep no cache
        if made and config.data.cache_dir and not Path(config.data.cache_dir).exists():
            print(f"skip {key}: its synthetic images ({config.data.cache_dir}) are gone", flush=True)
            continue
        if run["teacher"] not in teachers:
            teachers[run["teacher"]] = load_teacher(config.model, config.weights)
        teacher, _, sha = teachers[run["teacher"]]
        spec = teacher.model_spec
        tiny = load_tiny_set(config, teacher, sha, progress=Progress(quiet=True))  # the run's cache: same teacher id
        report = quality_report(teacher, tiny.images, None, spec.mean, spec.std)
        spread = class_spread(list(report["predicted_histogram"].values()), spec.num_classes)
        run["set_quality"] = {"images": len(tiny), "teacher_confidence": report["teacher_confidence"],
                              "feature_diversity": report["feature_diversity"], "class_spread": spread,
                              "bn_distance": report["bn_distance"], "commit": version}
        engine_grid.save_results(results, results_path)
        print(key, run["set_quality"], flush=True)


def class_spread(counts: list[int], num_classes: int | None = None) -> float:
    """Entropy of how often each class was predicted, over that of an even spread across
    ``num_classes`` (default: as many as counted): 1 when every class comes equally often, 0 when
    one class takes all."""
    import math

    classes = num_classes or len(counts)
    total = sum(counts)
    if classes < 2 or total == 0:
        return 0.0
    entropy = -sum(c / total * math.log(c / total) for c in counts if c)
    return round(entropy / math.log(classes), 4)


def ood_folder() -> Path:
    """The offline assets' out-of-domain photos (ImageNet samples, for CIFAR teachers)."""
    from benchmarks.any_model import assets

    return assets() / "imagenet-sample-256"


if __name__ == "__main__":
    main()
