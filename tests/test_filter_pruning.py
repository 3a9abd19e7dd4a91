"""Filter-pruning baseline: block-internal pruning with Torch-Pruning, and latency matching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning")

from dfpractise.augment import Normalize, train_augmentation  # noqa: E402
from dfpractise.baselines.filter_pruning import (  # noqa: E402
    inner_convs,
    inner_widths,
    kept_channels,
    latency_measure,
    match_latency,
    prune_filters,
    pseudo_label_loss,
)
from dfpractise.config import RecoveryConfig  # noqa: E402
from dfpractise.errors import ConfigError  # noqa: E402
from dfpractise.latency import Timing, torch_threads  # noqa: E402
from dfpractise.models import create_model  # noqa: E402
from dfpractise.recovery import recover  # noqa: E402

EXAMPLE = torch.zeros(1, 3, 32, 32)
STREAM = {"layer1": 16, "layer2": 32, "layer3": 64}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine two threads make each forward 50x slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cifar10_resnet20").eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(model: nn.Module):
    for stage in STREAM:
        for index, block in enumerate(getattr(model, stage)):
            yield stage, index, block


def test_l1_half_prunes_block_interiors_only(teacher):
    pruned = prune_filters(teacher, EXAMPLE, 0.5)
    x = torch.randn(2, 3, 32, 32)
    assert pruned(x).shape == teacher(x).shape == (2, 10)
    assert pruned.conv1.out_channels == 16 and pruned.linear.in_features == 64
    for stage, _, block in _blocks(pruned):
        width = STREAM[stage]
        assert block.conv2.out_channels == block.bn2.num_features == width  # residual stream
        assert block.conv1.out_channels == block.bn1.num_features == width // 2
        assert block.conv2.in_channels == block.conv1.out_channels
    assert pruned.layer3[0].shortcut.pad == teacher.layer3[0].shortcut.pad
    assert _params(pruned) < 0.6 * _params(teacher)
    assert pruned.model_spec == teacher.model_spec
    assert pruned.forward_features(x).shape == teacher.forward_features(x).shape
    # the teacher itself is untouched
    assert all(block.conv1.out_channels == STREAM[s] for s, _, block in _blocks(teacher))


def test_l1_keeps_the_largest_norm_filters():
    torch.manual_seed(1)
    model = create_model("cifar10_resnet20").eval()
    block = model.layer2[1]
    scale = torch.randperm(32).float() + 1.0  # distinct, known filter norms
    with torch.no_grad():
        block.conv1.weight.copy_(torch.sign(torch.randn_like(block.conv1.weight)) * scale.view(-1, 1, 1, 1))
    norms = block.conv1.weight.abs().sum(dim=(1, 2, 3))
    keep = torch.topk(norms, 16).indices.sort().values
    pruned = prune_filters(model, EXAMPLE, 0.5).layer2[1]
    torch.testing.assert_close(pruned.conv1.weight, block.conv1.weight[keep])
    torch.testing.assert_close(pruned.bn1.weight, block.bn1.weight[keep])
    torch.testing.assert_close(pruned.conv2.weight, block.conv2.weight[:, keep])


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_round_to_gives_multiples(teacher, ratio):
    pruned = prune_filters(teacher, EXAMPLE, ratio, round_to=8)
    widths = inner_widths(pruned)
    assert all(w % 8 == 0 and w > 0 for w in widths.values())
    for name, width in widths.items():
        original = teacher.get_submodule(name).out_channels
        assert width == kept_channels(original, ratio, 8)
    pruned(torch.randn(2, 3, 32, 32))


def test_taylor_keep_set_differs_from_l1():
    """Big filters whose outputs are never used: L1 keeps them, Taylor (zero gradient) drops them."""
    torch.manual_seed(2)
    model = create_model("cifar10_resnet20").eval()
    block = model.layer1[1]
    with torch.no_grad():
        block.conv1.weight[:4] *= 100.0
        block.conv2.weight[:, :4] = 0.0
    images = torch.randn(8, 3, 32, 32)
    l1 = prune_filters(model, EXAMPLE, 0.5).layer1[1]
    taylor_model = prune_filters(model, EXAMPLE, 0.5, "taylor", taylor_loss=pseudo_label_loss(images))
    taylor = taylor_model.layer1[1]
    big = block.conv1.weight[:4]
    assert _contains_rows(l1.conv1.weight, big)
    assert not any(_contains_rows(taylor.conv1.weight, big[i : i + 1]) for i in range(4))
    assert taylor.conv1.out_channels == 8
    assert all(w == kept_channels(model.get_submodule(n).out_channels, 0.5) for n, w in inner_widths(taylor_model).items())
    # the Taylor pass leaves no gradients behind and restores requires_grad
    assert all(p.grad is None for p in taylor_model.parameters())
    assert all(p.requires_grad for p in taylor_model.parameters())
    assert all(p.grad is None for p in model.parameters())


def _contains_rows(weights: torch.Tensor, rows: torch.Tensor) -> bool:
    return all(any(torch.equal(w, r) for w in weights) for r in rows)


def test_taylor_rejects_a_loss_without_gradient(teacher):
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        wanted = teacher.forward_features(images)

    def mimic(model):  # identical to the teacher before pruning: zero loss, zero gradient
        return F.mse_loss(model.forward_features(images), wanted)

    with pytest.raises(ConfigError, match="zero gradient"):
        prune_filters(teacher, EXAMPLE, 0.5, "taylor", taylor_loss=mimic)
    with pytest.raises(ConfigError, match="taylor_loss"):
        prune_filters(teacher, EXAMPLE, 0.5, "taylor")


def test_pruned_model_recovers_with_mir(teacher):
    pruned = prune_filters(teacher, EXAMPLE, 0.5)
    cfg = teacher.model_spec
    images = torch.rand(8, 3, 32, 32)
    config = RecoveryConfig(method="mir", iterations=3, batch_size=4, checkpoint_every=0)
    result = recover(pruned, teacher, images, config, train_augmentation(32), Normalize(cfg.mean, cfg.std))
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert not pruned.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.2}, "ratio"),
        ({"ratio": 0.5, "importance": "l2"}, "unknown filter importance"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.7, "round_to": 8}, "every channel"),
    ],
)
def test_bad_input(teacher, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prune_filters(teacher, EXAMPLE, **kwargs)


def test_unsupported_architecture():
    with pytest.raises(ConfigError, match="no such block"):
        inner_convs(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))


def test_torchvision_resnet18_prunes_basic_blocks():
    model = create_model("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned = prune_filters(model, x, 0.25)
    assert pruned(x).shape == (1, 10)
    for name, conv in inner_convs(pruned):
        original = model.get_submodule(name)
        assert conv.out_channels == kept_channels(original.out_channels, 0.25)
        block = pruned.get_submodule(name.rsplit(".", 1)[0])
        assert block.conv2.out_channels == original.out_channels  # stream unchanged
    assert pruned.layer2[0].downsample[0].out_channels == 128


# --- match_latency ------------------------------------------------------------------------------


class _Width(nn.Module):
    """A stand-in pruned model: its only property is how many channels the ratio left."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 1)


