"""The BENCHMARKS.md section for ``deployment.py``: the cut on eager PyTorch and on onnxruntime."""

from __future__ import annotations

RUNTIMES = {"torch": "PyTorch eager", "onnxruntime": "onnxruntime (CPU)"}


def _cut(cell: list[float]) -> str:
    median, q25, q75 = (100.0 * v for v in cell)
    return f"{median:.1f}% [{q25:.1f}, {q75:.1f}]"


def section(record: dict) -> list[str]:
    if not record:
        return []
    target = record.get("target")
    goal = f"{100 * target:.0f}%" if target else "its"
    accuracy = record.get("accuracy") or {}
    count = accuracy.get("count")
    lines = [
        f"## Deployment: the cut on onnxruntime ({record['model']}, {goal} target)",
        "",
        f"The run `{record['run']}` (selected on {RUNTIMES.get(record['selected_on'], record['selected_on'])}; "
        f"{len(record['dropped'])} blocks dropped) exported to ONNX (`dfpractise export`, the TorchScript-based "
        "exporter) and timed beside its teacher on PyTorch eager and on onnxruntime's CPU provider, all graph "
        "optimisations on, thread spinning off; each model timed in the same interleaved rounds as the teacher "
        "(median of paired ratios, IQR in brackets), both runtimes in one process with the same threads.",
        "",
        f"Machine: {record['machine']}, torch {record['torch']}, onnxruntime {record['onnxruntime']}. "
        f"Date: {record['date']}, commit `{record['commit']}`.",
        "Command: `python -m benchmarks.deployment`, then `python -m benchmarks.write_benchmarks`. Raw results: "
        "`benchmarks/results/deployment.json`.",
        "",
        "| batch | runtime | threads | rounds | teacher (ms) | pruned (ms) | measured cut |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, cells in record["latency"].items():
        for runtime, cell in cells.items():
            lines.append(f"| {batch} | {RUNTIMES.get(runtime, runtime)} | {cell['threads']} | {cell['repeats']} | "
                         f"{cell['ms']['teacher']:.2f} | {cell['ms']['pruned']:.2f} | {_cut(cell['cut']['pruned'])} |")
    if accuracy:
        lines += [
            "",
            f"Top-1 on `cifar10-jpeg/val` ({count} images), the same decoded images through PyTorch and through "
            "the ONNX file in onnxruntime; *same class*: images on which both predict the same class.",
            "",
            "| model | PyTorch top-1 | ONNX top-1 | same class | max abs logit difference |",
            "|---|---|---|---|---|",
        ]
        for name in ("teacher", "pruned"):
            row = accuracy[name]
            lines.append(f"| {name} | {row['pytorch_top1']:.2f} | {row['onnx_top1']:.2f} | {row['same_class']:.2f}% | "
                         f"{row['max_abs_diff']:.1e} |")
    checks = record.get("export") or {}
    if checks:
        lines += [
            "",
            "The export check (`dfpractise export RUN --format F`): outputs of the written file against PyTorch's; "
            "the file is kept only within 1e-4 x max(1, max |logit|).",
            "",
            "| format | checked in | on | batch sizes | max abs difference | allowed | size (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for fmt, row in checks.items():
            lines.append(f"| {fmt} | {row['runtime']} | {row['inputs']} | {', '.join(map(str, row['batch_sizes']))} "
                         f"| {row['max_abs_diff']:.1e} | {row['allowed']:.1e} | {row['bytes'] / 1e6:.1f} |")
    selection = record.get("selection")
    if selection:
        batch, cells = next(iter(selection["latency"].items()))
        names = ("torch-selected", "onnxruntime-selected")
        lines += [
            "",
            f"The same recipe selected with `--latency-backend onnxruntime` (`{selection['run']}`, "
            f"{selection['recovery_iterations']} recovery and {selection['score_iterations']} scoring iterations): "
            "its blocks are timed and its cut confirmed on onnxruntime. Both pruned models timed again here, in "
            f"the same rounds, on both runtimes at batch {batch}; top-1 and the cut each run verified at its end "
            "from its report.",
            "",
            f"| model | blocks dropped | top-1 | cut verified by its run | cut on {RUNTIMES['torch']} "
            f"| cut on {RUNTIMES['onnxruntime']} | meets {goal} on onnxruntime |",
            "|---|---|---|---|---|---|---|",
            f"| teacher | 0 | {_top1(selection['top1'].get('teacher'))} | — | — | — | — |",
        ]
        for name in names:
            ort_cut = cells["onnxruntime"]["cut"][name][0]
            meets = "yes" if target is not None and ort_cut >= target else "no"
            own = (selection.get("run_reports") or {}).get(name) or {}
            verified = (f"{100 * own['reduction']:.1f}% ({RUNTIMES.get(own.get('backend', 'torch'), '?')})"
                        if isinstance(own.get("reduction"), (int, float)) else "—")
            lines.append(f"| {name} | {len(selection['dropped'][name])} | {_top1(selection['top1'].get(name))} | "
                         f"{verified} | {_cut(cells['torch']['cut'][name])} | "
                         f"{_cut(cells['onnxruntime']['cut'][name])} | {meets} |")
    return lines


def _top1(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "—"
