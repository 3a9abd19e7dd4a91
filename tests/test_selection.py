"""Selection: exact min-cost cover against brute force, greedy order, counts, unreachable targets."""

import itertools
import random

import pytest

from dfpractise.errors import TargetError
from dfpractise.selection import BlockScore, next_block, rank, select_by_count, select_by_target


def _blocks(costs, lats):
    return [BlockScore(f"b{i}", 0, i, lat, cost) for i, (cost, lat) in enumerate(zip(costs, lats))]


def _brute_force(blocks, target):
    best = None
    for r in range(1, len(blocks) + 1):
        for combo in itertools.combinations(blocks, r):
            if sum(round(b.delta_lat / 0.01) for b in combo) * 0.01 + 1e-9 >= target:
                cost = sum(b.cost for b in combo)
                if best is None or cost < best - 1e-12:
                    best = cost
    return best


@pytest.mark.parametrize("seed", range(20))
def test_min_cost_cover_matches_brute_force(seed):
    rng = random.Random(seed)
    blocks = _blocks([rng.uniform(0, 1) for _ in range(9)], [rng.uniform(0.5, 6) for _ in range(9)])
    target = rng.uniform(3, 0.8 * sum(b.delta_lat for b in blocks))
    chosen = select_by_target(blocks, target)
    by_name = {b.name: b for b in blocks}
    assert sum(by_name[n].delta_lat for n in chosen) >= target - 0.01 * len(chosen)
    assert sum(by_name[n].cost for n in chosen) == pytest.approx(_brute_force(blocks, target))


def test_min_cost_prefers_cheap_blocks_even_if_more_are_needed():
    blocks = _blocks([10.0, 1.0, 1.0, 1.0], [9.0, 3.0, 3.0, 3.0])
    assert select_by_target(blocks, 9.0) == ["b1", "b2", "b3"]


def test_greedy_takes_blocks_in_score_order_until_target():
    blocks = _blocks([1.0, 1.0, 4.0], [1.0, 4.0, 2.0])  # scores 1, 0.25, 2
    assert select_by_target(blocks, 4.5, method="greedy") == ["b0", "b1"]


def test_selection_is_returned_in_network_order():
    blocks = _blocks([0.1, 5.0, 0.01], [2.0, 2.0, 2.0])
    assert select_by_target(blocks, 4.0) == ["b0", "b2"]


def test_unreachable_target_names_the_largest_cut():
    blocks = _blocks([1, 1], [2.0, 3.0])
    with pytest.raises(TargetError, match="5.0%"):
        select_by_target(blocks, 10.0)