def _fake(total: int = 64):
    def make_pruned(ratio: float) -> nn.Module:
        return _Width(kept_channels(total, ratio))

    def removed(models) -> float:
        return 1.0 - models["pruned"].conv.out_channels / total

    return make_pruned, removed


def _counting(measure):
    calls = []

    def wrapped(models):
        calls.append(models["pruned"].conv.out_channels)
        return measure(models)

    return wrapped, calls


def test_match_latency_finds_a_ratio_on_a_non_monotone_curve():
    make_pruned, removed = _fake()

    def cut(models):  # rises overall, with dips: more channels removed is not always faster
        r = removed(models)
        return 0.5 * r + 0.06 * math.sin(25 * r)

    measure, calls = _counting(cut)
    ratio, model, got, log = match_latency(nn.Identity(), 0.3, make_pruned, measure, tolerance=0.01)
    assert abs(got - 0.3) <= 0.01
    assert model.conv.out_channels == kept_channels(64, ratio)
    chosen = [e for e in log if e["chosen"]]
    assert len(chosen) == 1 and chosen[0]["note"] == "the smallest ratio within tolerance"
    assert chosen[0]["ratio"] == min(e["ratio"] for e in log if e["within_tolerance"] and e["measured"])
    assert sum(e["measured"] for e in log) == len(calls) == len(set(calls)) <= 8
    assert [e["trial"] for e in log] == list(range(1, len(log) + 1))


def test_match_latency_keeps_bisecting_below_a_match_for_the_smallest_ratio():
    """A plateau: widths from 45% removed up to the bound all measure within tolerance. Growth from
    below jumps onto the plateau far above where it starts; the search must come back down."""
    make_pruned, removed = _fake()

    def cut(models):
        r = removed(models)
        return 0.2 if r < 0.45 else 0.39 + 0.01 * (r - 0.45)

    ratio, model, got, log = match_latency(nn.Identity(), 0.4, make_pruned, cut, tolerance=0.02, max_trials=8,
                                           bounds=(0.05, 0.9))
    first_hit = next(e for e in log if e["within_tolerance"])
    assert first_hit["ratio"] > 0.6, "growth overshoots onto the plateau, as in the benchmark"
    assert abs(got - 0.4) <= 0.02
    assert 0.45 <= 1 - model.conv.out_channels / 64 < 0.5, "the smallest ratio within tolerance, not the first"
    assert ratio == min(e["ratio"] for e in log if e["within_tolerance"] and e["measured"])


