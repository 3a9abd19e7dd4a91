"""Latency measurement: paired interleaved rounds, reductions, per-block profiles.

Timing logic is tested on a fake clock that the models themselves advance, so ratios are exact
however loaded the machine is; real forwards are only checked for what does not depend on speed.
"""

import pytest
import torch
from torch import nn

from dfpractise.latency import Timing, compare_latency, profile_blocks, torch_threads
from dfpractise.models import create_model
from dfpractise.models.blocks import find_blocks


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def __deepcopy__(self, memo):  # a pruned copy of a model runs on the same clock
        return self


class Costly(nn.Module):
    """A model whose forward takes ``seconds`` on the fake clock, the ``i``-th call ``slow[i]`` more."""

    def __init__(self, clock, seconds, slow=()):
        super().__init__()
        self.clock, self.seconds, self.slow, self.calls = clock, seconds, list(slow), 0
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        extra = self.slow[self.calls] if self.calls < len(self.slow) else 0.0
        self.clock.now += self.seconds + extra
        self.calls += 1
        return x


def _timing(clock, **kwargs):
    return Timing(**{"batch_size": 1, "resolution": 4, "repeats": 5, "warmup": 1, "clock": clock, **kwargs})


def test_reduction_is_median_of_paired_ratios():
    clock = FakeClock()
    # one slow outlier round of the fast model (after 1 warm-up call) moves a mean, not the median
    slow, fast = Costly(clock, 0.010), Costly(clock, 0.005, slow=[0.0, 0.0, 0.050])
    comparison = compare_latency({"slow": slow, "fast": fast}, _timing(clock), reference="slow")
    median, q25, q75 = comparison.reduction("fast", "slow")
    assert median == pytest.approx(0.5)
    assert q25 <= median <= q75
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert 1 - mean(comparison.times["fast"]) / mean(comparison.times["slow"]) < 0.0  # what a mean would say
    assert comparison.median_ms("slow") == pytest.approx(10.0) and comparison.median_ms("fast") == pytest.approx(5.0)
    assert len(comparison.times["fast"]) == 5


def test_reference_brackets_every_other_model():
    clock = FakeClock()
    models = {"teacher": Costly(clock, 0.004), "a": Costly(clock, 0.002), "b": Costly(clock, 0.001)}
    comparison = compare_latency(models, _timing(clock, repeats=3, warmup=0))
    assert len(comparison.times["teacher"]) == 3 * 3  # before a, between a and b, after b; 3 rounds
    assert len(comparison.paired["a"]) == len(comparison.times["a"]) == 3
    assert comparison.reduction("a", "teacher")[0] == pytest.approx(0.5)
    assert comparison.reduction("b", "teacher")[0] == pytest.approx(0.75)
    assert models["a"].calls == models["b"].calls == 3 and models["teacher"].calls == 9