def test_count_mode_takes_smallest_scores():
    blocks = _blocks([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert select_by_count(blocks, 2) == ["b1", "b2"]
    with pytest.raises(TargetError):
        select_by_count(blocks, 4)


def test_next_block_follows_rank():
    blocks = _blocks([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert [b.name for b in rank(blocks)] == ["b1", "b2", "b0"]
    assert next_block(blocks, ["b1"]).name == "b2"
    assert next_block(blocks, ["b0", "b1", "b2"]) is None


def test_the_cheapest_set_inside_the_window_wins_over_a_cheaper_one_far_above_the_target():
    """A cheap big block overshoots; with an upper bound the cheapest set landing in
    [target, upper] is taken when it costs little more, and without one (or when none lands
    there) the cheapest cover."""
    blocks = [BlockScore("big", 1, 0, 10.0, 0.55), BlockScore("a", 2, 1, 3.0, 0.29),
              BlockScore("b", 2, 2, 3.0, 0.29), BlockScore("c", 2, 3, 4.0, 0.5)]
    assert select_by_target(blocks, 6.0) == ["big"], "the cheapest cover, 4 points above"
    assert select_by_target(blocks, 6.0, upper_percent=7.0) == ["a", "b"], "6 points: inside [6, 7], 5% dearer"
    assert select_by_target(blocks, 6.0, upper_percent=6.5) == ["a", "b"]
    coarse = [BlockScore("big", 1, 0, 10.0, 0.1), BlockScore("d", 2, 1, 8.0, 0.3)]
    assert select_by_target(coarse, 6.0, upper_percent=7.0) == ["big"], "nothing lands in the window"
    assert select_by_target(blocks, 6.0, method="greedy", upper_percent=7.0) == ["big"], "greedy has no bound"


def test_a_set_in_the_window_that_is_much_harder_to_recover_loses_to_the_cheapest_cover():
    """The ResNet-20 case (ΔLat and recoverability as measured for cifar10jpeg-resnet20, 500 real
    images): the only 3-block sets inside [31, 33]% hold a stage-3 block and cost 40% more than
    the cheapest cover at 34%, which lost 3 points of top-1 against it."""
    lat = {"layer1.1": 13.75, "layer1.2": 13.75, "layer2.1": 9.98, "layer2.2": 9.98, "layer3.1": 8.27,
           "layer3.2": 8.27}
    cost = {"layer1.1": 0.289, "layer1.2": 0.642, "layer2.1": 0.280, "layer2.2": 0.233, "layer3.1": 0.604,
            "layer3.2": 1.335}
    blocks = [BlockScore(n, int(n[5]) - 1, i, lat[n], cost[n]) for i, n in enumerate(lat)]
    cover = ["layer1.1", "layer2.1", "layer2.2"]
    assert select_by_target(blocks, 31.0, upper_percent=33.0) == cover
    assert select_by_target(blocks, 31.0, upper_percent=33.0, window_cost=0.5) == ["layer1.1", "layer2.2", "layer3.1"]
    assert select_by_target(blocks, 31.0, upper_percent=33.0, window_cost=0.0) == cover


@pytest.mark.parametrize("seed", range(5))
def test_the_windowed_cover_is_the_cheapest_set_in_the_window_by_brute_force(seed):
    import itertools
    import random

    rng = random.Random(seed)
    blocks = [BlockScore(f"b{i}", 1, i, rng.uniform(1, 6), rng.uniform(0.1, 1)) for i in range(8)]
    target, upper = 12.0, 14.0
    inside = [c for r in range(1, 9) for c in itertools.combinations(blocks, r)
              if target <= sum(b.delta_lat for b in c) <= upper]
    chosen = select_by_target(blocks, target, upper_percent=upper, window_cost=float("inf"))
    if inside:
        cheapest = min(sum(b.cost for b in c) for c in inside)
        by_name = {b.name: b for b in blocks}
        assert sum(by_name[n].cost for n in chosen) == pytest.approx(cheapest, abs=1e-9)
        assert target - 0.01 <= sum(by_name[n].delta_lat for n in chosen) <= upper + 0.01


def test_a_window_no_wider_than_the_margin_is_refused():
    from dfpractise.config import RunConfig
    from dfpractise.errors import ConfigError

    with pytest.raises(ConfigError, match="target_window .* must be larger than latency.target_margin"):
        RunConfig.from_dict({"latency": {"target_window": 1.0, "target_margin": 1.0}}).validate()


def _minimal_covers_by_cost(blocks, need):
    covers = []
    for r in range(1, len(blocks) + 1):
        for combo in itertools.combinations(blocks, r):
            total = sum(b.delta_lat for b in combo)
            if total >= need and all(total - b.delta_lat < need for b in combo):
                covers.append((sum(b.cost for b in combo), [b.name for b in combo]))
    return sorted(covers)


@pytest.mark.parametrize("seed", range(12))
def test_alternatives_are_the_next_cheapest_minimal_covers(seed):
    from dfpractise.selection import alternatives

    rng = random.Random(seed)
    blocks = _blocks([rng.uniform(0.05, 1) for _ in range(9)], [rng.uniform(4, 14) for _ in range(9)])
    need = rng.uniform(20, 40)
    expected = _minimal_covers_by_cost(blocks, need)
    chosen = expected[0][1]
    found = alternatives(blocks, chosen, need, count=5)
    assert len(found) == min(5, len(expected) - 1)
    assert [sum(b.cost for b in blocks if b.name in f) for f in found] == pytest.approx([c for c, _ in expected[1:6]])
    assert all(f != chosen and len({*f}) == len(f) for f in found)
    assert alternatives(blocks, chosen, need, count=2) == found[:2]


def test_alternatives_of_a_resnet20_cut_include_both_stage1_blocks_when_cheap_enough():
    from dfpractise.selection import alternatives

    # costs and savings like the JPEG ResNet-20's: the cheapest set drops one stage-1 and both stage-2 blocks
    names = ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    costs = [0.17, 0.45, 0.27, 0.22, 0.51, 1.13]
    lats = [13.0, 13.0, 9.5, 9.5, 8.0, 8.0]
    blocks = [BlockScore(n, int(n[5]), i, lat, c) for i, (n, c, lat) in enumerate(zip(names, costs, lats))]
    found = alternatives(blocks, ["layer1.1", "layer2.1", "layer2.2"], 30.0, count=5)
    assert ["layer1.1", "layer1.2", "layer2.2"] in found and ["layer1.1", "layer1.2", "layer2.1"] in found
    assert all(names.index(a) < names.index(b) for f in found for a, b in zip(f, f[1:]))  # network order


def test_alternatives_skip_what_cannot_reach_the_need():
    from dfpractise.selection import alternatives

    blocks = _blocks([0.1, 0.2, 0.3], [20.0, 5.0, 5.0])
    assert alternatives(blocks, ["b0"], 15.0, count=3) == []  # b1+b2 save only 10
    assert alternatives(blocks, ["b0"], 8.0, count=3) == [["b1", "b2"]]
