"""torchrun with 2 CPU processes (gloo) against 1 process: the same images, costs, blocks and model.

Every command runs as a user runs it: ``python -m dfpractise ...`` for one process and
``python -m torch.distributed.run --nproc_per_node 2 --standalone -m dfpractise ...`` for two.
All processes run with one thread each (``OMP_NUM_THREADS=1``, what torchrun itself gives each
of several workers), so one process and two do the same arithmetic: convolutions summed by a
different number of threads may differ in the last bit.

Tolerances: the scoring costs are compared to 1e-4 relative (each block's fit is the same
computation on either side); the recovered weights to 2e-3 absolute (the two-process run
synchronises BatchNorm statistics by all-reduce and sums its gradient in two halves, so its
float rounding differs from one process's and grows a little over the iterations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dfpractise import distributed

ONE = [sys.executable, "-m", "dfpractise"]
TWO = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "dfpractise"]
MODEL = ["--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20"]
COST_RTOL = 1e-4
WEIGHT_ATOL = 2e-3


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DFPRACTISE_DIST_TIMEOUT": "120"}


def _ok(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run_args(data: Path, out: Path) -> list[str]:
    return ["run", *MODEL, "--source", "real", "--data", str(data), "--num-images", "16", "--drop", "2",
            "--score-iterations", "8", "--recovery-iterations", "40", "--latency-repeats", "1", "--batch-size", "4",
            "--set", "latency.warmup=0", "--set", "scoring.batch_size=8", "--set", "recovery.batch_size=8",
            "--set", "recovery.checkpoint_every=2", "--seed", "5", "--out", str(out), "--quiet"]


def test_one_process_helpers_are_the_identity():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.all_gather_object(3) == [3] and distributed.broadcast_object("x") == "x"
    assert distributed.on_main(lambda: 7) == 7 and distributed.together(lambda: 8) == [8]
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    with distributed.launched("cpu") as world:  # no torchrun variables: nothing is initialised
        assert world.size == 1 and not torch.distributed.is_initialized()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    with distributed.synchronized_batchnorm(model) as same:
        assert same is model and type(model[1]) is torch.nn.BatchNorm2d


def test_two_process_synthesis_writes_the_bytes_of_one_process(tmp_path):
    def synthesize(launcher: list[str], out: Path) -> None:
        _ok([*launcher, "synthesize", *MODEL, "--num-images", "8", "--batch-size", "2", "--steps", "6",
             "--seed", "3", "--out", str(out), "--quiet"])

    one, two = tmp_path / "one", tmp_path / "two"
    synthesize(ONE, one)
    synthesize(TWO, two)
    names = sorted(p.name for p in (one / "images").iterdir())
    assert names == sorted(p.name for p in (two / "images").iterdir()) and len(names) == 8
    for name in names:
        assert (one / "images" / name).read_bytes() == (two / "images" / name).read_bytes(), name
    batches = [json.loads((folder / "index.json").read_text())["batches"] for folder in (one, two)]
    assert sorted(batches[0]) == sorted(batches[1]) == ["0", "1", "2", "3"]
    for k in batches[0]:
        assert {key: v for key, v in batches[0][k].items() if key != "seconds"} == \
            {key: v for key, v in batches[1][k].items() if key != "seconds"}
    assert json.loads((two / "quality.json").read_text())["agreement"] == \
        json.loads((one / "quality.json").read_text())["agreement"]
