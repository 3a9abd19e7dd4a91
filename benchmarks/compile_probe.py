"""Where the recovery step's time goes, and what compiling or other arithmetic would save
(issue: faster and steadier, part 1).

The recovery step of the headline run (ResNet-56 without the eight blocks it dropped, batch 64,
channels_last, bf16 autocast where native, SGD) with the student's stage features read by a plain
function instead of the adapter's hooks, so that ``torch.compile`` (inductor) sees one graph. The
teacher's targets are computed outside the timed part, as the pool of teacher views does. Three
parts, each written into the results file as it finishes (the others' earlier results are kept):

- ``compile``: eager, compiled from an empty inductor cache (what a first run on a machine pays),
  compiled again from the cache it filled (what later runs pay), eager again, in one process: the
  steady-state seconds per iteration (median after 10) and the first three iterations' time (the
  compile). Recovery pays back the compile once iterations x (eager - compiled) exceeds it.
- ``arithmetic``: the eager step under each arithmetic setting (``ARITHMETIC``: what recovery runs,
  float32, float32 with oneDNN's bf16 convolutions instead of autocast, autocast in contiguous
  memory), interleaved over rounds, median per setting.
- ``profile``: the default step under torch's profiler, its CPU time summed by family of operator
  (``FAMILIES``): what a faster step would have to shorten.

    python -m benchmarks.compile_probe
    python -m benchmarks.compile_probe --parts arithmetic profile

Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import engine_grid
from dfpractise import allocator
from dfpractise import precision as precisions
from dfpractise.models.blocks import drop_blocks
from dfpractise.models.reference import load_model
from synthesizers.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compile_probe.json"
DROPPED = ["layer1.2", "layer1.4", "layer1.5", "layer1.8", "layer2.1", "layer2.4", "layer2.5", "layer2.6"]
"""The blocks the headline run (500 images, 30%) dropped in the engine grids of 2026-12-05."""


def stage_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every stage's output of a CIFAR ResNet, flattened side by side (what mir-stages matches)."""
    x = F.relu(model.bn1(model.conv1(x)))
    first = model.layer1(x)
    second = model.layer2(first)
    third = model.layer3(second)
    return torch.cat([first.flatten(1), second.flatten(1), third.flatten(1)], dim=1)


ARITHMETIC = {
    "bf16-autocast": ("auto", None, torch.channels_last),
    "fp32": ("fp32", None, torch.channels_last),
    "fp32-onednn-bf16": ("fp32", "bf16", torch.channels_last),
    "bf16-autocast-contiguous": ("auto", None, torch.contiguous_format),
}
"""Arithmetic settings of the ``arithmetic`` part: (the run's ``precision``, oneDNN's float32
precision for convolutions and matrix products, memory format). The first is what recovery runs."""

FAMILIES = {
    "convolution": ("convolution", "conv"),
    "batch norm": ("batch_norm",),
    "relu": ("relu", "clamp_min", "threshold_backward"),
    "elementwise (residual adds, optimiser)": ("add", "mul", "addcmul", "sgd", "div", "sub", "fill_", "zero_"),
    "copies and casts": ("copy", "cat", "contiguous", "clone"),
    "loss": ("mse_loss",),
}
"""Operator families of the ``profile`` part: the first family one of whose words occurs in an aten
operator's name takes it; everything else (allocations, views) is 'other'."""


def _step_setup(teacher: torch.nn.Module, dtype: torch.dtype | None, memory_format: torch.memory_format):
    torch.manual_seed(0)
    teacher = teacher.to(memory_format=memory_format)
    student = drop_blocks(teacher, DROPPED).to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9)
    batches = [torch.randn(64, 3, 32, 32).contiguous(memory_format=memory_format) for _ in range(4)]
    with torch.no_grad(), precisions.autocast(dtype, "cpu"):
        wanted = [stage_features(teacher, x).float() for x in batches]
    return student, optimizer, batches, wanted


