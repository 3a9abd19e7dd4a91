"""BENCHMARKS.md section and plot for the side-by-side benchmark (``side_by_side.py``) and for
the cost of scoring (``scoring_cost.py``). Called by ``write_benchmarks.py``."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from synthesizers.files import atomic_write

METHODS = {
    "block/recoverability/mir": "drop blocks: PRACTISE + MiR",
    "block/recoverability/kd": "drop blocks: PRACTISE + logits KD",
    "block/recoverability/bp": "drop blocks: PRACTISE + BP (labels)",
    "block/recoverability/none": "drop blocks: PRACTISE, no recovery",
    "block/latency-only/mir": "drop blocks: latency-only + MiR",
    "block/random/mir": "drop blocks: random + MiR",
    "filter/l1/mir": "filter pruning: L1 + MiR",
    "filter/l1/bp": "filter pruning: L1 + BP (labels)",
    "filter/taylor/mir": "filter pruning: Taylor + MiR",
    "filter/taylor/bp": "filter pruning: Taylor + BP (labels)",
}
"""Row key -> label, in table order."""

DEFAULT_ITERATIONS = 500
"""``side_by_side.py --recovery-iterations`` when not given."""

TINY_SET_NAMES = {
    "real50": "50 real images",
    "real500": "500 real images",
    "synthetic512": "512 BN-inversion images (data-free)",
    "ood1000": "1000 ImageNet sample images (out-of-domain)",
}


def _mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _groups(cells: dict) -> dict[tuple, dict[str, list[tuple[int, dict]]]]:
    """(tiny set, target, iterations) -> row key -> [(seed, row)]."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for cell in cells.values():
        group = groups[(cell["tiny_set"], cell["target"], cell["recovery_iterations"])]
        for key, row in cell["rows"].items():
            group[key].append((cell["seed"], row))
    return groups


def _order(key: tuple) -> tuple:
    tiny_set, target, iterations = key
    return (list(TINY_SET_NAMES).index(tiny_set) if tiny_set in TINY_SET_NAMES else 99, target, iterations)


def _cell_order(cell: dict) -> tuple:
    return (*_order((cell["tiny_set"], cell["target"], cell["recovery_iterations"])), cell["seed"])


def rerun_commands(cells: dict) -> list[str]:
    """``side_by_side.py`` commands that rerun exactly the cells with results: one per tiny set and seed list."""
    seeds: dict[tuple, set] = defaultdict(set)
    for cell in cells.values():
        if cell.get("rows"):
            seeds[cell["tiny_set"], cell["recovery_iterations"], cell["target"]].add(cell["seed"])
    targets: dict[tuple, list] = defaultdict(list)  # targets run with the same seeds share a command
    for (tiny_set, iterations, target), cell_seeds in sorted(seeds.items()):
        targets[tiny_set, iterations, tuple(sorted(cell_seeds))].append(target)
    commands = []
    for (tiny_set, iterations, cell_seeds), cell_targets in targets.items():
        command = (f"python -m benchmarks.side_by_side --tiny-sets {tiny_set} "
                   f"--targets {' '.join(f'{t:g}' for t in cell_targets)} --seeds {' '.join(map(str, cell_seeds))}")
        if iterations != DEFAULT_ITERATIONS:
            command += f" --recovery-iterations {iterations}"
        commands.append(command)
    return commands


