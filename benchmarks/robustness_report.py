"""The BENCHMARKS.md section for ``robustness_grid.py``: the sources' models under corruption."""

from __future__ import annotations

import statistics
from pathlib import Path

NAMES = {"real": "500 real", "synthetic": "512 synthetic (data-free)", "ood": "1000 out-of-domain"}


def section(record: dict, plot: Path | None, root: Path) -> list[str]:
    from dfpractise.robustness import RobustnessResult, save_heatmap

    if not record:
        return []
    result = RobustnessResult.from_json(record)
    labels = {m: NAMES.get(record["sources"].get(m, ""), m) for m in result.models}
    labels["teacher"] = "teacher"
    if plot is not None:
        save_heatmap(result, plot)
    lines = [
        "## Robustness under corruption (ResNet-56, 30% target, three tiny-set sources)",
        "",
        f"The teacher `cifar10jpeg-resnet56` and the three pruned models of the sources benchmark (500 real, "
        "512 BN-inversion and 1000 out-of-domain images; seed 1, 2000 MiR iterations, 30% latency target), "
        f"scored on `cifar10-jpeg/val` ({result.count} images) clean and under {len(result.corruptions)} "
        f"corruptions at severities {', '.join(map(str, result.severities))} (`dfpractise.corruptions`, CIFAR-10-C "
        "style, made on the fly and seeded: every model sees the same corrupted images). Cells are top-1 (%), "
        "each corruption averaged over its severities. mCE is the mean corruption error against the teacher "
        "(100 = the teacher's); relative robustness is the points a model loses under corruption beyond those "
        "it loses on clean images (positive: compression costs more under shift).",
        "",
        f"Machine: {record['machine']}, torch {record['torch']}. Date: {record['date']}, commit `{record['commit']}`; "
        f"{record['seconds'] / 60:.0f} min for the scoring.",
        "Command: `python -m benchmarks.robustness_grid`, then `python -m benchmarks.write_benchmarks`. Raw results: "
        "`benchmarks/results/robustness.json`.",
        "",
        "| | " + " | ".join(labels[m] for m in result.models) + " |",
        "|---|" + "---|" * len(result.models),
        "| measured latency cut | — | " + " | ".join(
            f"{100 * record['runs'][m]['latency']['reduction']:.1f}%" for m in result.models[1:]) + " |",
        "| clean | " + " | ".join(f"{result.clean[m]:.2f}" for m in result.models) + " |",
    ]
    for corruption in result.corruptions:
        lines.append(f"| {corruption.replace('_', ' ')} | "
                     + " | ".join(f"{result.family(m, corruption):.2f}" for m in result.models) + " |")
    lines += [
        "| **mean corruption** | " + " | ".join(f"**{result.mean_corruption_accuracy(m):.2f}**"
                                              for m in result.models) + " |",
        "| mCE vs teacher | " + " | ".join(f"{result.corruption_error(m):.1f}" for m in result.models) + " |",
        "| relative robustness (points) | — | " + " | ".join(
            f"{result.relative_robustness(m):+.2f}" for m in result.models[1:]) + " |",
    ]
    for severity in result.severities:
        lines.append(f"| severity {severity}, mean of corruptions | " + " | ".join(
            f"{statistics.mean(result.accuracy[m][c][severity] for c in result.corruptions):.2f}"
            for m in result.models) + " |")
    if plot is not None:
        lines += ["", f"![top-1 under corruption]({plot.relative_to(root)})"]
    return lines