def _steps(features, student, optimizer, batches, wanted, dtype, iterations: int) -> list[float]:
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        with precisions.autocast(dtype, "cpu"):
            loss = F.mse_loss(features(student, batches[i % 4]).float(), wanted[i % 4])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def trial(teacher: torch.nn.Module, compiled: str | None, iterations: int, dtype: torch.dtype | None) -> dict:
    """One trial: ``compiled`` None (eager), 'cold' or 'warm' (the inductor cache's state)."""
    torch._dynamo.reset()  # a warm trial compiles again, from the cache
    student, optimizer, batches, wanted = _step_setup(teacher, dtype, torch.channels_last)
    features = torch.compile(stage_features) if compiled else stage_features
    times = _steps(features, student, optimizer, batches, wanted, dtype, iterations)
    return {"compiled": compiled or "eager", "first_three_s": sum(times[:3]), "steady_s_per_it": statistics.median(times[10:])}


@contextlib.contextmanager
def _onednn_precision(precision: str | None):
    """oneDNN's float32 precision for convolutions and matrix products ('bf16': computed in bf16
    from float32 tensors), restored afterwards."""
    if precision is None:
        yield
        return
    backends = (torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul)
    before = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = precision
    try:
        yield
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value


def arithmetic(teacher: torch.nn.Module, iterations: int, rounds: int) -> dict:
    """Seconds per eager step under each of ``ARITHMETIC``, interleaved over ``rounds``."""
    times: dict[str, list[float]] = {name: [] for name in ARITHMETIC}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for name, (precision, onednn, memory_format) in ARITHMETIC.items():
            dtype = precisions.resolve(precision, "cpu")
            with _onednn_precision(onednn):
                student, optimizer, batches, wanted = _step_setup(teacher, dtype, memory_format)
                times[name].append(statistics.median(
                    _steps(stage_features, student, optimizer, batches, wanted, dtype, iterations)[10:]))
                with torch.no_grad(), precisions.autocast(dtype, "cpu"):
                    losses[name] = F.mse_loss(stage_features(student, batches[0]).float(), wanted[0]).item()
    default = statistics.median(times["bf16-autocast"])
    return {name: {"steady_s_per_it": statistics.median(t), "rounds": t, "over_default": statistics.median(t) / default,
                   "loss_after": losses[name]} for name, t in times.items()}


def family(operator: str) -> str:
    """The ``FAMILIES`` entry an aten operator's name falls in, or 'other'."""
    name = operator.removeprefix("aten::")
    for label, words in FAMILIES.items():
        if any(word in name for word in words):
            return label
    return "other"


def profile(teacher: torch.nn.Module, iterations: int, dtype: torch.dtype | None) -> dict:
    """The default step's self CPU time by operator family, per step (milliseconds) and as shares."""
    student, optimizer, batches, wanted = _step_setup(teacher, dtype, torch.channels_last)
    _steps(stage_features, student, optimizer, batches, wanted, dtype, 10)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wall = sum(_steps(stage_features, student, optimizer, batches, wanted, dtype, iterations))
    by_family: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            label = family(event.key)
            by_family[label] = by_family.get(label, 0.0) + event.self_cpu_time_total / 1e3
    total = sum(by_family.values())
    return {"iterations": iterations, "wall_ms_per_it": 1e3 * wall / iterations,
            "families": {label: {"ms_per_it": ms / iterations, "share": ms / total}
                         for label, ms in sorted(by_family.items(), key=lambda kv: -kv[1])}}


