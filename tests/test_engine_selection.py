"""The engine's measured selection: scaled predictions, least-cost feasible set, top-ups."""

import pytest

import dfpractise.engine as engine
from dfpractise.config import RunConfig
from dfpractise.errors import TargetError
from dfpractise.selection import BlockScore


def _scores():
    # eight blocks of 3% each by single measurement; costs rise with the index
    return [BlockScore(f"b{i}", 0, i, 3.0, 0.1 * (i + 1)) for i in range(8)]


def _fake_measure(factor):
    def measure(config, teacher, dropped, resolution, device, progress, rounds=1):
        return {"reduction": factor * 3.0 * len(dropped) / 100.0, "reduction_spread": [0, 0], "blocks": dropped}

    return measure


def _select(monkeypatch, factor, target, all_dropped, margin=0.0):
    monkeypatch.setattr(engine, "_measure_cut", _fake_measure(factor))
    config = RunConfig(latency_reduction=target)
    config.latency.target_margin = margin
    return engine._select(config, None, _scores(), all_dropped, 32, "cpu", engine.Progress())


def test_super_additive_savings_do_not_overshoot(monkeypatch):
    # dropped together, blocks save 1.25x the sum of their single savings (3.75% each, not 3%)
    dropped, measured = _select(monkeypatch, 1.25, 0.22, all_dropped=30.0)
    assert dropped == ["b0", "b1", "b2", "b3", "b4", "b5"]  # 6 * 3.75 = 22.5; the plain sum asks for 8
    assert measured["reduction"] >= 0.22
    # 30% is reachable although the single savings only sum to 24%
    dropped, measured = _select(monkeypatch, 1.25, 0.30, all_dropped=30.0)
    assert len(dropped) == 8 and measured["reduction"] >= 0.30


def test_cheapest_blocks_that_reach_the_target(monkeypatch):
    dropped, measured = _select(monkeypatch, 1.0, 0.12, all_dropped=24.0)
    assert dropped == ["b0", "b1", "b2", "b3"]
    assert measured["reduction"] == pytest.approx(0.12)


def test_sub_additive_savings_are_topped_up(monkeypatch):
    dropped, measured = _select(monkeypatch, 0.75, 0.12, all_dropped=18.0)
    assert measured["reduction"] >= 0.12
    assert dropped == [f"b{i}" for i in range(len(dropped))] and len(dropped) == 6


def test_target_above_the_measured_all_dropped_cut_is_refused(monkeypatch):
    with pytest.raises(TargetError, match="cuts 20.0%"):
        _select(monkeypatch, 1.0, 0.25, all_dropped=20.0)


def test_a_selection_must_be_confirmed_by_a_longer_measurement(monkeypatch):
    calls = []

    def flattering_then_honest(config, teacher, dropped, resolution, device, progress, rounds=1):
        calls.append(rounds)
        bonus = 1.0 if rounds == 1 else 0.0  # the short measurement reads one point high
        return {"reduction": (3.0 * len(dropped) + bonus) / 100.0, "reduction_spread": [0, 0], "blocks": dropped}

    monkeypatch.setattr(engine, "_measure_cut", flattering_then_honest)
    config = RunConfig(latency_reduction=0.13)
    config.latency.target_margin = 0.0
    dropped, measured = engine._select(config, None, _scores(), 24.0, 32, "cpu", engine.Progress())
    assert len(dropped) == 5 and measured["reduction"] == pytest.approx(0.15)  # 4 blocks read 13% once only
    assert 2 in calls


def test_margin_asks_for_a_cut_clearly_above_the_target(monkeypatch):
    dropped, measured = _select(monkeypatch, 1.0, 0.12, all_dropped=24.0)
    assert len(dropped) == 4  # 12% exactly, no margin
    dropped, measured = _select(monkeypatch, 1.0, 0.12, all_dropped=24.0, margin=1.0)
    assert len(dropped) == 5 and measured["reduction"] >= 0.13
