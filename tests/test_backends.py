"""Latency backends: models timed on eager PyTorch or on onnxruntime, and a run selected on either."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from dfpractise import export, onnx_graph
from dfpractise.backends import BACKENDS
from dfpractise.cli import main
from dfpractise.errors import ConfigError
from dfpractise.latency import BlockLatencyProfile, Timing, compare_latency, cut_measure
from dfpractise.models import create_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return create_model("cifar10_resnet20")


def _timing(**kwargs) -> Timing:
    return Timing(**{"batch_size": 2, "resolution": 32, "repeats": 2, "warmup": 1, **kwargs})


def test_both_backends_are_registered_and_named_by_the_setting():
    assert {"torch", "onnxruntime"} <= set(BACKENDS.names())
    from dfpractise.config import LatencyConfig

    assert LatencyConfig().backend == "torch" and LatencyConfig(backend="onnxruntime").backend == "onnxruntime"
    with pytest.raises(ConfigError, match="unknown latency backend 'tensorrt'"):
        LatencyConfig().replace(backend="tensorrt")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_measurement_leaves_the_models_as_they_were(backend, resnet20):
    """Timed in eval mode and no grad, given back in train mode with ordinary (trainable) tensors."""
    resnet20.train()
    from dfpractise.models.blocks import drop_blocks

    pruned = drop_blocks(resnet20, ["layer1.1", "layer2.1"])
    comparison = compare_latency({"teacher": resnet20, "pruned": pruned}, _timing(backend=backend))
    assert comparison.backend == backend and comparison.device == "cpu"
    assert len(comparison.times["pruned"]) == 2 and len(comparison.times["teacher"]) == 4
    assert comparison.median_ms("teacher") > 0 and comparison.threads >= 1
    assert resnet20.training and pruned.training
    assert not any(p.is_inference() for p in resnet20.parameters())
    resnet20(torch.randn(2, 3, 32, 32)).sum().backward()  # would fail on inference tensors
    assert all(p.is_contiguous() for p in resnet20.parameters())


def test_onnxruntime_prepares_an_unchanged_teacher_once(resnet20, monkeypatch):
    """``cut_measure`` keeps one backend for all of a selection's measurements."""
    exported = []
    real = onnx_graph.onnx_bytes
    monkeypatch.setattr(onnx_graph, "onnx_bytes", lambda model, *a, **k: exported.append(model) or real(model, *a, **k))
    measure = cut_measure(resnet20, _timing(backend="onnxruntime"))
    first = measure(["layer1.1"])
    measure(["layer1.1", "layer3.1"])
    assert first.blocks == ["layer1.1"] and -1 < first.reduction < 1
    assert len(exported) == 3 and exported[0] is resnet20 and resnet20 not in exported[1:]


def test_onnxruntime_measures_on_the_cpu_only():
    with pytest.raises(ConfigError, match="onnxruntime latency backend runs on the CPU"):
        compare_latency({"m": torch.nn.Identity()}, _timing(backend="onnxruntime", device="cuda"))


def test_a_latency_file_without_a_backend_was_timed_on_torch():
    profile = BlockLatencyProfile.from_json({"teacher_ms": 1.0, "all_dropped_cut_percent": 10.0, "blocks": []})
    assert profile.backend == "torch" and profile.to_json()["backend"] == "torch"


def _run_args(assets_dir, out, *extra):
    return ["run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20", "--source", "real",
            "--data", str(assets_dir / "cifar10-jpeg" / "train"), "--num-images", "8", "--drop", "1",
            "--seed", "2", "--score-iterations", "1", "--recovery-iterations", "2", "--latency-repeats", "1",
            "--batch-size", "4", "--out", str(out), "--quiet", *extra]


def test_a_run_selected_on_onnxruntime_times_its_blocks_there_and_says_so(tmp_path, assets_dir, monkeypatch):
    exported = []
    real = onnx_graph.onnx_bytes
    monkeypatch.setattr(onnx_graph, "onnx_bytes", lambda model, *a, **k: exported.append(model) or real(model, *a, **k))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _run_args(assets_dir, out, "--latency-backend", "onnxruntime", "--json"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    profile = json.loads((out / "latency.json").read_text())
    assert report["latency"]["backend"] == "onnxruntime" and profile["backend"] == "onnxruntime"
    assert "backend: onnxruntime" in (out / "recipe.yaml").read_text()
    # block timing: the teacher once, each candidate and the all-dropped variant once; then the
    # selection's measurement and the final verification, two models each
    assert len(exported) == 1 + len(profile["blocks"]) + 1 + 2 + 2


def test_a_run_on_onnxruntime_without_it_stops_before_writing_anything(tmp_path, assets_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _run_args(assets_dir, out, "--latency-backend", "onnxruntime"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dfpractise[export]'" in lines[0]
    assert not out.exists()


def test_timing_fixes_the_c_heap_thresholds_once_so_a_processs_history_does_not_change_a_forwards_cost(monkeypatch):
    """A fresh process and one that has trained must time a pair alike (see dfpractise.allocator)."""
    from dfpractise import allocator
    from dfpractise.latency import Timing, compare_latency

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    allocator.steady_allocator.cache_clear()
    try:
        model = torch.nn.Conv2d(3, 4, 1)
        compare_latency({"teacher": model, "other": torch.nn.Conv2d(3, 4, 1)}, Timing(batch_size=1, resolution=4,
                                                                                     repeats=2, warmup=0))
        compare_latency({"teacher": model}, Timing(batch_size=1, resolution=4, repeats=1, warmup=0))
        assert calls == [(allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD),
                         (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD)], "set once, before timing"
        monkeypatch.setattr(allocator, "_glibc", lambda: None)
        allocator.steady_allocator.cache_clear()
        assert allocator.steady_allocator() is False, "without glibc there is nothing to set"
    finally:
        allocator.steady_allocator.cache_clear()