def section(record: dict) -> list[str]:
    """The BENCHMARKS.md section: the step's time by operator family, each arithmetic setting and the
    compile trials, from what the results file holds."""
    if not record:
        return []
    lines = [
        "## The recovery step: where its time goes (ResNet-56 without the headline run's eight blocks, batch 64)",
        "",
        "One step of recovery (student forward, mir-stages loss against pooled teacher targets, backward, SGD) "
        "timed alone in one process. Machine: "
        f"{record.get('machine')}, torch {record.get('torch')}. Raw results: `benchmarks/results/compile_probe.json`.",
    ]
    profile = record.get("profile")
    if profile:
        lines += [
            "",
            f"Self CPU time by operator family, per step, bf16 autocast and channels_last (what recovery runs; C "
            "heap fixed as in a run): "
            f"`{profile['command'].strip()}`, {profile['date']}, commit `{profile['commit']}`; "
            f"{profile['iterations']} profiled steps of {profile['wall_ms_per_it']:.0f} ms each (the profiler "
            "adds a little).",
            "",
            "| operator family | ms per step | share |",
            "|---|---|---|",
            *(f"| {label} | {row['ms_per_it']:.1f} | {100 * row['share']:.1f}% |"
              for label, row in profile["families"].items()),
        ]
    arithmetic = record.get("arithmetic")
    if arithmetic:
        lines += [
            "",
            f"Each arithmetic setting, {arithmetic['rounds']} interleaved rounds of {arithmetic['iterations']} steps "
            f"(median after 10 each): `{arithmetic['command'].strip()}`, {arithmetic['date']}, commit "
            f"`{arithmetic['commit']}`. The loss after the steps says the settings train alike.",
            "",
            "| setting | s per step | rounds | this / default | loss after |",
            "|---|---|---|---|---|",
            *(f"| {name} | {row['steady_s_per_it']:.3f} | {', '.join(f'{t:.3f}' for t in row['rounds'])} | "
              f"{row['over_default']:.2f}x | {row['loss_after']:.4f} |" for name, row in arithmetic["settings"].items()),
        ]
    if record.get("trials"):
        lines += [
            "",
            f"`torch.compile` of the same step: `{record.get('command', 'python -m benchmarks.compile_probe')}`, "
            f"{record.get('date')}, commit `{record.get('commit')}`.",
            "",
            "| trial | first three steps (s) | s per step, steady |",
            "|---|---|---|",
            *(f"| {t['compiled']} | {t['first_three_s']:.2f} | {t['steady_s_per_it']:.3f} |" for t in record["trials"]),
            "",
            f"Eager / compiled: {record['eager_over_compiled']:.2f}x; the compile pays back after "
            + ", ".join(f"{v:.0f} iterations ({k} cache)" for k, v in record["break_even_iterations"].items()
                        if v is not None) + ".",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per trial (at least 20)")
    parser.add_argument("--parts", nargs="+", choices=("compile", "arithmetic", "profile"),
                        default=["compile", "arithmetic", "profile"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the arithmetic part")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.iterations < 20:
        sys.exit("--iterations must be at least 20 (ten warm-up iterations, then the median of the rest)")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    allocator.steady_allocator()  # as in a run, whose latency phase fixes the C heap first
    teacher, _, _ = load_model("cifar10_resnet56", "cifar10jpeg-resnet56")
    teacher = teacher.to(memory_format=torch.channels_last).eval()
    dtype = precisions.resolve("auto", "cpu")
    record = json.loads(args.results.read_text()) if args.results.exists() else {}
    record.update({"machine": engine_grid.machine(), "torch": torch.__version__, "precision": precisions.name(dtype)})
    stamp = {"date": dt.date.today().isoformat(), "commit": engine_grid.commit(),
             "command": "python -m benchmarks.compile_probe " + " ".join(sys.argv[1:])}
    for part in args.parts:
        if part == "compile":
            with tempfile.TemporaryDirectory() as cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
                trials = [trial(teacher, compiled, args.iterations, dtype) for compiled in (None, "cold", "warm", None)]
            eager = statistics.mean(t["steady_s_per_it"] for t in trials if t["compiled"] == "eager")
            by_state = {t["compiled"]: t for t in trials}
            compiled = statistics.mean(by_state[s]["steady_s_per_it"] for s in ("cold", "warm"))
            saving = eager - compiled
            record.update({**stamp, "trials": trials, "eager_over_compiled": eager / compiled,
                           "break_even_iterations": {s: by_state[s]["first_three_s"] / saving if saving > 0 else None
                                                     for s in ("cold", "warm")}})
        elif part == "arithmetic":
            record["arithmetic"] = {**stamp, "rounds": args.rounds, "iterations": args.iterations,
                                    "settings": arithmetic(teacher, args.iterations, args.rounds)}
        else:
            record["profile"] = {**stamp, **profile(teacher, args.iterations, dtype)}
        write_text_atomic(args.results, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
