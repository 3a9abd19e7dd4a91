"""Which blocks to drop: by a latency target or by a count.

Score(b) = cost(b) / ΔLat(b) (PRACTISE.md section 3). By count, the K smallest scores go (the
paper's one-shot mode). By target, the default picks the set with the least total cost whose
summed ΔLat reaches the target (a small min-cost covering knapsack, solved exactly); ``greedy``
takes blocks in score order until the target is reached. Methods are registered
(``SELECTION_METHODS``): a function ``(blocks, target_percent) -> chosen blocks``.

``select_blocks`` is the selection a run makes: it proposes sets from the single-block savings,
measures each through a ``measure`` callable, corrects its prediction by everything it measured,
and keeps the cheapest set a second, longer measurement confirms (one measured inside the window
first, when it is barely dearer). Measuring is passed in, so the
logic is tested with a fake machine and the engine passes the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

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
    group: str | None = None  # units of one block (the block, or one of its branches) exclude each other

    @property
    def score(self) -> float:
        return self.cost / self.delta_lat

    @property
    def key(self) -> str:
        return self.group or self.name


@dataclass
class MeasuredCut:
    """A measured latency cut of a set of dropped blocks: median and IQR of paired ratios (fractions)."""

    reduction: float
    spread: tuple[float, float]
    blocks: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "reduction_spread": list(self.spread), "blocks": list(self.blocks)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MeasuredCut":
        return cls(float(data["reduction"]), tuple(data["reduction_spread"]), list(data["blocks"]))


@dataclass
class Selection:
    """The blocks a run drops, in network order, and the measurement that accepted them."""

    FILE = "selection.json"
    dropped: list[str]
    measured: MeasuredCut
    predicted: float | None = None  # the cut (fraction) the latency model predicted for ``dropped``
    readings: list[dict[str, Any]] = field(default_factory=list)
    """Every set the selection measured on the way, in order: its blocks, the cut predicted when it
    was proposed, the cut measured (percent) and the timing rounds; kept so that a run that landed
    off target can be read afterwards."""

    def to_json(self) -> dict[str, Any]:
        return {"dropped": list(self.dropped), "measured": self.measured.to_json(), "predicted": self.predicted,
                "readings": [dict(r) for r in self.readings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Selection":
        return cls(list(data["dropped"]), MeasuredCut.from_json(data["measured"]), data.get("predicted"),
                   [dict(r) for r in data.get("readings", [])])


class Measure(Protocol):
    """Measures the cut of dropping ``blocks``; ``rounds`` times the usual timing rounds."""

    def __call__(self, blocks: list[str], rounds: int = 1) -> MeasuredCut: ...


def rank(blocks: list[BlockScore]) -> list[BlockScore]:
    """Blocks by score, best (smallest) first; ties keep network order."""
    return sorted(blocks, key=lambda b: (b.score, b.step))


def select_by_count(blocks: list[BlockScore], count: int) -> list[str]:
    """The ``count`` best scores, at most one unit per block, in network order."""
    groups = len({b.key for b in blocks})
    if count > groups:
        raise TargetError(f"asked to drop {count} blocks but the model has only {groups} droppable blocks")
    chosen: list[BlockScore] = []
    for block in rank(blocks):
        if len(chosen) < count and all(c.key != block.key for c in chosen):
            chosen.append(block)
    return [b.name for b in sorted(chosen, key=lambda b: b.step)]


def select_by_target(
    blocks: list[BlockScore], target_percent: float, method: str = "min-recoverability",
    upper_percent: float | None = None, window_cost: float = 0.1,
) -> list[str]:
    """Blocks whose summed ΔLat reaches ``target_percent``, in network order.

    With ``upper_percent``, a set summing to at most that is preferred where the method finds one
    that costs at most ``window_cost`` (a fraction) more than the cheapest set reaching the target:
    landing near the target is worth a little recoverability, not a lot. On a coarse network (a
    ResNet-20's blocks save 8-14% each) the only sets inside a 3-point window can hold a block much
    harder to recover, and overshooting by a point costs less accuracy than dropping it.
    """
    reachable = sum(b.delta_lat for b in blocks)
    if reachable < target_percent:
        raise TargetError(
            f"a {target_percent:.1f}% latency cut is out of reach: dropping every droppable block "
            f"saves about {reachable:.1f}% by the per-block measurements"
        )
    select = SELECTION_METHODS.get(method)
    chosen = select(blocks, target_percent, None)
    if upper_percent is not None:
        windowed = select(blocks, target_percent, upper_percent)
        if _cost(windowed) <= (1.0 + window_cost) * _cost(chosen) + 1e-12:
            chosen = windowed
    return [b.name for b in sorted(chosen, key=lambda b: b.step)]


def _cost(blocks: list[BlockScore]) -> float:
    return sum(b.cost for b in blocks)


_RESOLUTION = 0.01  # the ΔLat resolution (percent) of the min-cost cover


SelectionMethod = Callable[[list[BlockScore], float, "float | None"], list[BlockScore]]
"""``(blocks, target_percent, upper_percent) -> chosen``: ``upper_percent`` (or None) is where the
summed ΔLat should stay below if a set allows it, so a cut does not overshoot the target."""
SELECTION_METHODS: Registry[SelectionMethod] = Registry(
    "selection method", "selection methods", unknown=ConfigError, invalid=ConfigError
)


@SELECTION_METHODS.register("greedy")
def _greedy(blocks: list[BlockScore], target_percent: float, upper_percent: float | None = None) -> list[BlockScore]:
    """Blocks in score order until their summed ΔLat reaches the target (one unit per block);
    the greedy order has no room for an upper bound, so it is ignored."""
    chosen, total = [], 0.0
    for block in rank(blocks):
        if total >= target_percent:
            break
        if any(c.key == block.key for c in chosen):
            continue
        chosen.append(block)
        total += block.delta_lat
    return chosen


@SELECTION_METHODS.register("min-recoverability")
def _min_cost_cover(blocks: list[BlockScore], target_percent: float, upper_percent: float | None = None,
                    resolution: float = _RESOLUTION) -> list[BlockScore]:
    """Exact min-cost cover on ΔLat rounded to ``resolution`` percent (dynamic programming).

    At most one unit per block (a block, or one of its branches): a multiple-choice knapsack, the
    0/1 one where every block has a single unit. ``best[w]`` is the cheapest set whose savings sum
    to ``w`` units. With ``upper_percent`` the cheapest set summing into [target, upper] wins; only
    when there is none (blocks too coarse for the window) does the cheapest set reaching the
    target, however far above, win.
    """
    goal = math.ceil(target_percent / resolution - 1e-9)
    if upper_percent is not None and upper_percent >= target_percent:
        top = math.floor(upper_percent / resolution + 1e-9)
        windowed = _cheapest_sets(blocks, goal, top, resolution, cap=False)
        if windowed is not None:
            return windowed
    return _cheapest_sets(blocks, goal, goal, resolution, cap=True) or []


def _cheapest_sets(blocks: list[BlockScore], goal: int, top: int, resolution: float,
                   cap: bool) -> list[BlockScore] | None:
    """The cheapest set whose summed units lie in [goal, top]; ``cap`` counts sums above ``top`` as
    ``top`` (a cover), else they are out. None when no set qualifies."""
    groups: dict[str, list[BlockScore]] = {}
    for block in blocks:
        groups.setdefault(block.key, []).append(block)
    options = list(groups.values())
    infinity = float("inf")
    best = [infinity] * (top + 1)
    best[0] = 0.0
    choice: list[list[tuple[int, BlockScore] | None]] = [[None] * (top + 1) for _ in options]
    for g, members in enumerate(options):
        updated = best[:]
        for reached in range(top + 1):
            if best[reached] == infinity:
                continue
            for block in members:
                new = reached + max(1, round(block.delta_lat / resolution))
                if new > top:
                    if not cap:
                        continue
                    new = top
                cost = best[reached] + block.cost
                if cost < updated[new] - 1e-12:
                    updated[new] = cost
                    choice[g][new] = (reached, block)
        best = updated
    reached = min(range(goal, top + 1), key=lambda w: (best[w], w), default=None)
    if reached is None or best[reached] == infinity:
        return None
    chosen = []
    for g in range(len(options) - 1, -1, -1):
        entry = choice[g][reached]
        if entry is not None:
            reached, block = entry
            chosen.append(block)
            if reached == 0:
                break
    return chosen


def alternatives(blocks: list[BlockScore], chosen: list[str], need_percent: float, count: int,
                 method: str = "min-recoverability") -> list[list[str]]:
    """The ``count`` cheapest minimal sets reaching ``need_percent`` summed ΔLat, other than
    ``chosen``, cheapest first, each in network order.

    Lawler's k-best scheme over the cover search: each set found splits what is left into
    subproblems that keep its first blocks and leave out the next one, each solved by one cover
    search, so it scales with the sets asked for, not with the number of subsets. Sets with a block
    to spare (a cheaper minimal set inside them exists) are passed over.
    """
    import heapq

    select = SELECTION_METHODS.get(method)
    order = {b.name: b.step for b in blocks}
    groups = {b.name: b.key for b in blocks}

    def solve(kept: tuple[BlockScore, ...], out: frozenset[str]) -> tuple[BlockScore, ...] | None:
        need = need_percent - sum(b.delta_lat for b in kept)
        taken = out | {b.key for b in kept}
        pool = [b for b in blocks if b.key not in taken]
        if need <= 0:
            return kept
        if sum(b.delta_lat for b in pool) < need:
            return None
        free = select(pool, need, None)
        return kept + tuple(sorted(free, key=lambda b: b.step)) if free else None

    def minimal(found: tuple[BlockScore, ...]) -> bool:
        total = sum(b.delta_lat for b in found)
        return all(total - b.delta_lat < need_percent for b in found)

    heap: list[tuple[float, tuple[str, ...], int, tuple[BlockScore, ...], frozenset[str]]] = []

    def push(kept: tuple[BlockScore, ...], out: frozenset[str]) -> None:
        found = solve(kept, out)
        if found is not None:
            names = tuple(sorted((b.name for b in found), key=order.__getitem__))
            heapq.heappush(heap, (_cost(list(found)), names, len(kept), found, out))

    push((), frozenset())
    results: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    skip = frozenset(chosen)
    for _ in range(50 * (count + 1)):  # each pop is one set; non-minimal ones cost a pop too
        if not heap or len(results) >= count:
            break
        _, names, fixed, found, out = heapq.heappop(heap)
        if frozenset(names) not in seen and minimal(found) and frozenset(names) != skip:
            results.append(list(names))
        seen.add(frozenset(names))
        for i in range(fixed, len(found)):
            push(found[:i], out | {groups[found[i].name]})
    return results


def next_block(blocks: list[BlockScore], chosen: list[str]) -> BlockScore | None:
    """The best-scored unit of a block none of whose units is chosen, or None when all are."""
    taken = {b.key for b in blocks if b.name in chosen}
    for block in rank(blocks):
        if block.key not in taken:
            return block
    return None


def check_reachable(target: float, all_dropped_cut_percent: float, model_name: str = "the model") -> None:
    """A TargetError when a latency ``target`` (a fraction) exceeds the measured cut of dropping
    every candidate: known as soon as latency is measured, before any block is scored."""
    if 100.0 * target > all_dropped_cut_percent:
        raise TargetError(
            f"a {100.0 * target:.0f}% latency cut is out of reach for {model_name}: dropping every "
            f"droppable block cuts {all_dropped_cut_percent:.1f}% (measured); ask for less"
        )


def cut_goal(target: float, margin: float, all_dropped_cut_percent: float) -> float:
    """What a measured cut (percent) must show to count for a ``target`` (a fraction): ``margin``
    points above it, so that the verified cut does not fall short through noise alone, but never
    more than dropping every candidate cuts."""
    return min(100.0 * target + margin, all_dropped_cut_percent)


class _CutModel:
    """What a selection has measured so far, and the additive model corrected by it.

    Single-block savings do not add up exactly, so a set's predicted cut is its summed ΔLat times
    a scale: at first the ratio of the measured cut of dropping every candidate to the sum of all
    single savings, then the ratio pooled over every measurement of the sets proposed near the
    target (weighted by timing rounds). Pooling keeps one noisy reading from moving the next
    proposal by a whole block; the last reading alone did, and a cut that read a point low sent
    the selection a block past the window.
    """

    def __init__(self, scores: list[BlockScore], all_dropped_cut_percent: float):
        self.by_name = {s.name: s for s in scores}
        self.summed_all = sum(s.delta_lat for s in scores)
        self.prior = all_dropped_cut_percent / self.summed_all if self.summed_all > 0 else 1.0
        self.readings: dict[tuple[str, ...], list[tuple[float, int]]] = {}  # set -> [(cut %, rounds)]

    def summed(self, dropped: list[str]) -> float:
        return sum(self.by_name[n].delta_lat for n in dropped)

    def cost(self, dropped: list[str]) -> float:
        return sum(self.by_name[n].cost for n in dropped)

    @property
    def scale(self) -> float:
        weight = sum(r * self.summed(list(s)) for s, rs in self.readings.items() for _, r in rs)
        if weight <= 0:
            return self.prior
        return sum(r * cut for rs in self.readings.values() for cut, r in rs) / weight

    def predicted(self, dropped: list[str]) -> float:
        """The cut (a fraction) the corrected model gives ``dropped``."""
        return self.summed(dropped) * self.scale / 100.0

    def record(self, measured: MeasuredCut, rounds: int) -> float:
        cut = 100.0 * measured.reduction
        if cut > 0 and self.summed(measured.blocks) > 0:
            self.readings.setdefault(tuple(measured.blocks), []).append((cut, rounds))
        return cut

    def mean(self, dropped: list[str]) -> float:
        """The mean measured cut (percent) of ``dropped``, weighted by timing rounds."""
        readings = self.readings.get(tuple(dropped), [])
        return sum(c * r for c, r in readings) / sum(r for _, r in readings) if readings else 0.0


def select_blocks(
    scores: list[BlockScore],
    measure: Measure,
    *,
    target: float | None = None,
    drop: int | None = None,
    all_dropped_cut_percent: float = 100.0,
    margin: float = 1.0,
    window: float | None = 3.0,
    window_cost: float = 0.1,
    method: str = "min-recoverability",
    model_name: str = "the model",
    log: Callable[[str], None] = lambda message: None,
) -> Selection:
    """The blocks to drop for a latency ``target`` (a fraction) or a ``drop`` count, measured.

    Proposes sets from the single-block savings scaled by what has been measured (``_CutModel``),
    measures each once, and keeps the cheapest whose measured cut reaches the target once a
    second, longer measurement confirms it (a noisy first measurement can flatter a selection).
    Of sets that reach it, one measured inside the window is preferred over a cheaper one past it
    when it costs at most ``window_cost`` more. When none is confirmed, the next proposals must
    save more than every set that fell short, still inside the window where blocks allow it;
    adding blocks by score is the last resort (it lands a whole block past the target).
    Measurements must clear the target by ``margin`` points, so that the verified cut does not fall
    short through noise alone, and a proposal's predicted cut stays within ``window`` points above
    the target where a set at most ``window_cost`` dearer than the cheapest cover allows it (None:
    the cheapest cover, however far above; see ``select_by_target``).
    """
    if drop is not None:
        dropped = select_by_count(scores, drop)
        return Selection(dropped, measure(dropped))
    if target is None:
        raise ConfigError("give a latency-reduction target or a drop count")
    goal_percent = 100.0 * target
    check_reachable(target, all_dropped_cut_percent, model_name)
    goal = cut_goal(target, margin, all_dropped_cut_percent)
    upper = goal_percent + window if window is not None else None
    model = _CutModel(scores, all_dropped_cut_percent)
    predictions: dict[tuple[str, ...], float] = {}
    short_of = 0.0  # summed ΔLat a proposal must exceed: the largest of the sets confirmed short

    def propose() -> list[str]:
        scale, summed_all = model.scale, model.summed_all
        need = min(max(goal / scale, short_of + _RESOLUTION), summed_all)
        bound = min(upper / scale, summed_all) if upper is not None else None
        dropped = select_by_target(scores, need, method, bound, window_cost)
        predictions.setdefault(tuple(dropped), model.predicted(dropped))
        return dropped

    readings: list[dict[str, Any]] = []

    def measured(dropped: list[str], rounds: int) -> MeasuredCut:
        result = measure(dropped, rounds=rounds)
        cut = model.record(result, rounds)
        guess = predictions.get(tuple(dropped), model.predicted(dropped))
        readings.append({"blocks": list(dropped), "predicted": round(100 * guess, 3), "measured": round(cut, 3),
                         "rounds": rounds})
        log(f"{len(dropped)} blocks: predicted cut {100 * guess:.1f}%, measured {cut:.1f}%"
            + (" (longer)" if rounds > 1 else ""))
        return result

    def accepted(result: MeasuredCut) -> Selection:
        key = tuple(result.blocks)
        return Selection(list(result.blocks), result, predictions.get(key, model.predicted(list(result.blocks))),
                         readings)

    proposed: set[tuple[str, ...]] = set()
    for _ in range(4):
        dropped = propose()
        if tuple(dropped) in proposed:
            break
        proposed.add(tuple(dropped))
        measured(dropped, 1)
    rejected: set[tuple[str, ...]] = set()
    last: MeasuredCut | None = None
    for dropped in [*_confirm_order(model, goal, upper, window_cost), *(None for _ in range(3))]:
        dropped = dropped or propose()  # past the measured sets: new proposals saving more
        if tuple(dropped) in rejected:
            break
        last = measured(dropped, 2)
        if 100.0 * last.reduction >= goal:
            return accepted(last)
        rejected.add(tuple(dropped))
        short_of = max(short_of, model.summed(dropped))
        log(f"measured {100 * last.reduction:.1f}% < {goal:.1f}%: not confirmed")
    assert last is not None  # the first confirmation cannot be a rejected set
    return _top_up(scores, measured, dropped, last, goal, goal_percent, model_name, log, accepted)


def _confirm_order(model: _CutModel, goal: float, upper: float | None, window_cost: float) -> list[list[str]]:
    """The measured sets whose mean cut reaches ``goal``, in the order to confirm them: cheapest
    first, except that a set measured inside the window goes first while it costs at most
    ``window_cost`` more than the cheapest."""
    feasible = [list(s) for s in model.readings if model.mean(list(s)) >= goal]
    feasible.sort(key=model.cost)
    if not feasible or upper is None:
        return feasible
    cheapest = model.cost(feasible[0])
    inside = [s for s in feasible if model.mean(s) <= upper and model.cost(s) <= (1.0 + window_cost) * cheapest + 1e-12]
    return inside + [s for s in feasible if s not in inside]


def _top_up(scores: list[BlockScore], measure: Callable[[list[str], int], MeasuredCut], dropped: list[str],
            last: MeasuredCut, goal: float, goal_percent: float, model_name: str, log: Callable[[str], None],
            accepted: Callable[[MeasuredCut], Selection]) -> Selection:
    """Blocks added by score to ``dropped`` until a long measurement reaches ``goal``."""
    order = {s.name: s.step for s in scores}
    measured = last
    while True:
        extra = next_block(scores, dropped)
        if extra is None:
            raise TargetError(
                f"a {goal_percent:.0f}% latency cut is out of reach for {model_name}: dropping every "
                f"droppable block cut {100 * measured.reduction:.1f}% (measured); ask for less"
            )
        log(f"measured cut {100 * measured.reduction:.1f}% < {goal:.1f}%: adding {extra.name}")
        dropped = sorted(dropped + [extra.name], key=order.__getitem__)
        measured = measure(dropped, 2)
        if measured.reduction * 100.0 >= goal:
            return accepted(measured)
