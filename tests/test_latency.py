"""Latency measurement: paired interleaved rounds, reductions, per-block profiles."""

import time

import pytest
import torch
from torch import nn

from dfpractise.latency import compare_latency, profile_blocks, torch_threads
from dfpractise.models import create_model
from dfpractise.models.blocks import find_blocks


class Sleeper(nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_reduction_is_median_of_paired_ratios():
    comparison = compare_latency(
        {"slow": Sleeper(0.010), "fast": Sleeper(0.005)}, batch_size=1, resolution=4, repeats=5, warmup=1
    )
    median, q25, q75 = comparison.reduction("fast", "slow")
    assert 0.35 < median < 0.6
    assert q25 <= median <= q75
    assert comparison.median_ms("slow") > comparison.median_ms("fast")
    assert len(comparison.times["slow"]) == 5


def test_reference_brackets_every_other_model():
    comparison = compare_latency(
        {"teacher": Sleeper(0.004), "a": Sleeper(0.002), "b": Sleeper(0.002)},
        batch_size=1, resolution=4, repeats=3, warmup=0,
    )
    assert len(comparison.times["teacher"]) == 3 * 3  # before a, between a and b, after b; 3 rounds
    assert len(comparison.paired["a"]) == len(comparison.times["a"]) == 3
    assert 0.3 < comparison.reduction("a", "teacher")[0] < 0.7


def test_models_are_timed_in_eval_mode_and_restored():
    model = create_model("cifar10_resnet20").train()
    running = model.bn1.running_mean.clone()
    compare_latency({"m": model}, batch_size=4, resolution=32, repeats=2, warmup=1)
    assert model.training, "training flag restored"
    assert torch.equal(model.bn1.running_mean, running), "no BatchNorm statistics changed"


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1) as used:
        assert used == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_block_profile_pools_identical_blocks_per_stage():
    model = create_model("cifar10_resnet20")
    blocks = find_blocks(model)
    profile = profile_blocks(model, blocks, batch_size=8, resolution=32, repeats=3, warmup=1)
    assert [b.name for b in profile.blocks] == [b.name for b in blocks]
    by_stage = {}
    for record in profile.blocks:
        by_stage.setdefault(record.stage, set()).add(record.delta_lat)
        assert record.delta_lat > 0
    assert all(len(values) == 1 for values in by_stage.values())
    assert profile.teacher_ms > 0
    assert profile.all_dropped > 0


def test_negative_saving_is_clamped_and_flagged(monkeypatch):
    import dfpractise.latency as latency

    model = create_model("cifar10_resnet20")
    blocks = find_blocks(model)
    fake_ms = {"teacher": 10.0, "<all>": 6.0, "layer1.1": 9.0, "layer1.2": 10.5}  # 10%, -5%
    fake_ms.update({b.name: 9.5 for b in blocks if b.name not in fake_ms})  # 5%

    def fake_compare(models, *args, **kwargs):
        times = {n: [fake_ms[n] / 1000] * 3 for n in models}
        paired = {n: times["teacher"] for n in models if n != "teacher"}
        return latency.LatencyComparison(times, 8, 32, 1, "cpu", paired)

    monkeypatch.setattr(latency, "compare_latency", fake_compare)
    raw = profile_blocks(model, blocks, 8, 32, pool_identical=False).by_name()
    assert raw["layer1.1"].delta_lat == pytest.approx(10.0)
    assert raw["layer1.2"].clamped and raw["layer1.2"].delta_lat == pytest.approx(0.5)  # 10% of median 5%
    assert not raw["layer2.1"].clamped
    pooled = profile_blocks(model, blocks, 8, 32).by_name()
    assert pooled["layer1.1"].delta_lat == pooled["layer1.2"].delta_lat == pytest.approx(2.5)
    assert pooled["layer1.1"].delta_lat_raw == pytest.approx(10.0)
    assert profile_blocks(model, blocks, 8, 32).all_dropped == pytest.approx(40.0)
