"""The BENCHMARKS.md section for ``any_model.py``: discovery across architecture families, and the
ResNet-56 benchmark with its teacher given as a plain module."""

from __future__ import annotations

ENGINE_RUN = "n500-t30-s1-recoverability-it2000"


def section(results: dict, engine_runs: dict) -> list[str]:
    families = results.get("families") or {}
    resnet56 = results.get("resnet56") or {}
    if not families and not resnet56:
        return []
    lines: list[str] = []
    if families:
        rows = list(families.values())
        lines += [
            "## Any model: what discovery finds (torchvision and timm, random weights, 64 px)",
            "",
            "Each family built by name with random weights at 64x64 (`timm/` ones through timm). *Blocks*: "
            "droppable whole residual blocks (the first of each stage kept, the paper's convention); *branches*: "
            "the attention and MLP (or token-mixing) branches of transformer-style blocks, offered as units of "
            "their own. Discovery is one probe forward plus an autograd read of each shape-keeping module. The "
            "cut with every block dropped is measured at batch 8 (median of 10 paired rounds); the tiny run is "
            "`dfpractise run` end to end with 32 out-of-domain images, two blocks dropped, 10 scoring and 20 "
            "recovery iterations (time only: the weights are random).",
            "",
            f"Machine: {rows[0]['machine']}, torch {rows[0]['torch']}. Dates: "
            f"{', '.join(sorted({r['date'] for r in rows}))}; commits: "
            f"{', '.join(sorted({'`' + r['commit'] + '`' for r in rows}))}.",
            "Command: `python -m benchmarks.any_model --table`, then `python -m benchmarks.write_benchmarks`. "
            "Raw results: `benchmarks/results/any_model.json`.",
            "",
            "| family | params (M) | blocks | branches | stages | discovery (s) | cut, every block dropped "
            "| tiny run (s) | features read at |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| `{row['family']}` | {row['params'] / 1e6:.1f} | {row['blocks']} | {row['branches']} | "
                f"{row['stages']} | {row['discovery_seconds']:.2f} | {100 * row['all_dropped_cut']:.1f}% | "
                f"{row['run_seconds']:.0f} | {row['feature_point']} |"
            )
    if resnet56:
        lines += ["", *_resnet56(resnet56, engine_runs)]
    return lines


def _resnet56(rows: dict, engine_runs: dict) -> list[str]:
    native = rows.get("cifar10_resnet56")
    plain = next((row for name, row in rows.items() if name != "cifar10_resnet56" and "(" not in name), None)
    shared = next((row for name, row in rows.items() if "(" in name), None)
    first = native or plain
    lines = [
        "## ResNet-56 through the generic path (500 real images, 30% target, seed 1)",
        "",
        "The real-data benchmark (`recipes/resnet56-real500.yaml`) on the same weights (`cifar10jpeg-resnet56`), "
        "once with the registered model and once with the teacher given as "
        f"`{plain['model'] if plain else '?'}`, a plain module written without this project's protocol (no "
        "`forward_features`, no `model_spec`), so that the adapter finds blocks, stages, features and head from "
        "its recorded forward alone. Each run measures its own block latencies, so they differ by the machine's "
        "noise; the third row runs the plain module on the registered run's block timings. Machine: "
        f"{first['machine']}; date {first['date']}; commits: "
        + ", ".join(f"`{r['commit']}`" for r in (native, plain, shared) if r is not None) + ".",
        "Command: `python -m benchmarks.any_model --resnet56`, then `python -m benchmarks.write_benchmarks`.",
        "",
        "| teacher given as | candidates | top-1 teacher / pruned | measured cut % [IQR] | blocks dropped | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in (("registered `cifar10_resnet56`", native), ("plain module from a file", plain),
                       ("plain module, on the registered run's block timings", shared)):
        if row is None:
            continue
        q25, q75 = row["reduction_spread"]
        lines.append(
            f"| {label} | {len(row['candidates'])} | {row['teacher_top1']:.2f} / {row['pruned_top1']:.2f} | "
            f"{100 * row['reduction']:.1f} [{100 * q25:.1f}, {100 * q75:.1f}] | {', '.join(row['dropped'])} | "
            f"{row['wall_seconds']:.0f} |"
        )
    old = engine_runs.get(ENGINE_RUN)
    if old is not None:
        q25, q75 = old["reduction_spread"]
        lines.append(
            f"| registered, before the adapter (engine grid, {old['date']}, `{old.get('commit', '?')}`) | 24 | "
            f"{old['teacher_top1']:.2f} / {old['pruned_top1']:.2f} | {100 * old['reduction']:.1f} "
            f"[{100 * q25:.1f}, {100 * q75:.1f}] | {', '.join(old['dropped'])} | {old['wall_seconds']:.0f} |"
        )
    if native and plain:
        same_candidates = native["candidates"] == plain["candidates"]
        gap = max(abs(native["costs"][k] - plain["costs"][k]) for k in native["costs"])
        text = (f"Same candidates: {'yes' if same_candidates else 'no'}. Drop costs (recoverability) of the two "
                f"paths: largest difference {gap:.2g}" + (" (identical)" if gap == 0 else "") + ". Same blocks "
                f"dropped with each run's own timings: {'yes' if native['dropped'] == plain['dropped'] else 'no'}")
        if shared is not None:
            text += (f"; with the same timings: {'yes' if native['dropped'] == shared['dropped'] else 'no'}. "
                     "Latency is the only input measured anew by each run, and the only one the two paths can "
                     "differ in")
        lines += ["", text + "."]
    return lines
