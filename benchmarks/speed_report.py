"""The BENCHMARKS.md section for ``speed.py``: phase times plain against fast, and the settings choice."""

from __future__ import annotations

PHASES = ("latency", "scoring", "selection", "recovery", "evaluation", "verification", "total")


def _ratio(plain: float, fast: float) -> str:
    return f"{plain / fast:.2f}x" if fast > 0 else "-"


def section(record: dict, results: str = "benchmarks/results/speed.json") -> list[str]:
    """The section for one results file: the CPU record, or one whose ``device`` names an accelerator
    (then the heading, machine line and command say so)."""
    runs = record.get("runs") or {}
    if "plain" not in runs or "fast" not in runs:
        return []
    plain, fast = runs["plain"], runs["fast"]
    device = record.get("device")
    if device:
        title = f"## Speed of a run on a GPU: plain against fast settings (ResNet-56, 500 real images, 30%, {device['gpu']})"
        machine = (f"GPU: {device['gpu']} (torch {device['torch']}, CUDA {device.get('cuda')}, cuDNN "
                   f"{device.get('cudnn')}, TF32 convolutions {'on' if device.get('cudnn_tf32') else 'off'}); host "
                   f"{plain['machine']}")
        command = record.get("command") or f"python -m benchmarks.speed --device {device['device']} --results {results}"
    else:
        title = "## Speed of a run: plain against fast settings (ResNet-56, 500 real images, 30%)"
        machine = f"Machine: {plain['machine']}"
        command = record.get("command") or "python -m benchmarks.speed"
    lines = [
        title,
        "",
        "`recipes/resnet56-real500.yaml` twice in one benchmark, each from an empty cache so that latency is really "
        "timed: *plain* is fp32, the teacher run every recovery step and blocks timed as pruned variants (the "
        "settings before this change); *fast* is the run's new defaults. Same tiny set, seed and iterations.",
        "",
        f"{machine}. Date: {plain['date']}, commit `{plain['commit']}`. Load average before the "
        f"runs: {plain.get('load_before')} and {fast.get('load_before')}.",
        f"Command: `{command}`, then `python -m benchmarks.write_benchmarks`. Raw results: `{results}`.",
        "",
        f"Plain: `{plain['command']}`  ",
        f"Fast: `{fast['command']}`",
        "",
        "| phase | plain (s) | fast (s) | plain / fast |",
        "|---|---|---|---|",
    ]
    for phase in PHASES:
        a, b = plain["phases"].get(phase, 0.0), fast["phases"].get(phase, 0.0)
        lines.append(f"| {phase} | {a:.1f} | {b:.1f} | {_ratio(a, b)} |")
    lines += [
        "",
        "| run | top-1 | drop | measured cut | blocks dropped |",
        "|---|---|---|---|---|",
    ]
    for name, run in (("plain", plain), ("fast", fast)):
        q25, q75 = run["reduction_spread"]
        lines.append(f"| {name} | {run['pruned_top1']:.2f} | {run['drop_top1']:.2f} | {100 * run['reduction']:.1f}% "
                     f"[{100 * q25:.1f}, {100 * q75:.1f}] | {len(run['dropped'])} |")
    choose = record.get("choose") or {}
    variants = choose.get("variants") or {}
    if variants:
        lines += [
            "",
            f"Recovery alone on one selection (the plain run's {len(choose['dropped'])} blocks), each speed setting, "
            f"2000 iterations: top-1 on a held-out slice of `cifar10-jpeg/train` ({choose['holdout_images']} images, "
            "none in the tiny set; the defaults are chosen on this column) and on `cifar10-jpeg/val`. "
            f"Commit `{choose.get('commit')}`, {choose.get('date')}.",
            "",
            "| precision | teacher views | recovery (s) | plain / this | held-out top-1 | val top-1 |",
            "|---|---|---|---|---|---|",
        ]
        base = variants.get("fp32:0", {}).get("seconds")
        for row in variants.values():
            ratio = _ratio(base, row["seconds"]) if base else "-"
            lines.append(f"| {row['precision']} | {row['teacher_views']} | {row['seconds']:.0f} | {ratio} | "
                         f"{row['top1']['holdout']:.2f} | {row['top1']['val']:.2f} |")
    return lines
