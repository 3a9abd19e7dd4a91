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
