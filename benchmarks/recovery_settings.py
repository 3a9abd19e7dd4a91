"""Recovery settings chosen on a held-out slice of the training images, never on val.

Recovery alone, on the selection and tiny set of one run (same blocks, same images, same seed),
once per variant of the recovery settings. Each recovered model is scored on a held-out slice of
the training folder that shares no image with the tiny set (what settings are chosen on) and on
the run's evaluation folder (reported beside it, never chosen on). The selection is made first by
``dfpractise.compress`` with the recipe and ``--set`` overrides and one recovery step (its folder is
kept and reused); results are appended one variant at a time, so an interrupted run continues
where it stopped.

    python -m benchmarks.recovery_settings --name n50-t40-s1 --recipe recipes/resnet56-real500.yaml \
        --set data.num_images=50 latency_reduction=0.4 --variants mir:method=mir,mix=none mixup:method=mir
    python -m benchmarks.write_benchmarks

A variant is ``LABEL:key=value,key=value`` over the ``recovery`` section (values read as a recipe reads them);
``LABEL:`` alone is the recipe's own settings. One key is not a recovery setting: ``images=N`` recovers
from N real training images outside the held-out slice (drawn with the run's seed) instead of the
tiny set, the same selection: what recovery reaches with more data than a user has, so a goal can be
told apart from what the selection allows. ``ood=N`` adds N out-of-domain photos to the images
(label-free, as synthetic ones are) and ``tiny=false`` leaves the run's own set out.

``adi=N`` is Adaptive DeepInversion in two rounds: recover as the variant says, then invert N more
images from the teacher with the run's synthesis settings plus a competition term against the
recovered student (``adi_weight``, default 1; 0 makes plain BN-inversion images, the control with
the same steps and image count), add them and recover again as long from where the first round
stopped. Both rounds' top-1 are recorded.

``drop=A+B+C`` recovers another set of blocks than the run's selection (its latency cut measured
and recorded); ``--every-cover`` runs each variant also on every set of droppable blocks whose
single-block savings reach the run's latency target with no block to spare
(``minimal_covers``): whether any selection at that cut can recover better, what the selection
method could have found at best.

Run on a quiet machine: two torch processes on two cores slow each other several times over (the
seconds are recorded, not compared across runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import engine_grid
from benchmarks.speed import holdout_slice, linked_folder, load_average
from dfpractise.recipe import read_yaml

ROOT = Path(__file__).resolve().parents[1]
RECOVERY_ITERATIONS = 2000
"""Recovery steps of every variant unless it says otherwise (the selection ran one)."""
IMAGE_KEYS = ("images", "ood", "tiny", "adi", "adi_weight")
"""Variant keys that choose the images recovered from, not recovery settings."""
SELECTION_KEYS = ("drop",)
"""Variant keys that choose the blocks dropped, not recovery settings."""
ADAPTIVE_SEED_OFFSET = 1000
"""The adaptive images are drawn with the run's seed plus this: other images than the tiny set's."""


def parse_variant(text: str) -> tuple[str, dict]:
    """``LABEL:key=value,...`` -> (label, {key: value}) with YAML values."""
    label, _, rest = text.partition(":")
    changes = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        changes[key.strip()] = read_yaml(value)
    return label, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="key of this selection in the results file")
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--set", dest="pairs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings over the recipe's, as `dfpractise run --set`")
    parser.add_argument("--variants", nargs="+", default=["base:"])
    parser.add_argument("--every-cover", action="store_true",
                        help="run each variant also on every minimal set of blocks reaching the run's latency target")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "recovery_settings.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-recovery-settings")
    args = parser.parse_args()
    engine_grid.CODE_VERSION = engine_grid.commit()  # the code this process imported
    results = engine_grid.load_results(args.results, empty={"selections": {}})
    entry = results["selections"].setdefault(args.name, {"variants": {}})
    entry["command"] = " ".join(["--recipe", str(args.recipe), *(["--set", *args.pairs] if args.pairs else [])])
    run = select(args.recipe, args.pairs, args.runs_dir / args.name)
    variants = args.variants + (cover_variants(run, args.variants) if args.every_cover else [])
    recover_variants(run, args.runs_dir / args.name / "holdout", variants, entry,
                     lambda: engine_grid.save_results(results, args.results))


def select(recipe: Path, pairs: list[str], out: Path) -> Path:
    """A finished run folder of ``recipe`` with ``pairs`` and one recovery step: its selection and
    tiny set are what every variant recovers from."""
    from dfpractise.cli import settings_from_options
    from dfpractise.engine import compress
    from dfpractise.progress import Progress
    from dfpractise.recipe import resolve_config

    overrides = settings_from_options({}, tuple(pairs))
    overrides.setdefault("recovery", {})["iterations"] = 1
    folder = out / "selection"
    compress(resolve_config(recipe, overrides), folder, progress=Progress(quiet=True), resume=True)
    return folder


def recover_variants(run: Path, holdout_dir: Path, variants: list[str], entry: dict, save) -> None:
    """Recover the run's selection once per variant; each result goes into ``entry`` and is saved."""
    from dfpractise.augment import normalize, train_augmentation
    from dfpractise.engine import load_teacher, load_tiny_set
    from dfpractise.evaluate import evaluate_models, load_labelled_folder
    from dfpractise.models.adapter import adapter_for
    from dfpractise.progress import Progress
    from dfpractise.recipe import resolve_config
    from dfpractise.recovery import recover
    from dfpractise.runs import load_run
    from dfpractise.sources import TinySet

    loaded = load_run(run)
    config = resolve_config(run / "recipe.yaml", {})
    teacher, _, sha = load_teacher(config.model, config.weights, config)
    spec = teacher.model_spec
    tiny = load_tiny_set(config, teacher, sha, progress=Progress(quiet=True))  # the selection's own cached set
    if config.data.source in ("real", "ood"):
        train = Path(config.data.path)
        tiny_files = tiny.files
    else:  # a synthetic set: any training images are held out
        train = Path(config.data.eval_path).parent / "train"
        tiny_files = []
    holdout = load_labelled_folder(holdout_slice(tiny_files, train, holdout_dir), spec.input_size)
    val = load_labelled_folder(config.data.eval_path, spec.input_size)
    quiet = Progress(quiet=True)
    dropped = loaded.manifest["dropped"]
    done = entry["variants"]
    selection = json.loads((run / "selection.json").read_text()) if (run / "selection.json").exists() else {}
    entry.update({"dropped": dropped, "measured_cut": (selection.get("measured") or {}).get("reduction"),
                  "source": config.data.source,
                  "num_images": len(tiny), "model": config.model, "weights": config.weights,
                  "holdout_images": len(holdout.images), "machine": engine_grid.machine()})

    def accuracy(model) -> dict:
        return {name: evaluate_models({"m": model}, data, spec.mean, spec.std, spec.input_size,
                                      progress=quiet)["m"]["top1"] for name, data in (("holdout", holdout), ("val", val))}

    if "teacher" not in entry:
        entry["teacher"] = accuracy(teacher)
    adapter = adapter_for(teacher)
    for variant in variants:
        label, changes = parse_variant(variant)
        if label in done:
            print(f"skip {label} (done)", flush=True)
            continue
        recovery = {k: v for k, v in changes.items() if k not in IMAGE_KEYS + SELECTION_KEYS}
        settings = config.recovery.replace(iterations=RECOVERY_ITERATIONS).replace(**recovery)
        data = variant_images(changes, tiny, train, holdout_dir, spec.input_size, config.seed)
        blocks = str(changes["drop"]).split("+") if "drop" in changes else dropped
        student = adapter.drop(blocks)
        load_before = load_average()

        def recover_from(images, seed):
            return recover(student, teacher, images.images, settings, train_augmentation(spec.input_size),
                           lambda x: normalize(x, spec.mean, spec.std), labels=images.labels, seed=seed,
                           adapter=adapter, precision=config.precision,
                           progress=Progress(quiet=not sys.stdout.isatty()))

        result = recover_from(data, config.seed)
        record = {"changes": changes, "seconds": round(result.seconds, 1), "final_loss": result.final_loss}
        if "drop" in changes:
            record["measured_cut"] = measured_cut(teacher, config, blocks)
        if changes.get("adi"):
            record["first_round"] = {"top1": accuracy(student), "seconds": record["seconds"]}
            made = adaptive_images(teacher, sha, student, config, int(changes["adi"]),
                                   float(changes.get("adi_weight", 1.0)))
            result = recover_from(TinySet.join(data, made["images"]), config.seed + ADAPTIVE_SEED_OFFSET)
            record.update(seconds=round(record["seconds"] + made["seconds"] + result.seconds, 1),
                          final_loss=result.final_loss, synthesis=made["report"])
        done[label] = {**record, "top1": accuracy(student), "load_before": load_before, "load_after": load_average(),
                       "date": time.strftime("%Y-%m-%d"), "commit": engine_grid.CODE_VERSION}
        save()
        print(label, done[label], flush=True)