def section(results: dict, scoring: dict, plot_name: str | None) -> list[str]:
    cells = results.get("cells", {})
    if not cells:
        return ["## Block dropping against filter pruning", "", "No side-by-side runs recorded yet."]
    teacher = results["teacher"]
    rows = [row for cell in cells.values() for row in cell["rows"].values()]
    dates = sorted({r["date"] for r in rows if "date" in r})
    machines = sorted({r["machine"] for r in rows if "machine" in r})
    lines = [
        "## Block dropping against filter pruning (ResNet-56, CIFAR-10)",
        "",
        "Same teacher, same tiny set, same recovery (iterations, batch, learning rate, seed) for every row "
        "of a cell; accuracy on `cifar10-jpeg/val` (5,000 images); CPU latency at batch 64, 32x32. "
        "Filter pruning is Torch-Pruning's (`BasePruner`, local ranking) with L1-norm (Li et al. 2017) or "
        "Taylor importance; the Taylor loss is cross-entropy against the teacher's own predictions on the "
        "tiny set, so it needs no labels.",
        "",
        "**Filter pruning prunes block-internal channels only** (each BasicBlock's first conv, the setting "
        "of Li et al. for ResNet-56): Torch-Pruning traces the CIFAR ResNets' zero-pad (option A) shortcut "
        "as an element-wise op and the pruned network no longer runs, so every other layer is in its "
        "`ignored_layers`. Its pruning ratio is searched on measured latency until the cut is within 2 "
        "points of PRACTISE's measured cut in the same cell, first with Torch-Pruning's `round_to=8` "
        "(channel counts in multiples of 8), then without rounding where rounded widths cannot reach the cut "
        "(rounding empties the 16-channel stage-1 convs above a ratio of 0.5).",
        "",
        f"Machine: {', '.join(machines)}. Dates: {', '.join(dates)}. Commands: "
        + "".join(f"`{command}`, " for command in rerun_commands(cells))
        + "`python -m benchmarks.side_by_side --curve`, `python -m benchmarks.scoring_cost`, then "
        "`python -m benchmarks.write_benchmarks`. Raw results: `benchmarks/results/side_by_side.json`, "
        "`benchmarks/results/scoring_cost.json`.",
        "",
        "Block-drop rows recovered with MiR on real images come from the engine grid above when it holds the "
        "same run (same recipe, images, target, seed and iterations); the others were run by `side_by_side.py`.",
        "",
        f"Teacher: top-1 {teacher['top1']:.2f}%, top-5 {teacher['top5']:.2f}%, "
        f"{teacher['params'] / 1e6:.2f} M parameters, {teacher['macs'] / 1e6:.0f} M MACs.",
        "",
    ]
    if plot_name:
        lines += [f"![measured latency cut against top-1]({plot_name})", ""]
    lines += [
        "| tiny set | target | method | seeds | top-1 % | change (points) | measured cut % | MACs (M) | params (k) | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, group in sorted(_groups(cells).items(), key=lambda kv: _order(kv[0])):
        tiny_set, target, iterations = key
        lines.append(f"| {TINY_SET_NAMES.get(tiny_set, tiny_set)} | {round(100 * target)}% | teacher | | "
                     f"{teacher['top1']:.2f} | | 0 | {teacher['macs'] / 1e6:.0f} | {teacher['params'] / 1e3:.0f} | |")
        for method, label in METHODS.items():
            entries = sorted(group.get(method, []), key=lambda e: e[0])
            if not entries:
                continue
            seeds = ",".join(str(s) for s, _ in entries)
            top1 = [r["top1"] for _, r in entries]
            lines.append(
                f"| | | {label} | {seeds} | {_mean_std(top1)} | "
                f"{_mean_std([t - teacher['top1'] for t in top1])} | "
                f"{_mean_std([100 * r['reduction'] for _, r in entries], 1)} | "
                f"{_size(group, method, 'macs', 1e6)} | {_size(group, method, 'params', 1e3)} | "
                f"{_mean_std([r['wall_seconds'] for _, r in entries], 0)} |"
            )
    lines += ["", f"Recovery: {next(iter(cells.values()))['recovery_iterations']} iterations, batch 64. "
              "BP rows exist only for labelled tiny sets: real images, and synthetic ones "
              "(labelled with the class each was inverted for); out-of-domain images have no labels.", ""]
    lines += _lead_table(cells)
    lines += _search_table(cells)
    lines += _one_run_table(cells)
    lines += _curve_table(results.get("curve"))
    lines += scoring_section(scoring)
    return lines


def _size(group: dict, method: str, field: str, unit: float) -> str:
    """Mean size of the method's networks; block-drop rows take it from the same network's other rows."""
    family = method.rsplit("/", 1)[0]
    per_seed = {}
    for key, entries in group.items():
        if key.rsplit("/", 1)[0] == family:
            for seed, row in entries:
                if row.get(field) is not None:
                    per_seed.setdefault(seed, row[field])
    seeds = [seed for seed, _ in group.get(method, [])]
    values = [per_seed[s] / unit for s in seeds if s in per_seed]
    return _mean_std(values, 0) if values else ""


def _lead_table(cells: dict) -> list[str]:
    """Per seed, PRACTISE + MiR against the better filter-pruning + MiR row of the same cell.

    The last column is the ratio interval the search skipped: it stops at its first trial within
    tolerance, so a match reached in one long jump may prune more than the cut needs.
    """
    lines = ["PRACTISE + MiR against the better filter-pruning + MiR row of the same cell and seed (top-1 % at "
             "the cut % its search measured). A filter search stops at its first ratio within 2 points of the "
             "target; the last column is the interval between the largest ratio it measured short of the target "
             "and the ratio it chose, where a smaller ratio might have matched too (\"none measured short\": no trial "
             "fell short of the target):", "",
             "| cell | PRACTISE + MiR | best filter pruning + MiR | lead (points) | ratios skipped below the chosen |",
             "|---|---|---|---|---|"]
    for key, cell in sorted(cells.items(), key=lambda item: _cell_order(item[1])):
        rows = cell["rows"]
        practise = rows.get("block/recoverability/mir")
        filters = [(imp, rows[f"filter/{imp}/mir"]) for imp in ("l1", "taylor") if f"filter/{imp}/mir" in rows]
        if practise is None or not filters:
            continue
        importance, best = max(filters, key=lambda f: f[1]["top1"])
        lines.append(
            f"| {key} | {practise['top1']:.2f} ({100 * practise['reduction']:.1f}) | "
            f"{importance} {best['top1']:.2f} ({100 * best['reduction']:.1f}), ratio {best['ratio']:.3f} | "
            f"{practise['top1'] - best['top1']:+.2f} | {_skipped(cell['filter_search'].get(importance))} |"
        )
    return lines + [""]


def _skipped(search: dict | None) -> str:
    """``a–b``: the chosen ratio b and the largest ratio measured short of the target (same round_to)."""
    if not search:
        return ""
    if not search["within_tolerance"]:
        return "no match"
    # trials of the first searches carry no round_to: those searches ran unrounded only (None)
    short = [t["ratio"] for t in search["trials"]
             if t.get("measured") and t.get("round_to") == search["round_to"] and t["cut"] < search["target_cut"]
             and t["ratio"] < search["ratio"]]
    return f"{max(short):.3f}–{search['ratio']:.3f}" if short else "none measured short"


def _search_table(cells: dict) -> list[str]:
    lines = ["Filter-pruning ratio search (each trial timed against the teacher, interleaved):", "",
             "| cell | importance | target cut % | chosen ratio | round_to | its cut % | within 2 points | trials | search (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, cell in sorted(cells.items()):
        for importance, search in cell.get("filter_search", {}).items():
            lines.append(
                f"| {key} | {importance} | {100 * search['target_cut']:.1f} | {search['ratio']:.3f} | "
                f"{search['round_to'] or 'none'} | "
                f"{100 * search['cut']:.1f} | {'yes' if search['within_tolerance'] else 'no'} | "
                f"{len(search['trials'])} | {search['seconds']:.0f} |"
            )
    return lines + [""]


def _one_run_table(cells: dict) -> list[str]:
    checks = {k: c["latency_check"] for k, c in sorted(cells.items()) if "latency_check" in c}
    if not checks:
        return []
    names = sorted({n for c in checks.values() for n in c["reduction"]})
    lines = ["The networks of each cell timed again in one interleaved run (cut % against the teacher, "
             "median [IQR] of paired ratios):", "",
             "| cell | teacher ms | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key, check in checks.items():
        cuts = []
        for name in names:
            if name in check["reduction"]:
                median, q25, q75 = check["reduction"][name]
                cuts.append(f"{100 * median:.1f} [{100 * q25:.1f}, {100 * q75:.1f}]")
            else:
                cuts.append("")
        lines.append(f"| {key} | {check['ms']['teacher']:.1f} | " + " | ".join(cuts) + " |")
    return lines + [""]


def _curve_table(curve: dict | None) -> list[str]:
    if not curve or not curve.get("points"):
        return []
    by_ratio: dict[float, dict] = defaultdict(dict)
    for point in curve["points"]:
        by_ratio[point["ratio"]][point["round_to"]] = point
    lines = [f"Measured cut of L1 filter pruning against its ratio, with and without Torch-Pruning's `round_to` "
             f"({curve['date']}, `python -m benchmarks.side_by_side --curve`, {curve['repeats']} interleaved "
             "rounds per point):", "",
             "| ratio | inner channels | cut % | inner channels (round_to 8) | cut % (round_to 8) |",
             "|---|---|---|---|---|"]
    for ratio, points in sorted(by_ratio.items()):
        plain, rounded = points.get(None) or points.get("null"), points.get(8) or points.get("8")
        cells = [f"{ratio:.1f}"]
        for point in (plain, rounded):
            cells += [str(point["inner_channels"]), f"{100 * point['cut']:.1f}"] if point else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def scoring_section(scoring: dict) -> list[str]:
    records = {k: v for k, v in scoring.items() if isinstance(v, dict) and "cheap" in v}
    if not records:
        return []
    lines = ["### Cost of recoverability scoring against the reference protocol", "",
             "The default scoring (50 adaptor iterations per block, batch 32, 4 cached augmented views) against "
             "the reference protocol (1000 iterations per block, batch 64; 16 cached views), both through the "
             "same scorer with the frozen prefix cached, which only flatters the reference. Spearman's rho "
             "compares the two rankings of all candidate blocks by recoverability cost; the overlap counts "
             "common blocks among each ranking's 8 cheapest. The last column ranks by cost per ΔLat, what selection "
             "uses (block ΔLat from the 500-image engine run).", "",
             "| tiny set | blocks | default (s) | reference (s) | reference blocks done | speed-up | Spearman rho | 8 cheapest in common | rho of cost per ΔLat |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, record in sorted(records.items()):
        reference = record.get("reference", {})
        done = len(reference.get("costs", {}))
        agreement = record.get("agreement", {})
        complete = done == record["blocks"]
        lines.append(
            f"| {record['num_images']} real, seed {record['seed']} | {record['blocks']} | "
            f"{record['cheap']['seconds']:.0f} | {reference.get('seconds', 0):.0f} | {done}/{record['blocks']} | "
            + (f"{record['speedup']:.1f}x | {agreement['spearman']:.3f} | "
               f"{agreement['top_k_overlap']}/{agreement['top_k']} | {_per_delta_lat(agreement)} |"
               if complete and agreement else "| | | |")
        )
    return lines + [""]


def _per_delta_lat(agreement: dict) -> str:
    per = agreement.get("per_delta_lat")
    return f"{per['spearman']:.3f} ({per['top_k_overlap']}/{per['top_k']} in common)" if per else ""


def plot(results: dict, path: Path) -> list[str]:
    """Measured cut against top-1, one panel per tiny set and a series per method.

    One legend for the whole figure, since no single panel need hold every method (out-of-domain
    sets have no BP rows). Returns the legend's labels; none, and no file, when there is no data.
    """
    cells = results.get("cells", {})
    if not cells:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiny_sets = [t for t in TINY_SET_NAMES if any(c["tiny_set"] == t for c in cells.values())]
    figure, axes = plt.subplots(1, len(tiny_sets), figsize=(6 * len(tiny_sets), 4.5), squeeze=False)
    colours = plt.get_cmap("tab10")
    for axis, tiny_set in zip(axes[0], tiny_sets):
        for index, (method, label) in enumerate(METHODS.items()):
            points = [(100 * c["rows"][method]["reduction"], c["rows"][method]["top1"])
                      for c in cells.values() if c["tiny_set"] == tiny_set and method in c["rows"]]
            if points:
                marker = "o" if method.startswith("block") else "s"
                axis.scatter(*zip(*points), label=label, color=colours(index), marker=marker, alpha=0.8)
        axis.axhline(results["teacher"]["top1"], color="grey", linestyle="--", linewidth=1, label="teacher")
        axis.set_title(TINY_SET_NAMES[tiny_set])
        axis.set_xlabel("measured latency cut (%), CPU batch 64")
        axis.set_ylabel("top-1 on cifar10-jpeg/val (%)")
        axis.grid(alpha=0.3)
    legend = {}  # label -> handle, in the order methods first appear
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    columns = 6
    legend_rows = -(-len(legend) // columns)
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), columns), fontsize=8)
    figure.tight_layout(rect=(0, 0.04 * (legend_rows + 1), 1, 1))  # leave the legend its rows below the panels
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return list(legend)
