"""Which blocks to drop: by a latency target or by a count.

Score(b) = cost(b) / ΔLat(b) (PRACTISE.md section 3). By count, the K smallest scores go (the
paper's one-shot mode). By target, the default picks the set with the least total cost whose
summed ΔLat reaches the target (a small min-cost covering knapsack, solved exactly); ``greedy``
takes blocks in score order until the target is reached. Either way the engine then measures the
pruned network and adds the next block by score while the measured cut falls short. Methods are
registered (``SELECTION_METHODS``): a function ``(blocks, target_percent) -> chosen blocks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from synthesizers.registry import Registry

from .errors import ConfigError, TargetError


@dataclass
class BlockScore:
    """Everything known about one candidate block when selecting."""

    name: str
    stage: int
    step: int
    delta_lat: float  # percent of teacher latency saved by dropping it alone
    cost: float  # recoverability (or a baseline's stand-in); lower is easier to recover

    @property
    def score(self) -> float:
        return self.cost / self.delta_lat


def rank(blocks: list[BlockScore]) -> list[BlockScore]:
    """Blocks by score, best (smallest) first; ties keep network order."""
    return sorted(blocks, key=lambda b: (b.score, b.step))


def select_by_count(blocks: list[BlockScore], count: int) -> list[str]:
    if count > len(blocks):
        raise TargetError(f"asked to drop {count} blocks but the model has only {len(blocks)} droppable blocks")
    return [b.name for b in rank(blocks)[:count]]


def select_by_target(
    blocks: list[BlockScore], target_percent: float, method: str = "min-recoverability"
) -> list[str]:
    """Blocks whose summed ΔLat reaches ``target_percent``, in network order."""
    reachable = sum(b.delta_lat for b in blocks)
    if reachable < target_percent:
        raise TargetError(
            f"a {target_percent:.1f}% latency cut is out of reach: dropping every droppable block "
            f"saves about {reachable:.1f}% by the per-block measurements"
        )
    chosen = SELECTION_METHODS.get(method)(blocks, target_percent)
    return [b.name for b in sorted(chosen, key=lambda b: b.step)]


SelectionMethod = Callable[[list[BlockScore], float], list[BlockScore]]
SELECTION_METHODS: Registry[SelectionMethod] = Registry(
    "selection method", "selection methods", unknown=ConfigError, invalid=ConfigError
)


@SELECTION_METHODS.register("greedy")
def _greedy(blocks: list[BlockScore], target_percent: float) -> list[BlockScore]:
    """Blocks in score order until their summed ΔLat reaches the target."""
    chosen, total = [], 0.0
    for block in rank(blocks):
        if total >= target_percent:
            break
        chosen.append(block)
        total += block.delta_lat
    return chosen


@SELECTION_METHODS.register("min-recoverability")
def _min_cost_cover(blocks: list[BlockScore], target_percent: float, resolution: float = 0.01) -> list[BlockScore]:
    """Exact 0/1 min-cost cover on ΔLat rounded to ``resolution`` percent (dynamic programming).

    ``best[w]`` is the cheapest set reaching at least ``w`` units; weights above the target are
    capped at the target, so the table has target/resolution + 1 entries.
    """
    goal = math.ceil(target_percent / resolution - 1e-9)
    weights = [max(1, round(b.delta_lat / resolution)) for b in blocks]
    infinity = float("inf")
    best = [infinity] * (goal + 1)
    best[0] = 0.0
    choice: list[list[int | None]] = [[None] * (goal + 1) for _ in blocks]
    for i, (block, weight) in enumerate(zip(blocks, weights)):
        updated = best[:]
        for reached in range(goal + 1):
            if best[reached] == infinity:
                continue
            new = min(goal, reached + weight)
            cost = best[reached] + block.cost
            if cost < updated[new] - 1e-12:
                updated[new] = cost
                choice[i][new] = reached
        best = updated
    return _backtrack(blocks, weights, choice, goal)


def _backtrack(blocks, weights, choice, goal) -> list[BlockScore]:
    """Recover the chosen set: walk rows backwards, taking block i where it set the entry."""
    chosen = []
    reached = goal
    for i in range(len(blocks) - 1, -1, -1):
        previous = choice[i][reached]
        if previous is not None:
            chosen.append(blocks[i])
            reached = previous
            if reached == 0:
                break
    return chosen


def next_block(blocks: list[BlockScore], chosen: list[str]) -> BlockScore | None:
    """The best-scored block not yet chosen, or None when all are."""
    for block in rank(blocks):
        if block.name not in chosen:
            return block
    return None