def minimal_covers(saving: dict[str, float], target_percent: float) -> list[list[str]]:
    """Every set of blocks whose summed single-block saving (percent, ``saving``) reaches
    ``target_percent`` and would fall short without any one of its blocks, in block order."""
    names = list(saving)
    if len(names) > 20:
        raise ValueError(f"{len(names)} droppable blocks: too many sets to recover each")
    covers = []
    for mask in range(1, 1 << len(names)):
        chosen = [n for i, n in enumerate(names) if mask >> i & 1]
        total = sum(saving[n] for n in chosen)
        if total >= target_percent and all(total - saving[n] < target_percent for n in chosen):
            covers.append(chosen)
    return sorted(covers, key=lambda c: [names.index(n) for n in c])


def cover_variants(run: Path, variants: list[str]) -> list[str]:
    """``variants`` again on every minimal cover of the run's target but its own selection, labelled
    ``LABEL@A+B+C`` with ``drop=A+B+C``."""
    own = json.loads((run / "manifest.json").read_text())["dropped"]
    extra = []
    for cover in run_covers(run)[2]:
        if sorted(cover) == sorted(own):
            continue
        for variant in variants:
            label, _, rest = variant.partition(":")
            blocks = "+".join(cover)
            extra.append(f"{label}@{blocks}:" + ",".join(filter(None, [rest, f"drop={blocks}"])))
    return extra


