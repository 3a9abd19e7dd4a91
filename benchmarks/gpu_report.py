"""The BENCHMARKS.md section for ``gpu_pipeline.py``: the pipeline's phases on an accelerator."""

from __future__ import annotations

PHASES = ("latency", "scoring", "selection", "recovery", "verification", "total")


def section(results: dict) -> list[str]:
    """One row per measurement (each invocation of the script), then what each dropped."""
    runs = results.get("runs") or []
    if not runs:
        return []
    first = runs[0]
    gpus = sorted({run.get("gpu", run["device"]) for run in runs})
    lines = [
        f"## The pipeline on a GPU ({first['model']}, {first['resolution']}x{first['resolution']})",
        "",
        f"`{first['model']}` with random weights (seeded; BatchNorm statistics re-estimated on the tiny set so "
        "activations keep a trained network's scale), a tiny set of "
        f"{first['num_images']} ImageNet sample images through the `ood` source, a {100 * first['target']:.0f}% "
        f"latency target at batch {first['batch_size']}, {first['recovery_iterations']} MiR iterations; no "
        "accuracy is measured, only time. Scoring compares the default recoverability scoring with the reference "
        "protocol (1000 adaptor iterations per block, batch 64) through the same scorer on the same images.",
        "",
        f"GPU: {', '.join(gpus)}. Measured: " + "; ".join(
            f"run {i + 1}: {run['date']}, torch {run['torch']}, CUDA {run.get('cuda')}, commit `{run['commit']}`"
            for i, run in enumerate(runs)) + ".",
        "Command: `python -m benchmarks.gpu_pipeline --device cuda`, then `python -m benchmarks.write_benchmarks`. "
        "Raw results: `benchmarks/results/gpu_pipeline.json`.",
        "",
        "| run | " + " | ".join(f"{p} (s)" for p in PHASES)
        + " | teacher / pruned ms | measured cut % [IQR] | speed-up | GMACs teacher / pruned "
        "| scoring: default / reference (s) | reference / default | Spearman ρ |",
        "|" + "---|" * (len(PHASES) + 8),
    ]
    for index, run in enumerate(runs, start=1):
        pipeline, scoring = run["pipeline"], run.get("scoring") or {}
        q25, q75 = pipeline["reduction_spread"]
        reference = scoring.get("reference") or {}
        rho = (scoring.get("agreement") or {}).get("spearman")
        extrapolated = " (extrapolated)" if reference.get("extrapolated") else ""
        cells = [
            str(index), *(f"{pipeline['phases'].get(p, 0):.1f}" for p in PHASES),
            f"{pipeline['teacher_ms']:.2f} / {pipeline['pruned_ms']:.2f}",
            f"{100 * pipeline['reduction']:.1f} [{100 * q25:.1f}, {100 * q75:.1f}]",
            f"{pipeline['speedup']:.2f}x",
            f"{pipeline['teacher_macs'] / 1e9:.2f} / {pipeline['pruned_macs'] / 1e9:.2f}",
            (f"{scoring['cheap']['seconds']:.1f} / {reference['seconds']:.1f}{extrapolated}"
             if reference.get("seconds") is not None else "—"),
            f"{scoring['speedup']:.1f}x" if scoring.get("speedup") else "—",
            f"{rho:.3f}" if rho is not None else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Blocks dropped:", ""]
    lines += [f"- run {i}: {', '.join(run['pipeline']['dropped'])}" for i, run in enumerate(runs, start=1)]
    return lines
