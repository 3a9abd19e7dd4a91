"""Recoverability scoring: adaptor placement, identity start, fitting, determinism, clean-up."""

import pytest
import torch

from dfpractise.config import ScoringConfig
from dfpractise.errors import ConfigError
from dfpractise.models import create_model
from dfpractise.models.adapter import adapter_for
from dfpractise.models.blocks import find_blocks
from dfpractise.recoverability import (
    DROP_COSTS,
    ScoringContext,
    attach_adaptors,
    create_drop_cost,
    identity_adaptor,
    set_costs,
)

from conftest import features_without


def _context(model, images, iterations=5, views=1, seed=0, lr=0.02):
    return ScoringContext(
        teacher=model,
        blocks=find_blocks(model),
        delta_lat={},
        images=images,
        augment=lambda x: torch.flip(x, dims=[3]),
        normalize=lambda x: (x - 0.5) / 0.25,
        config=ScoringConfig(iterations=iterations, batch_size=8, views=views, lr=lr),
        seed=seed,
    )


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("cifar10_resnet20").eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(16, 3, 32, 32)


def test_identity_adaptor_is_identity():
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(identity_adaptor(5)(x), x)


@pytest.mark.parametrize(
    "model_name, block, expected",
    [
        ("cifar10_resnet20", "layer1.1", 3),  # layer1.0 out; layer1.2 in; layer2.0 branch in (no projection)
        ("cifar10_resnet20", "layer3.1", 2),  # layer3.0 out; layer3.2 in; no next stage
        ("resnet18", "layer1.1", 3),  # layer1.0 out; layer2.0 branch in + projection in
    ],
)
def test_adaptors_go_around_the_hole_and_never_on_skips(model_name, block, expected):
    model = create_model(model_name).eval()
    adapter = adapter_for(model, example_size=32)
    target = adapter.block(block)
    adaptors, handles = attach_adaptors(adapter, model, target)
    try:
        assert len(adaptors) == expected
    finally:
        for h in handles:
            h.remove()


def test_identity_adaptors_leave_the_student_unchanged(teacher):
    adapter = adapter_for(teacher)
    block = find_blocks(teacher)[2]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = features_without(teacher, [block.name], x)
        adaptors, handles = attach_adaptors(adapter, teacher, block)
        try:
            hooked = features_without(teacher, [block.name], x)
        finally:
            for h in handles:
                h.remove()
    torch.testing.assert_close(hooked, plain)


def test_fitting_adaptors_lowers_the_error_and_is_deterministic(teacher, images):
    scorer = create_drop_cost("recoverability")
    untrained = scorer(_context(teacher, images, iterations=0))
    trained = scorer(_context(teacher, images, iterations=30, lr=0.002))
    again = scorer(_context(teacher, images, iterations=30, lr=0.002))
    assert set(trained) == {b.name for b in find_blocks(teacher)}
    assert all(v > 0 for v in untrained.values())
    assert sum(trained.values()) < sum(untrained.values())
    assert trained == again


def test_a_resumed_scoring_refits_only_the_missing_blocks_and_matches_a_full_one(teacher, images):
    from dfpractise.recoverability import RecoverabilityCost

    context = _context(teacher, images, iterations=5, lr=0.002)
    seen: list[tuple[str, float, float]] = []
    full = RecoverabilityCost(on_block=lambda *record: seen.append(record))(context)
    assert [name for name, _, _ in seen] == list(full)
    assert all(cost == full[name] and seconds > 0 for name, cost, seconds in seen)
    names = list(full)
    half = {name: full[name] for name in names[: len(names) // 2]}
    refitted: list[str] = []
    resumed = RecoverabilityCost(done=half, on_block=lambda name, *_: refitted.append(name))(context)
    assert refitted == names[len(names) // 2:]
    assert resumed == full and list(resumed) == names


def test_divergence_falls_back_to_the_identity_error(teacher, images):
    scorer = create_drop_cost("recoverability")
    untrained = scorer(_context(teacher, images, iterations=0))
    diverged = scorer(_context(teacher, images, iterations=30, lr=50.0))
    assert all(torch.isfinite(torch.tensor(v)) for v in diverged.values())
    assert diverged == pytest.approx(untrained)


def test_scoring_leaves_the_teacher_as_it_was(teacher, images):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    grads = [p.requires_grad for p in teacher.parameters()]
    create_drop_cost("recoverability")(_context(teacher, images, iterations=3, views=2))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert [p.requires_grad for p in teacher.parameters()] == grads
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in teacher.modules())
    assert not teacher.training


def test_baseline_scorers(teacher):
    blocks = find_blocks(teacher)
    context = _context(teacher, None)
    random_costs = create_drop_cost("random")(context)
    assert random_costs == create_drop_cost("random")(context)
    assert len(set(random_costs.values())) == len(blocks)
    assert set(create_drop_cost("latency-only")(context).values()) == {1.0}
    assert {"random", "latency-only", "recoverability"} <= set(DROP_COSTS.names())


def test_recoverability_needs_images_and_unknown_scorer_is_an_error(teacher):
    with pytest.raises(ConfigError):
        create_drop_cost("recoverability")(_context(teacher, None))
    with pytest.raises(ConfigError, match="unknown scorer"):
        create_drop_cost("magic")


def test_bf16_adaptor_fits_give_the_fp32_costs_within_bf16_rounding(teacher, images):
    """bf16 changes the fits' rounding only: each block's cost stays within a few percent of the fp32
    one (the clean errors compared are fp32 either way), and the fit still lowers the error."""
    from dataclasses import replace

    scorer = create_drop_cost("recoverability")
    untrained = scorer(_context(teacher, images, iterations=0))
    plain = scorer(_context(teacher, images, iterations=20, lr=0.002))
    fast = scorer(replace(_context(teacher, images, iterations=20, lr=0.002), precision="bf16"))
    assert fast != plain, "bf16 arithmetic must actually have run"
    for name, cost in plain.items():
        assert fast[name] == pytest.approx(cost, rel=0.05), name
    assert sum(fast.values()) < sum(untrained.values())


def test_a_one_block_set_costs_what_the_block_costs(teacher, images):
    context = _context(teacher, images, iterations=10, lr=0.002)
    alone = create_drop_cost("recoverability")(context)
    assert set_costs(context, [["layer1.1"], ["layer3.2"]]) == [alone["layer1.1"], alone["layer3.2"]]


def test_a_set_s_holes_are_bridged_together_and_the_teacher_is_put_back(teacher, images):
    pairs = [["layer1.1", "layer1.2"], ["layer1.2", "layer2.1", "layer3.2"]]
    untrained = set_costs(_context(teacher, images, iterations=0), pairs)
    trained = set_costs(_context(teacher, images, iterations=20, lr=0.002), pairs)
    assert all(t < u for t, u in zip(trained, untrained))
    assert set_costs(_context(teacher, images, iterations=20, lr=0.002), pairs) == trained
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert isinstance(teacher.layer1[1], torch.nn.Module) and not isinstance(teacher.layer1[1], torch.nn.Identity)


def test_a_set_of_unknown_blocks_is_refused_in_one_line(teacher, images):
    with pytest.raises(ConfigError, match="layer9.9 not among the candidate blocks"):
        set_costs(_context(teacher, images), [["layer1.1", "layer9.9"]])
