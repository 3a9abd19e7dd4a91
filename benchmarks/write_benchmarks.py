"""Write BENCHMARKS.md from the JSON results of the benchmark scripts (nothing is typed by hand).

    python -m benchmarks.write_benchmarks
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks import (any_model_report, deployment_report, gpu_report, robustness_report, side_by_side_report,
                        sweep_report)
from benchmarks import (compile_probe, data_free_report, distributed_report, latency_agreement,
                        recovery_settings_report, set_costs_report, speed_report)
from benchmarks import landing_noise
from synthesizers.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "engine.json"
SOURCES_RESULTS = ROOT / "benchmarks" / "results" / "sources.json"
SYNTHESIS_RESULTS = ROOT / "benchmarks" / "results" / "synthesis.json"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "default_run.json"
SIDE_BY_SIDE_RESULTS = ROOT / "benchmarks" / "results" / "side_by_side.json"
SCORING_RESULTS = ROOT / "benchmarks" / "results" / "scoring_cost.json"
GPU_RESULTS = ROOT / "benchmarks" / "results" / "gpu_pipeline.json"
ANY_MODEL_RESULTS = ROOT / "benchmarks" / "results" / "any_model.json"
ROBUSTNESS_RESULTS = ROOT / "benchmarks" / "results" / "robustness.json"
ROBUSTNESS_PLOT = ROOT / "benchmarks" / "results" / "robustness.png"
DEPLOYMENT_RESULTS = ROOT / "benchmarks" / "results" / "deployment.json"
DISTRIBUTED_RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"
SIDE_BY_SIDE_PLOT = ROOT / "benchmarks" / "results" / "side_by_side.png"
SWEEP_RESULTS = ROOT / "benchmarks" / "results" / "sweep.json"
SPEED_RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
SPEED_CUDA_RESULTS = ROOT / "benchmarks" / "results" / "speed_cuda.json"
STEP_RESULTS = ROOT / "benchmarks" / "results" / "compile_probe.json"
DATA_FREE_RESULTS = ROOT / "benchmarks" / "results" / "data_free.json"
AGREEMENT_RESULTS = ROOT / "benchmarks" / "results" / "latency_agreement.json"
RECOVERY_SETTINGS_RESULTS = ROOT / "benchmarks" / "results" / "recovery_settings.json"
SET_COSTS_RESULTS = ROOT / "benchmarks" / "results" / "set_costs.json"
SOURCE_NAMES = {
    "synthetic": "data-free: 512 BN-inversion images",
    "ood": "out-of-domain: 1000 ImageNet sample images",
    "real": "500 real CIFAR-10 training images",
}
OUT = ROOT / "BENCHMARKS.md"

SCORER_NAMES = {"recoverability": "PRACTISE (recoverability)", "random": "random blocks", "latency-only": "latency-only"}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


ENGINE_PHASES = ("latency", "scoring", "selection", "recovery", "evaluation", "total")


def phase_table(runs: dict, phases: tuple[str, ...], with_commit: bool = False) -> list[str]:
    """One row of phase wall times (seconds) per run, in run-name order."""
    header = ["run", *phases, *(["commit"] if with_commit else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, run in sorted(runs.items()):
        cells = [key, *(f"{run['phases'].get(p, 0):.0f}" for p in phases)]
        if with_commit:
            cells.append(f"`{run.get('commit', '?')}`")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def engine_section(runs: dict, title: str = "## PRACTISE on real few-shot data (ResNet-56, CIFAR-10)",
                   command: str = "`python -m benchmarks.engine_grid --grid headline` and `--grid small`",
                   raw: str = "benchmarks/results/engine.json", recovery: str = "MiR recovery") -> list[str]:
    if not runs:
        return ["No engine runs recorded yet."]
    any_run = next(iter(runs.values()))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs.values():
        groups[(run["num_images"], run["target"], run["recovery_iterations"], run["scorer"])].append(run)
    dates = sorted({r["date"] for r in runs.values()})
    lines = [
        title,
        "",
        f"Teacher `cifar10jpeg-resnet56` (top-1 {any_run['teacher_top1']:.2f}% on `cifar10-jpeg/val`, 5,000 images); "
        f"tiny sets drawn at random from `cifar10-jpeg/train`; {recovery}; CPU latency at batch 64, 32x32, "
        "eval mode, measured in the same process as the teacher's (median of paired, interleaved ratios; "
        "IQR in brackets).",
        "",
        f"Machine: {any_run['machine']}. Dates: {', '.join(dates)}.",
        f"Command: {command}, then `python -m benchmarks.write_benchmarks`. Raw results: `{raw}`.",
        "",
        "| images | target | recovery iters | scorer | runs (seeds) | top-1 pruned | top-1 drop (points) | measured cut % | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (num_images, target, iterations, scorer), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], list(SCORER_NAMES).index(kv[0][3]))):
        seeds = ",".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"]))
        cut = mean_std([100 * r["reduction"] for r in group])
        if len(group) == 1:
            q25, q75 = group[0]["reduction_spread"]
            cut += f" [{100 * q25:.1f}, {100 * q75:.1f}]"
        lines.append(
            f"| {num_images} | {int(round(100 * target))}% | {iterations} | {SCORER_NAMES.get(scorer, scorer)} | "
            f"{len(group)} ({seeds}) | {mean_std([r['pruned_top1'] for r in group])} | "
            f"{mean_std([r['drop_top1'] for r in group])} | {cut} | {mean_std([r['wall_seconds'] for r in group])} |"
        )
    lines += ["", "Phase wall times of each run (seconds; latency and scoring are 0 where a run reused "
              "the timings and scores of an earlier run in the same process), and the commit it measured:", ""]
    lines += phase_table(runs, ENGINE_PHASES, with_commit=True)
    lines += ["", "Blocks dropped:", ""]
    for key, run in sorted(runs.items()):
        lines.append(f"- {key}: {', '.join(run['dropped'])}")
    return lines


RERUN_RESULTS = ROOT / "benchmarks" / "results" / "engine_rerun.json"
POOLED_RESULTS = ROOT / "benchmarks" / "results" / "engine_pooled.json"
WINDOW_POINTS = landing_noise.WINDOW_POINTS


def landing_section(runs: dict) -> list[str]:
    """Where each run's measured cut landed against its target, and the prediction against it."""
    rows = sorted(runs.items(), key=lambda kv: (kv[1]["num_images"], kv[1]["target"], kv[1]["seed"],
                                                 list(SCORER_NAMES).index(kv[1]["scorer"]), kv[0]))
    inside = [r for _, r in rows if 0.0 <= 100 * (r["reduction"] - r["target"]) <= WINDOW_POINTS]
    predicted = [r for _, r in rows if r.get("predicted_reduction") is not None]
    close = [r for r in predicted if abs(100 * (r["predicted_reduction"] - r["reduction"])) <= 2.0]
    confirmed = [r for _, r in rows if 0.0 <= 100 * (r["selection_reduction"] - r["target"]) <= WINDOW_POINTS]
    lines = [
        "Where the cuts landed: the cut the latency model predicted for the chosen blocks, the selection's "
        "confirming measurement, and the verification of the recovered model (a second measurement, after "
        "recovery, in the same process).",
        "",
        f"- verified cut inside [target, target + {WINDOW_POINTS:.0f}]: **{len(inside)} of {len(rows)} runs** "
        f"({100 * len(inside) / len(rows):.0f}%); below the target: "
        f"{sum(1 for _, r in rows if r['reduction'] < r['target'])}; above the window: "
        f"{sum(1 for _, r in rows if 100 * (r['reduction'] - r['target']) > WINDOW_POINTS)}",
        f"- confirming measurement inside the window: {len(confirmed)} of {len(rows)}",
        f"- prediction within 2 points of the verified cut: **{len(close)} of {len(predicted)} runs**",
        "",
        "| run | target | blocks | predicted cut | confirmed cut | verified cut | verified - target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, run in rows:
        guess = run.get("predicted_reduction")
        lines.append(
            f"| {key} | {100 * run['target']:.0f}% | {len(run['dropped'])} | "
            f"{'-' if guess is None else f'{100 * guess:.1f}%'} | {100 * run['selection_reduction']:.1f}% | "
            f"{100 * run['reduction']:.1f}% | {100 * (run['reduction'] - run['target']):+.1f} |")
    return lines


def sources_section(runs: dict, engine_runs: dict) -> list[str]:
    """Data-free, out-of-domain and real tiny sets side by side at the 30% target."""
    if not runs:
        return ["No source runs recorded yet."]
    rows = dict(runs)
    borrowed = None
    if not any(r["source"] == "real" for r in rows.values()):
        for key, run in engine_runs.items():
            if (run["num_images"], run["target"], run["scorer"], run["recovery_iterations"]) == (500, 0.3, "recoverability", 2000):
                borrowed = key
                rows[f"real (engine run {key})"] = {**run, "source": "real", "tiny_set": None}
                break
    any_run = next(iter(runs.values()))
    lines = [
        "## Data-free and out-of-domain tiny sets (ResNet-56, CIFAR-10, 30% target)",
        "",
        f"Teacher `cifar10jpeg-resnet56` (top-1 {any_run['teacher_top1']:.2f}% on `cifar10-jpeg/val`); PRACTISE "
        "scoring, MiR recovery (2000 iterations), CPU latency at batch 64, 32x32; one seed. The data-free row "
        "uses no real image anywhere (BN-statistics inversion of the teacher); the out-of-domain row uses "
        "ImageNet images whose labels mean nothing to a CIFAR-10 model. Synthesis time is a fresh generation "
        "(the benchmark empties its cache first) and is part of the wall time.",
        "",
        f"Machine: {any_run['machine']}. Dates: {', '.join(sorted({r['date'] for r in runs.values()}))}.",
        "Command: `python -m benchmarks.sources_grid`, then `python -m benchmarks.write_benchmarks`. "
        "Raw results: `benchmarks/results/sources.json`.",
        "",
        "| tiny set | top-1 pruned | top-1 change (points) | measured cut % [IQR] | synthesis (s) | teacher agrees with intended class | BN-statistics distance | wall time (s) | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(SOURCE_NAMES)
    for key, run in sorted(rows.items(), key=lambda kv: (order.index(kv[1]["source"]), kv[1]["seed"])):
        tiny = run.get("tiny_set") or {}
        q25, q75 = run["reduction_spread"]
        synthesis = f"{tiny['synthesis_seconds']:.0f}" if tiny.get("synthesis_seconds") else "—"
        agreement = f"{100 * tiny['agreement']:.1f}%" if tiny.get("agreement") is not None else "—"
        bn = f"{tiny['bn_distance']:.1f}" if tiny.get("bn_distance") is not None else "—"
        lines.append(
            f"| {SOURCE_NAMES[run['source']]} (seed {run['seed']}) | {run['pruned_top1']:.2f} | "
            f"{-run['drop_top1']:+.2f} | {100 * run['reduction']:.1f} [{100 * q25:.1f}, {100 * q75:.1f}] | "
            f"{synthesis} | {agreement} | {bn} | {run['wall_seconds']:.0f} | `{run.get('commit', '?')}` |"
        )
    if borrowed:
        lines += ["", f"The real-image row is the engine benchmark's run `{borrowed}` (same recipe and settings, "
                  "measured by `benchmarks/engine_grid.py`), not rerun here."]
    lines += ["", "Phase wall times (seconds; `data` includes synthesis):", ""]
    lines += phase_table(rows, ("data", *ENGINE_PHASES))
    lines += ["", "Blocks dropped:", ""]
    lines += [f"- {key}: {', '.join(run['dropped'])}" for key, run in sorted(rows.items())]
    return lines


def synthesis_section(runs: dict) -> list[str]:
    """Speed and quality of each synthesizer on its own, with real and noise references."""
    if not runs:
        return []
    lines = [
        "## Synthesis speed (BN-statistics inversion and the generator, ResNet-56, 512 images at 32x32)",
        "",
        "Command: `python -m benchmarks.synthesis_speed` (with `--variants`: each set made in the same run, "
        "timed against the run's first), then `python -m benchmarks.write_benchmarks`. "
        "Raw results: `benchmarks/results/synthesis.json`. The BN-statistics distance is the sum over the "
        "teacher's BatchNorm layers of ||batch mean - running mean|| + ||batch variance - running variance|| "
        "(unweighted), averaged over batches of the synthesis batch size; "
        "512 real CIFAR-10 training images and 512 Gaussian-noise images give its scale.",
        "",
        "| set | settings | wall time (s) | speed-up (same run) | teacher agrees with intended class | BN-statistics distance | real images: distance / teacher top-1 | noise: distance | date | machine | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, run in sorted(runs.items(), key=lambda item: (item[1]["date"], item[1]["commit"], item[0])):
        settings = run["settings"]
        statistics = run.get("changes", {}).get("statistics")  # the benchmark's reference, not a setting
        if run.get("method", "bn-inversion") == "generator":
            described = (f"generator: {settings['meta_steps']} meta-steps then {settings['steps']} steps per batch, "
                         f"batch {settings['batch_size']}, {settings.get('precision', 'fp32')}")
        else:
            described = (f"{settings['steps']} steps (warm start {settings['warm_start']}), batch "
                         f"{settings['batch_size']}, lr {settings['lr']}, {settings.get('precision', 'fp32')}"
                         + (f", BN statistics by {statistics}" if statistics else ""))
        speedup = (f"{run['speedup']:.2f}x {run['baseline']}" if run.get("baseline") and run["baseline"] != key
                   else "—")
        lines.append(
            f"| {key} | {described} | {run['synthesis_seconds']:.0f} | {speedup} | {100 * run['agreement']:.1f}% | "
            f"{run['bn_distance']:.1f} | {run['real_bn_distance']:.1f} / {100 * run['real_agreement']:.1f}% | "
            f"{run['noise_bn_distance']:.1f} | {run['date']} | {run['machine']} | `{run['commit']}` |"
        )
    return lines


def default_run_section(runs: dict) -> list[str]:
    """The default job (`make run`) timed from nothing, with the table it printed."""
    run = runs.get("default")
    if run is None:
        return []
    tiny = run.get("tiny_set") or {}
    p = run["phases"]
    return [
        "## The default job (`make run`)",
        "",
        f"`{run['command']}` with an empty synthetic cache, {run['date']}, {run['machine']}, commit "
        f"`{run['commit']}`: **{run['wall_seconds']:.0f} s** for the whole command "
        f"(synthesis {tiny.get('synthesis_seconds', 0):.0f} s, latency {p.get('latency', 0):.0f} s, scoring "
        f"{p.get('scoring', 0):.0f} s, selection {p.get('selection', 0):.0f} s, recovery {p.get('recovery', 0):.0f} s, "
        f"evaluation {p.get('evaluation', 0):.0f} s). Top-1 {run['teacher_top1']:.2f} -> {run['pruned_top1']:.2f} "
        f"({-run['drop_top1']:+.2f} points) at a measured {100 * run['reduction']:.1f}% cut; the teacher agreed "
        f"with the intended class on {100 * tiny.get('agreement', 0):.1f}% of the synthetic images. "
        "Command: `python -m benchmarks.default_run`. What it printed:",
        "",
        "```",
        run["printed_table"].rstrip(),
        "```",
    ]


def main() -> None:
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else {}
    rerun = json.loads(RERUN_RESULTS.read_text())["runs"] if RERUN_RESULTS.exists() else {}
    pooled = json.loads(POOLED_RESULTS.read_text())["runs"] if POOLED_RESULTS.exists() else {}
    noise = json.loads(landing_noise.RESULTS.read_text()) if landing_noise.RESULTS.exists() else {}
    source_runs = json.loads(SOURCES_RESULTS.read_text())["runs"] if SOURCES_RESULTS.exists() else {}
    synthesis_runs = json.loads(SYNTHESIS_RESULTS.read_text())["runs"] if SYNTHESIS_RESULTS.exists() else {}
    default_runs = json.loads(DEFAULT_RESULTS.read_text())["runs"] if DEFAULT_RESULTS.exists() else {}
    side_by_side = json.loads(SIDE_BY_SIDE_RESULTS.read_text()) if SIDE_BY_SIDE_RESULTS.exists() else {}
    scoring = json.loads(SCORING_RESULTS.read_text()) if SCORING_RESULTS.exists() else {}
    gpu = json.loads(GPU_RESULTS.read_text()) if GPU_RESULTS.exists() else {}
    any_model = json.loads(ANY_MODEL_RESULTS.read_text()) if ANY_MODEL_RESULTS.exists() else {}
    robustness = json.loads(ROBUSTNESS_RESULTS.read_text()) if ROBUSTNESS_RESULTS.exists() else {}
    deployment = json.loads(DEPLOYMENT_RESULTS.read_text()) if DEPLOYMENT_RESULTS.exists() else {}
    sweeps = json.loads(SWEEP_RESULTS.read_text()) if SWEEP_RESULTS.exists() else {}
    distributed = json.loads(DISTRIBUTED_RESULTS.read_text()) if DISTRIBUTED_RESULTS.exists() else {}
    speed = json.loads(SPEED_RESULTS.read_text()) if SPEED_RESULTS.exists() else {}
    speed_cuda = json.loads(SPEED_CUDA_RESULTS.read_text()) if SPEED_CUDA_RESULTS.exists() else {}
    step = json.loads(STEP_RESULTS.read_text()) if STEP_RESULTS.exists() else {}
    data_free = json.loads(DATA_FREE_RESULTS.read_text()) if DATA_FREE_RESULTS.exists() else {}
    agreement = json.loads(AGREEMENT_RESULTS.read_text()) if AGREEMENT_RESULTS.exists() else {}
    recovery_settings = json.loads(RECOVERY_SETTINGS_RESULTS.read_text()) if RECOVERY_SETTINGS_RESULTS.exists() else {}
    set_costs = json.loads(SET_COSTS_RESULTS.read_text()) if SET_COSTS_RESULTS.exists() else {}
    plotted = side_by_side_report.plot(side_by_side, SIDE_BY_SIDE_PLOT)
    plot_name = str(SIDE_BY_SIDE_PLOT.relative_to(ROOT)) if plotted else None
    notes_path = ROOT / "benchmarks" / "NOTES.md"
    lines = [
        "# Benchmarks",
        "",
        "Every figure below is written by `benchmarks/write_benchmarks.py` from JSON that the scripts in "
        "`benchmarks/` produce; rerun them to reproduce. Speed is always a ratio measured within one run.",
        "",
        *engine_section(runs),
        "",
        *([*engine_section(
            rerun, "## The engine grid again: bounded target window, mir-stages with mixup (ResNet-56, CIFAR-10)",
            "`python -m benchmarks.engine_grid --grid headline --results benchmarks/results/engine_rerun.json` and "
            "`--grid small --recovery-iterations 500` and `--grid small --num-images 50 --targets 0.4 --scorers "
            "recoverability` (same results file)", "benchmarks/results/engine_rerun.json",
            "recovery with the defaults of 2026-12-05 (mir-stages: every stage's output and the feature map, "
            "mixup blends)"),
           "", *landing_section(rerun), ""] if rerun else []),
        *([*engine_section(
            pooled, "## The engine grid a third time: selection pooled over its readings (ResNet-56, CIFAR-10)",
            "`python -m benchmarks.engine_grid --grid headline --results benchmarks/results/engine_pooled.json "
            "--runs-dir runs/bench-pooled` and `--grid small --recovery-iterations 500` and `--grid small "
            "--num-images 50 --targets 0.4 --scorers recoverability` (same results file and runs folder)",
            "benchmarks/results/engine_pooled.json",
            "the same recovery as the grid above; only the selection changed (its model pooled over every "
            "reading, a short set topped up by a little rather than a whole block)"),
           "", *landing_section(pooled), ""] if pooled else []),
        *([*landing_noise.section(noise), ""] if noise else []),
        *sources_section(source_runs, runs),
        "",
        *synthesis_section(synthesis_runs),
        "",
        *([*data_free_report.section(data_free), ""] if data_free_report.section(data_free) else []),
        *default_run_section(default_runs),
        "",
        *([*speed_report.section(speed), ""] if speed_report.section(speed) else []),
        *([*speed_report.section(speed_cuda, str(SPEED_CUDA_RESULTS.relative_to(ROOT))), ""]
          if speed_report.section(speed_cuda) else []),
        *([*compile_probe.section(step), ""] if step else []),
        *([*latency_agreement.section(agreement), ""] if agreement else []),
        *([*recovery_settings_report.section(recovery_settings), ""] if recovery_settings else []),
        *([*set_costs_report.section(set_costs), ""] if set_costs else []),
        *side_by_side_report.section(side_by_side, scoring, plot_name),
        "",
        *gpu_report.section(gpu),
        *(["", *any_model_report.section(any_model, runs)] if any_model else []),
        *(["", *robustness_report.section(robustness, ROBUSTNESS_PLOT, ROOT)] if robustness else []),
        *(["", *deployment_report.section(deployment)] if deployment else []),
        *(["", *sweep_report.section(sweeps, SWEEP_RESULTS.parent, ROOT)] if sweeps else []),
        *(["", *distributed_report.section(distributed)] if distributed_report.section(distributed) else []),
    ]
    if notes_path.exists():
        lines += ["", notes_path.read_text().strip()]
    write_text_atomic(OUT, "\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