def run_covers(run: Path):
    """A finished run's settings, each block's measured saving (percent) and the minimal covers of
    its latency target."""
    from dfpractise.recipe import resolve_config

    config = resolve_config(run / "recipe.yaml", {})
    if config.latency_reduction is None:
        raise SystemExit(f"{run} was made by a drop count: every set of blocks at a cut needs a latency target")
    saving = {b["name"]: b["delta_lat"] for b in json.loads((run / "latency.json").read_text())["blocks"]}
    return config, saving, minimal_covers(saving, 100 * config.latency_reduction)


def measured_cut(teacher, config, blocks: list[str]) -> dict:
    """The latency cut of dropping ``blocks`` from ``teacher``, measured as a run measures its selection."""
    from dfpractise.latency import Timing, cut_measure

    cut = cut_measure(teacher, Timing.from_config(config.latency, teacher.model_spec.input_size, config.device))(blocks)
    return cut.to_json()


def adaptive_images(teacher, teacher_id: str, student, config, count: int, weight: float) -> dict:
    """``count`` BN-inversion images of ``teacher`` with the run's synthesis settings and, where
    ``weight`` > 0, Adaptive DeepInversion's competition term against ``student`` (cached like any
    synthetic set, keyed by the student too); their quality report and the seconds they took."""
    from dfpractise.progress import Progress
    from dfpractise.sources import TinySet
    from dfpractise.sources.synthetic import default_cache_folder
    from synthesizers import BNInversion, quality_report, synthesize
    from synthesizers.generate import set_settings

    spec = teacher.model_spec
    options = dict(config.data.synthesis)
    if weight > 0:
        options.update(student=student, competition_weight=weight)
    synthesizer = BNInversion(teacher, spec.mean, spec.std, teacher_id=teacher_id, device=config.device, **options)
    seed = config.seed + ADAPTIVE_SEED_OFFSET
    folder = default_cache_folder(set_settings(synthesizer, count, spec.input_size, spec.num_classes, seed))
    progress = Progress(quiet=not sys.stdout.isatty())
    with progress.steps("Synthesising (adaptive)") as on_step:
        made = synthesize(synthesizer, count, spec.input_size, spec.num_classes, seed, folder, on_step=on_step)
    report = quality_report(teacher, made.images, made.labels, spec.mean, spec.std)
    report.update(competition_weight=weight, synthesis_seconds=round(made.seconds, 1))
    if weight > 0:  # how far the student, as it was, is from the teacher on the images made against it
        report["student_agreement"] = agreement(teacher, student, made.images, spec.mean, spec.std)
    return {"images": TinySet(made.images, made.labels, info={"source": "adaptive", "cache": str(made.folder)}),
            "seconds": round(made.seconds, 1), "report": report}


