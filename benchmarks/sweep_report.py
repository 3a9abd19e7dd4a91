"""The BENCHMARKS.md section for ``sweep.py``: latency cut against top-1, one model per target."""

from __future__ import annotations

from pathlib import Path

NAMES = {"real": "{n} real CIFAR-10 training images", "synthetic": "data-free: {n} BN-inversion images",
         "ood": "{n} out-of-domain images"}


def _recovery_name(recovery: dict) -> str:
    """The recovery a sweep used, as its settings name it (older records lack ``mix``)."""
    from dfpractise.config import RecoveryConfig
    from dfpractise.recovery import mix_of

    if "mix" not in recovery:
        return recovery["method"]
    mix = mix_of(RecoveryConfig.model_validate(recovery))
    return recovery["method"] + ("" if mix == "none" else f" with {mix}")


def section(results: dict, plots_dir: Path, root: Path) -> list[str]:
    """A table per sweep and its plot (``plots_dir/sweep-KEY.png``, redrawn from the JSON)."""
    from dfpractise.sweep import SweepResult, save_sweep_plot

    sweeps = results.get("sweeps") or {}
    if not sweeps:
        return []
    lines = [
        "## Choosing a target: one sweep, one model per target (ResNet-56, CIFAR-10)",
        "",
        "`dfpractise sweep` with the recipe of each tiny set: the blocks are timed and scored once, then each "
        "target is selected (measured), recovered and evaluated on `cifar10-jpeg/val` in its own run "
        "folder. Filter pruning (Torch-Pruning, L1, block-internal channels) is matched to each PRACTISE "
        "model's measured cut and recovered with the same settings, images and seed. Cuts are measured "
        "against the teacher in the same process (median, IQR in brackets); the predicted cut is the "
        "dropped blocks' single-block ΔLat summed.",
        "",
        "Command: `python -m benchmarks.sweep`, then `python -m benchmarks.write_benchmarks`. Raw results: "
        "`benchmarks/results/sweep.json`.",
    ]
    for key, record in sorted(sweeps.items()):
        plot = plots_dir / f"sweep-{key}.png"
        try:
            save_sweep_plot(SweepResult.from_json(record, plots_dir), plot)
        except ImportError:
            plot = None
        teacher, settings = record["teacher"], record["settings"]
        latency = settings["latency"]
        name = NAMES.get(record.get("source"), "{n} " + str(record.get("source")) + " images")
        lines += [
            "",
            f"### {name.format(n=record['num_images'])}: {settings['recovery']['iterations']} "
            f"recovery iterations ({_recovery_name(settings['recovery'])}), seed {settings['seed']}",
            "",
            f"Teacher top-1 {teacher['top1']:.2f}% ({teacher['latency_ms']:.1f} ms at batch {latency['batch_size']}, "
            f"{latency['backend']} on {settings['device']}). Machine: {record['machine']}, "
            f"torch {record['torch']}. Date {record['date']}, commit `{record['commit']}`; "
            f"{record['wall_seconds'] / 60:.0f} min for the sweep."
            + (f" Command: `{record['command']}`." if record.get("command") else ""),
            "",
            "| target | method | blocks dropped | predicted cut | measured cut [IQR] | top-1 | change (points) | "
            "recovery (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = record["practise"] + ((record.get("baseline") or {}).get("rows") or [])
        for row in sorted(rows, key=lambda r: (r["target"], r["method"] != "practise")):
            method = "PRACTISE" if row["method"] == "practise" else "filter pruning (L1)"
            if row["status"] != "done":
                lines.append(f"| {100 * row['target']:g}% | {method} | {row['status']} | | | | | |")
                continue
            q25, q75 = row["measured_spread"]
            ratio = row.get("details", {}).get("ratio")
            blocks = len(row["dropped"]) if row["method"] == "practise" else f"ratio {ratio:.3f}"
            predicted = f"{100 * row['predicted_cut']:.1f}%" if row.get("predicted_cut") is not None else "—"
            lines.append(
                f"| {100 * row['target']:g}% | {method} | {blocks} | {predicted} | {100 * row['measured_cut']:.1f}% "
                f"[{100 * q25:.1f}, {100 * q75:.1f}] | {row['top1']:.2f} | {row['top1'] - row['teacher_top1']:+.2f} | "
                f"{row['recovery_seconds']:.0f} |"
            )
        unreachable = [r for r in record["practise"] if r["status"] == "unreachable"]
        for row in unreachable:
            lines += ["", f"{100 * row['target']:g}%: {row['reason']}"]
        if plot is not None:
            lines += ["", f"![latency cut against top-1, {key}]({plot.relative_to(root)})"]
    return lines
