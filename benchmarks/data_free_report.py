"""The BENCHMARKS.md section for ``data_free.py``: every teacher, data-free beside 500 real images."""

from __future__ import annotations

SET_NAMES = {
    "real500": "500 real images",
    "synthetic": "512 BN-inversion images",
    "generator": "512 generator images",
    "ood": "1000 out-of-domain photos",
    "synthetic+ood": "512 BN-inversion images + 1000 out-of-domain photos",
}


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def section(record: dict) -> list[str]:
    runs = (record or {}).get("runs") or {}
    if not runs:
        return []
    any_run = next(iter(runs.values()))
    dates = sorted({r["date"] for r in runs.values()})
    commits = sorted({r["commit"] for r in runs.values()})
    lines = [
        "## Data-free on every teacher (CIFAR-10, 30% target)",
        "",
        "Each teacher in `../shared/assets/weights` compressed with the same default settings (no per-teacher "
        "tuning), from 500 real training images, from 512 BN-inversion images, from 512 images of the "
        "meta-learned generator, from 1000 out-of-domain photos (the ImageNet sample images, labels ignored: no "
        "CIFAR image, but not no data) and from those photos beside the 512 BN-inversion images "
        "(`data.ood_path`); top-1 on `cifar10-jpeg/val` (5,000 images). Synthesis is timed from an empty "
        "cache in the same run; agreement is the share of synthetic images the teacher classifies as their "
        "intended class (for real images: as their label; photos have none); BN distance is the mean over batches "
        "of 256 of the summed distances between the batch's BatchNorm statistics and the teacher's running ones "
        "(for photos beside synthetic images: of the synthetic images). A run made with `--images-from LABEL` "
        "recovered from the images of that label's run (no synthesis of its own: its synthesis time reads "
        "'reused'); `--trials N` runs tried N sets of blocks briefly before recovering (`trials.sets`); a run "
        "made with `--synthesis KEY=VALUE` made its images with those synthesizer settings, one with `--recovery "
        "KEY=VALUE` recovered with those recovery settings (both in brackets after its label).",
        "",
        f"Machine: {any_run['machine']}. Dates: {', '.join(dates)}. Commits: {', '.join(f'`{c}`' for c in commits)}.",
        "Command: `python -m benchmarks.data_free`, then `python -m benchmarks.write_benchmarks`. Raw results: "
        "`benchmarks/results/data_free.json`.",
        "",
        "| teacher | tiny set | code | teacher top-1 | pruned top-1 | drop | measured cut | synthesis (s) | "
        "agreement | BN distance | blocks | run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(SET_NAMES)

    def version(run: dict) -> str:
        """The run's label, with its seed where that is not 1 and the label does not already say it."""
        label, seed = run.get("label") or "before", run.get("seed", 1)
        return label if seed == 1 or label.endswith(f"-s{seed}") else f"{label}, seed {seed}"

    def set_rank(name: str) -> int:
        return order.index(name) if name in order else len(order)

    for key, run in sorted(runs.items(), key=lambda kv: (kv[1]["teacher"], set_rank(kv[1]["set"]),
                                                          version(kv[1]) != "before", kv[0])):
        tiny = run.get("tiny_set") or {}
        agreement = tiny.get("agreement")
        lines.append(
            f"| {run['teacher']} | {SET_NAMES.get(run['set'], run['set'])} | {version(run)} `{run['commit']}`"
            f"{_changes(run)} | "
            f"{run['teacher_top1']:.2f} | {run['pruned_top1']:.2f} | {run['drop_top1']:.2f} | "
            f"{100 * run['reduction']:.1f}% | {_synthesis(run)} | "
            f"{_number(100 * agreement, 1) + '%' if agreement is not None else '-'} | "
            f"{_number(tiny.get('bn_distance'), 1)} | {len(run['dropped'])} | {run['wall_seconds']:.0f} |")
    ratios = []
    for teacher, label in sorted({(r["teacher"], version(r)) for r in runs.values()}):
        times = {r["set"]: (r.get("tiny_set") or {}).get("synthesis_seconds") for r in runs.values()
                 if r["teacher"] == teacher and version(r) == label and not r.get("images_from")}
        if times.get("synthetic") and times.get("generator"):
            ratios.append(f"{teacher} ({label}) {times['synthetic'] / times['generator']:.1f}x")
    if ratios:
        lines += ["", "Synthesis time, BN inversion / generator, each measured in its own run of this benchmark: "
                  + ", ".join(ratios) + "."]
    lines += quality_table(runs, set_rank, version)
    pairs = {}
    for run in runs.values():
        pairs.setdefault((run["teacher"], run["set"]), {})[version(run)] = run
    labels = sorted({version(r) for r in runs.values()} - {"before"})
    if labels:
        lines += ["", "Top-1 drop in points (measured cut in brackets: a drop is only comparable at a like cut) "
                  "before and after, per teacher and tiny set:", "",
                  "| teacher | tiny set | before | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for (teacher, name), by_label in sorted(pairs.items(), key=lambda kv: (kv[0][0], set_rank(kv[0][1]))):
            cells = [f"{by_label[v]['drop_top1']:.2f} ({100 * by_label[v]['reduction']:.1f}%)" if v in by_label
                     else "-" for v in ["before", *labels]]
            lines.append(f"| {teacher} | {SET_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


def _changes(run: dict) -> str:
    """`` (precision=bf16, steps=100)`` for a run whose synthesizer, recovery or trial settings were changed,
    else nothing (recovery and trial settings named as such: ``recovery.iterations=8000``, ``trials.iterations=250``)."""
    changes = {**(run.get("synthesis_changes") or {}),
               **{f"recovery.{k}": v for k, v in (run.get("recovery_changes") or {}).items()},
               **{f"trials.{k}": v for k, v in (run.get("trial_changes") or {}).items()}}
    return f" ({', '.join(f'{k}={v}' for k, v in changes.items())})" if changes else ""


def _synthesis(run: dict) -> str:
    """Seconds of synthesis, or 'reused' for a run that recovered from another run's images."""
    if run.get("images_from") and run.get("set") != "real500":
        return f"reused ({run['images_from']})"
    return _number((run.get("tiny_set") or {}).get("synthesis_seconds"), 0)


def quality_table(runs: dict, set_rank, version) -> list[str]:
    """What each run's teacher saw in its tiny set (``data_free.py --quality``), beside its drop."""
    measured = {k: r for k, r in runs.items() if r.get("set_quality")}
    if not measured:
        return []
    commits = sorted({r["set_quality"]["commit"] for r in measured.values()})
    lines = ["", "What the teacher sees in each run's tiny set (`python -m benchmarks.data_free --quality`, commits "
             + ", ".join(f"`{c}`" for c in commits) + "; the same images the run recovered from, all of them): "
             "*confidence* is the teacher's mean top softmax probability, *diversity* the mean cosine distance "
             "between the teacher's penultimate features of two images of the set, *class spread* the entropy of "
             "its predicted classes over the set divided by that of a uniform spread (1: every class equally "
             "often), *BN distance* as above but over the whole set.", "",
             "| teacher | tiny set | code | images | confidence | diversity | class spread | BN distance | drop |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, run in sorted(measured.items(), key=lambda kv: (kv[1]["teacher"], set_rank(kv[1]["set"]),
                                                            version(kv[1]), kv[0])):
        quality = run["set_quality"]
        lines.append(f"| {run['teacher']} | {SET_NAMES.get(run['set'], run['set'])} | {version(run)} | "
                     f"{quality['images']} | {quality['teacher_confidence']:.3f} | "
                     f"{_number(quality['feature_diversity'], 3)} | {quality['class_spread']:.3f} | "
                     f"{_number(quality['bn_distance'], 1)} | {run['drop_top1']:.2f} |")
    return lines
