"""The BENCHMARKS.md section for ``recovery_settings.py``: recovery variants on fixed selections."""

from __future__ import annotations

import statistics


def _changes(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(the run's own)"


def section(record: dict) -> list[str]:
    selections = (record or {}).get("selections") or {}
    if not selections:
        return []
    any_entry = next(iter(selections.values()))
    rows = [v for entry in selections.values() for v in entry["variants"].values()]
    lines = [
        "## Recovery settings, chosen on held-out training images",
        "",
        "Recovery alone, on the selection and tiny set of a finished run (same blocks, images and seed), once per "
        "variant of the recovery settings. Settings are chosen on **held-out** top-1: a slice of "
        "`cifar10-jpeg/train` (200 images per class) that shares no image with the tiny set. These teachers were "
        "fine-tuned on the training images, so the slice is easier than val and its differences are compressed; "
        "top-1 on `cifar10-jpeg/val` is reported beside it and was not used to choose.",
        "",
        f"Machine: {any_entry.get('machine')}. Dates: {', '.join(sorted({r['date'] for r in rows}))}. "
        f"Commits: {', '.join(sorted({'`' + r['commit'] + '`' for r in rows}))}.",
        "Command: `python -m benchmarks.recovery_settings --name NAME --recipe R --set ... --variants LABEL:SETTINGS "
        "...` for each selection below (the script first runs the recipe with one recovery step for the selection "
        "and tiny set; variants default to 2000 iterations), then `python -m benchmarks.write_benchmarks`. Raw "
        "results: `benchmarks/results/recovery_settings.json`. Recovery seconds are as measured and not compared: "
        "some rows shared the machine with other work.",
        "",
    ]
    labels: list[str] = []
    for entry in selections.values():
        labels += [label for label in entry["variants"] if label not in labels]
    for name, entry in selections.items():
        teacher = entry.get("teacher") or {}
        lines += [
            f"**{name}**: {entry['model']} ({entry['weights']}), {entry['num_images']} {entry['source']} images, "
            f"{len(entry['dropped'])} blocks dropped ({', '.join(entry['dropped'])}); teacher held-out "
            f"{teacher.get('holdout', float('nan')):.2f}, val {teacher.get('val', float('nan')):.2f}; "
            f"`{entry.get('command', '')}`",
            "",
            "| variant | settings | held-out top-1 | val top-1 | recovery (s) |",
            "|---|---|---|---|---|",
        ]
        for label, row in entry["variants"].items():
            if "drop" in row["changes"]:
                continue  # another selection's rows: the table of block sets below
            lines.append(f"| {label} | {_changes(row['changes'])} | {row['top1']['holdout']:.2f} | "
                         f"{row['top1']['val']:.2f} | {row['seconds']:.0f} |")
        lines.append("")
        lines += _two_rounds(entry["variants"])
        lines += _block_sets(entry)
    shared = [label for label in labels if all(label in e["variants"] for e in selections.values())]
    if len(selections) > 1 and shared:
        lines += [
            "Mean over the selections, for the variants run on all of them:",
            "",
            "| variant | mean held-out top-1 | mean val top-1 |",
            "|---|---|---|",
        ]
        for label in shared:
            held = statistics.mean(e["variants"][label]["top1"]["holdout"] for e in selections.values())
            val = statistics.mean(e["variants"][label]["top1"]["val"] for e in selections.values())
            lines.append(f"| {label} | {held:.2f} | {val:.2f} |")
    return lines


def _two_rounds(variants: dict) -> list[str]:
    """The Adaptive-DeepInversion rows (``adi=N``): each round's held-out top-1 and what the student,
    as the first round left it, made of the images inverted against it."""
    rows = {label: row for label, row in variants.items() if "first_round" in row}
    if not rows:
        return []
    lines = [
        "Two rounds (`adi=N`): recovery, then N images inverted with the competition term against the recovered "
        "student (weight 0: plain BN inversion, the control), then recovery again on both sets. Student agreement: "
        "how often that student predicted the teacher's class on the new images.",
        "",
        "| variant | competition weight | held-out after round 1 | after round 2 | student agreement | "
        "BN distance of the new images | synthesis (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        made = row.get("synthesis") or {}
        agreement = made.get("student_agreement")
        seconds = made.get("synthesis_seconds")
        lines.append(
            f"| {label} | {made.get('competition_weight', 1.0):g} | {row['first_round']['top1']['holdout']:.2f} | "
            f"{row['top1']['holdout']:.2f} | {'—' if agreement is None else f'{agreement:.2f}'} | "
            f"{made.get('bn_distance', float('nan')):.1f} | {'—' if seconds is None else f'{seconds:.0f}'} |")
    return [*lines, ""]


def _block_sets(entry: dict) -> list[str]:
    """The ``drop=`` rows beside the run's own selection, per recovery setting, best held-out first:
    which set of blocks at this cut recovers best, and where the selection the run made stands."""
    teacher = entry.get("teacher") or {}
    covers = {label: row for label, row in entry["variants"].items() if "drop" in row["changes"]}
    lines = []
    for setting in dict.fromkeys(label.split("@")[0] for label in covers):
        rows = [(str(row["changes"]["drop"]).split("+"), row["measured_cut"]["reduction"], row, "")
                for label, row in covers.items() if label.split("@")[0] == setting]
        if setting in entry["variants"]:
            rows.append((entry["dropped"], entry.get("measured_cut"), entry["variants"][setting], " (the run's selection)"))
        lines += [
            f"Every set of blocks at this cut (`--every-cover`), recovered as `{setting}`: each minimal set of "
            "blocks whose single-block savings reach the target, best held-out first; drops against the teacher "
            f"(held-out {teacher.get('holdout', float('nan')):.2f}, val {teacher.get('val', float('nan')):.2f}).",
            "",
            "| blocks dropped | measured cut | held-out top-1 | held-out drop | val top-1 | val drop |",
            "|---|---|---|---|---|---|",
        ]
        for blocks, cut, row, note in sorted(rows, key=lambda r: -r[2]["top1"]["holdout"]):
            held, val = row["top1"]["holdout"], row["top1"]["val"]
            lines.append(f"| {', '.join(blocks)}{note} | {'—' if cut is None else f'{100 * cut:.1f}%'} | {held:.2f} | "
                         f"{teacher.get('holdout', float('nan')) - held:.2f} | {val:.2f} | "
                         f"{teacher.get('val', float('nan')) - val:.2f} |")
        lines.append("")
    return lines