def test_match_latency_returns_closest_at_or_above_when_none_within_tolerance():
    make_pruned, removed = _fake()

    def cut(models):  # a jump over the target: nothing lands within tolerance
        return 0.1 if removed(models) < 0.4 else 0.35 + 0.1 * removed(models)

    measure, calls = _counting(cut)
    ratio, model, got, log = match_latency(nn.Identity(), 0.2, make_pruned, measure, tolerance=0.02, max_trials=8)
    above = [e["cut"] for e in log if e["cut"] >= 0.2]
    assert got == min(above) and got >= 0.2
    chosen = [e for e in log if e["chosen"]]
    assert len(chosen) == 1 and chosen[0]["ratio"] == ratio
    assert "no trial within" in chosen[0]["note"] and "at or above" in chosen[0]["note"]
    assert not any(e["within_tolerance"] for e in log)
    # each structure is measured once; later ratios giving the same channels reuse that cut
    assert len(calls) == len(set(calls)) == sum(e["measured"] for e in log) <= 8
    repeated = [e for e in log if not e["measured"]]
    assert repeated and all(log[e["duplicate_of"] - 1]["cut"] == e["cut"] for e in repeated)
    assert model.conv.out_channels == kept_channels(64, ratio)


def test_match_latency_reports_an_unreachable_target():
    make_pruned, removed = _fake()
    ratio, model, got, log = match_latency(
        nn.Identity(), 0.8, make_pruned, lambda m: 0.5 * removed(m), tolerance=0.02, max_trials=6
    )
    assert got == max(e["cut"] for e in log) < 0.8
    assert ratio == pytest.approx(0.9)  # the upper bound of the ratios tried
    note = next(e["note"] for e in log if e["chosen"])
    assert "does not reach the target" in note and "largest cut" in note
    assert sum(e["measured"] for e in log) <= 6


def test_match_latency_with_real_pruning(teacher):
    """Wiring: real pruned ResNets go through the search; cut = removed fraction of inner channels."""
    total = sum(inner_widths(teacher).values())

    def measure(models):
        return 1.0 - sum(inner_widths(models["pruned"]).values()) / total

    ratio, pruned, got, log = match_latency(
        teacher, 0.25, lambda r: prune_filters(teacher, EXAMPLE, r), measure, tolerance=0.03, max_trials=3
    )
    assert abs(got - 0.25) <= 0.03
    chosen = next(e for e in log if e["chosen"])
    assert chosen["inner_channels"] == sum(inner_widths(pruned).values())
    pruned(torch.randn(2, 3, 32, 32))


def test_match_latency_bad_input():
    with pytest.raises(ConfigError, match="target"):
        match_latency(nn.Identity(), 1.5, lambda r: nn.Identity(), lambda m: 0.0)
    with pytest.raises(ConfigError, match="max_trials"):
        match_latency(nn.Identity(), 0.2, lambda r: nn.Identity(), lambda m: 0.0, max_trials=0)


def test_default_measure_times_teacher_against_pruned(teacher):
    pruned = prune_filters(teacher, EXAMPLE, 0.5)
    cut = latency_measure(Timing(batch_size=2, resolution=32, repeats=2, warmup=1))({"teacher": teacher, "pruned": pruned})
    assert isinstance(cut, float) and -1.0 < cut < 1.0
    assert not teacher.training and not pruned.training


def test_prune_to_cut_tries_rounded_widths_first_then_unrounded(teacher):
    """Widths in multiples of 8 cannot remove less than about a fifth of ResNet-20's inner channels
    (16 -> 8 at any ratio), so a 10% cut is found unrounded, after the rounded search."""
    from dfpractise.baselines.filter_pruning import prune_to_cut

    total = sum(inner_widths(teacher).values())

    def measure(models):
        return 1.0 - sum(inner_widths(models["pruned"]).values()) / total

    matched = prune_to_cut(teacher, 0.1, Timing(), measure=measure, tolerance=0.02, max_trials=4)
    assert matched.round_to is None and matched.within_tolerance and abs(matched.cut - 0.1) <= 0.02
    assert {t["round_to"] for t in matched.trials} == {8, None}
    rebuilt = prune_filters(teacher, None, matched.ratio, "l1", round_to=matched.round_to)
    assert inner_widths(rebuilt) == inner_widths(matched.model)
    assert matched.to_json()["ratio"] == matched.ratio and "model" not in matched.to_json()
