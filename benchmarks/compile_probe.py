"""Would ``torch.compile`` pay back its compile time in recovery? (issue: faster and steadier, part 1)

An upper bound, before any setting is built: the recovery step of the headline run (ResNet-56
without the eight blocks it dropped, batch 64, channels_last, bf16 autocast where native, SGD) with
the student's stage features read by a plain function instead of the adapter's hooks, so that
``torch.compile`` (inductor) sees one graph. The teacher's targets are computed outside the timed
part, as the pool of teacher views does. Eager, compiled from an empty inductor cache (what a
first run on a machine pays), compiled again from the cache it filled (what later runs pay),
eager again, in one process: the steady-state seconds per iteration (median after 10) and the
first three iterations' time (the compile). Recovery pays back the compile once iterations x
(eager - compiled) exceeds it.

    python -m benchmarks.compile_probe

Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
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


def trial(teacher: torch.nn.Module, compiled: str | None, iterations: int, dtype: torch.dtype | None) -> dict:
    """One trial: ``compiled`` None (eager), 'cold' or 'warm' (the inductor cache's state)."""
    torch._dynamo.reset()  # a warm trial compiles again, from the cache
    torch.manual_seed(0)
    student = drop_blocks(teacher, DROPPED).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9)
    features = torch.compile(stage_features) if compiled else stage_features
    batches = [torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    with torch.no_grad(), precisions.autocast(dtype, "cpu"):
        wanted = [stage_features(teacher, x).float() for x in batches]
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        with precisions.autocast(dtype, "cpu"):
            loss = F.mse_loss(features(student, batches[i % 4]).float(), wanted[i % 4])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"compiled": compiled or "eager", "first_three_s": sum(times[:3]), "steady_s_per_it": statistics.median(times[10:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per trial (at least 20)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.iterations < 20:
        sys.exit("--iterations must be at least 20 (ten warm-up iterations, then the median of the rest)")
    teacher, _, _ = load_model("cifar10_resnet56", "cifar10jpeg-resnet56")
    teacher = teacher.to(memory_format=torch.channels_last).eval()
    dtype = precisions.resolve("auto", "cpu")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        trials = [trial(teacher, compiled, args.iterations, dtype) for compiled in (None, "cold", "warm", None)]
    eager = statistics.mean(t["steady_s_per_it"] for t in trials if t["compiled"] == "eager")
    by_state = {t["compiled"]: t for t in trials}
    compiled = statistics.mean(by_state[s]["steady_s_per_it"] for s in ("cold", "warm"))
    saving = eager - compiled
    record = {
        "date": dt.date.today().isoformat(), "machine": engine_grid.machine(), "commit": engine_grid.commit(),
        "command": "python -m benchmarks.compile_probe", "torch": torch.__version__,
        "precision": precisions.name(dtype), "trials": trials,
        "eager_over_compiled": eager / compiled,
        "break_even_iterations": {s: by_state[s]["first_three_s"] / saving if saving > 0 else None
                                  for s in ("cold", "warm")},
    }
    write_text_atomic(args.results, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