def agreement(teacher, student, images, mean, std) -> float:
    """Share of ``images`` on which ``student`` predicts the teacher's class (both in eval mode)."""
    import torch

    from dfpractise.augment import normalize

    teacher.eval(), student.eval()
    with torch.no_grad():
        x = normalize(images, mean, std)
        return round(float((teacher(x).argmax(1) == student(x).argmax(1)).float().mean()), 4)


def variant_images(changes: dict, tiny, train: Path, holdout_dir: Path, image_size: int, seed: int):
    """The images a variant recovers from: the run's tiny set, or ``images=N`` real ones outside the
    held-out slice; ``ood=N`` adds N out-of-domain images (``$DFPRACTISE_ASSETS/imagenet-sample-256``,
    drawn with the run's seed); ``tiny=false`` leaves the run's own set out (the added images alone)."""
    from benchmarks.data_free import ood_folder
    from dfpractise.errors import DataError
    from dfpractise.sources import OutOfDomainFolderSource, TinySet

    parts = []
    if "images" in changes:
        parts.append(outside_holdout(train, holdout_dir, int(changes["images"]), image_size, seed))
    elif changes.get("tiny", True):
        parts.append(tiny)
    if changes.get("ood"):
        parts.append(OutOfDomainFolderSource(ood_folder()).load(int(changes["ood"]), image_size, seed))
    if not parts:
        raise DataError("this variant recovers from no images: tiny=false needs ood=N")
    return parts[0] if len(parts) == 1 else TinySet.join(*parts)


def outside_holdout(train: Path, holdout_dir: Path, count: int, image_size: int, seed: int):
    """``count`` real images of ``train`` drawn with ``seed``, none of them in the held-out slice
    (``holdout_dir``, links into ``train``), so held-out top-1 stays a fair measure."""
    from dfpractise.errors import DataError
    from dfpractise.sources import RealFolderSource

    held = {p.resolve() for p in holdout_dir.rglob("*") if p.is_symlink()}
    rest = linked_folder(train, holdout_dir.with_name(holdout_dir.name + "-rest"), lambda spare: spare, held)
    spare = sum(1 for p in rest.rglob("*") if p.is_symlink())
    if count > spare:
        raise DataError(f"images={count}: {train} holds {spare} images outside the held-out slice")
    return RealFolderSource(rest).load(count, image_size, seed)


if __name__ == "__main__":
    main()