def test_paired_baseline_follows_a_drifting_machine():
    """The machine slows down 10% per round: paired ratios stay exact, medians of times would not."""
    clock = FakeClock()
    drift = [0.1 * i for i in range(6)]  # round i costs (1 + 0.1 i) times as much

    class Drifting(Costly):
        def forward(self, x):
            self.clock.now += self.seconds * (1 + drift[self.round()])
            self.calls += 1
            return x

        def round(self):
            return min(self.calls // self.per_round, len(drift) - 1)

    teacher, pruned = Drifting(clock, 0.010), Drifting(clock, 0.007)
    teacher.per_round, pruned.per_round = 2, 1
    comparison = compare_latency({"teacher": teacher, "pruned": pruned}, _timing(clock, warmup=0, repeats=5))
    assert comparison.reduction("pruned", "teacher")[0] == pytest.approx(0.3, abs=0.03)


def test_models_are_timed_in_eval_mode_and_restored():
    model = create_model("cifar10_resnet20").train()
    running = model.bn1.running_mean.clone()
    compare_latency({"m": model}, Timing(batch_size=4, resolution=32, repeats=2, warmup=1))
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
    profile = profile_blocks(model, blocks, Timing(batch_size=8, resolution=32, repeats=3, warmup=1))
    assert [b.name for b in profile.blocks] == [b.name for b in blocks]
    by_stage = {}
    for record in profile.blocks:
        by_stage.setdefault(record.stage, set()).add(record.delta_lat)
        assert record.delta_lat > 0
    assert all(len(values) == 1 for values in by_stage.values())
    assert profile.teacher_ms > 0
    assert profile.all_dropped_cut_percent > 0


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
    timing = Timing(batch_size=8, resolution=32)
    raw = profile_blocks(model, blocks, timing, pool_identical=False, method="variants").by_name()
    assert raw["layer1.1"].delta_lat == pytest.approx(10.0)
    assert raw["layer1.2"].clamped and raw["layer1.2"].delta_lat == pytest.approx(0.5)  # 10% of median 5%
    assert not raw["layer2.1"].clamped
    pooled = profile_blocks(model, blocks, timing, method="variants").by_name()
    assert pooled["layer1.1"].delta_lat == pooled["layer1.2"].delta_lat == pytest.approx(2.5)
    assert pooled["layer1.1"].delta_lat_raw == pytest.approx(10.0)
    assert profile_blocks(model, blocks, timing, method="variants").all_dropped_cut_percent == pytest.approx(40.0)


class Residual(nn.Module):
    """x + f(x) whose f takes ``seconds`` on the fake clock."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        self.clock.now += self.seconds
        return x + self.conv(x)


class Timed(nn.Sequential):
    """Stem (1 ms), residual blocks of 2, 3 and 2 ms (the last like the first), head (3 ms)."""

    def __init__(self, clock):
        super().__init__(Costly(clock, 0.001), Residual(clock, 0.002), Residual(clock, 0.003),
                         Residual(clock, 0.002), Costly(clock, 0.003))


def test_hooked_shares_are_each_blocks_part_of_the_teachers_own_forward():
    from dfpractise.latency import HOOKED_ROUNDS, hooked_shares

    clock = FakeClock()
    shares, forwards = hooked_shares(Timed(clock), ["1", "2", "3"], _timing(clock, repeats=2))
    assert forwards == pytest.approx([0.011] * (HOOKED_ROUNDS * 2))
    assert shares["1"] == pytest.approx([2 / 11] * len(forwards))
    assert shares["2"] == pytest.approx([3 / 11] * len(forwards))


def test_the_hooks_profile_gives_shares_that_add_up_and_measures_the_all_dropped_cut():
    from dfpractise.models.adapter import adapter_for

    clock = FakeClock()
    model = Timed(clock).eval()
    blocks = adapter_for(model, example_size=4).blocks
    assert [b.name for b in blocks] == ["1", "2", "3"]
    profile = profile_blocks(model, blocks, _timing(clock, repeats=3), pool_identical=False, method="hooks")
    by_name = profile.by_name()
    assert profile.profile == "hooks"
    assert [by_name[n].delta_lat for n in "123"] == pytest.approx([100 * 2 / 11, 100 * 3 / 11, 100 * 2 / 11])
    assert profile.all_dropped_cut_percent == pytest.approx(100 * 7 / 11), "measured on the pruned network"
    assert sum(b.delta_lat for b in profile.blocks) == pytest.approx(profile.all_dropped_cut_percent)
    assert profile.teacher_ms == pytest.approx(11.0)


def test_auto_profile_is_hooks_on_eager_torch_and_variants_elsewhere():
    from dfpractise.errors import ConfigError
    from dfpractise.latency import resolve_profile

    assert resolve_profile("auto", Timing()) == "hooks"
    assert resolve_profile("auto", Timing(backend="onnxruntime")) == "variants"
    with pytest.raises(ConfigError, match="hooks.*eager PyTorch.*onnxruntime"):
        resolve_profile("hooks", Timing(backend="onnxruntime"))
