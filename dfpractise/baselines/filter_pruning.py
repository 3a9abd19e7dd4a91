"""Filter pruning of residual blocks' inner channels: the baseline PRACTISE is compared with.

The classic setting of Li et al. 2017 ("Pruning Filters for Efficient ConvNets") for ResNets:
only the channels *inside* each residual block are pruned (the output channels of a BasicBlock's
``conv1``, of a Bottleneck's ``conv1`` and ``conv2``); the residual stream (stem, every block's
last conv, projection shortcuts, classifier) keeps its width. Torch-Pruning does the surgery: its
dependency graph carries a pruned ``conv1`` output through ``bn1`` into ``conv2``'s input.

Why not let Torch-Pruning prune the residual stream too: the CIFAR ResNets' option-A shortcut
(``F.pad`` on the channel axis) is traced as an element-wise op, so Torch-Pruning couples a
16-channel stage with the next 32-channel stage index by index (ignoring the pad offset) and the
pruned network no longer runs. Keeping the stream out of the pruning avoids that graph entirely.

Latency is matched by measurement, not FLOPs: ``match_latency`` searches the ratio whose measured
cut is closest to the cut that block dropping achieved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..latency import Timing, compare_latency
from ..models.adapter import spec_of
from ..progress import Progress

IMPORTANCES = ("l1", "taylor")
"""Filter importance criteria: ``l1`` (Li et al. 2017, L1 norm of the filter) and ``taylor``
(Molchanov et al. 2019, |w * dL/dw| summed over the coupled weights; needs a loss)."""

TaylorLoss = Callable[[nn.Module], torch.Tensor]
Measure = Callable[[Mapping[str, nn.Module]], float]


# ---------------------------------------------------------------------------------------------
# Which convs are block-internal


def _inner_attributes(block: nn.Module) -> tuple[str, ...] | None:
    """Names of the convs whose output channels stay inside ``block``, or None if not a block."""
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import Bottleneck

    from ..models.cifar_resnet import BasicBlock as CifarBasicBlock

    if isinstance(block, (CifarBasicBlock, TVBasicBlock)):
        return ("conv1",)
    if isinstance(block, Bottleneck):
        return ("conv1", "conv2")
    return None


def inner_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) of every block-internal conv, in module order; ConfigError if there is none.

    These are the only convs whose output channels can be removed without touching a residual
    addition: their outputs feed just the next conv of the same block.
    """
    found: list[tuple[str, nn.Conv2d]] = []
    for name, module in model.named_modules():
        attributes = _inner_attributes(module)
        for attribute in attributes or ():
            conv = getattr(module, attribute)
            if conv.groups != 1:
                raise ConfigError(
                    f"filter pruning supports plain convs only; {name}.{attribute} is grouped "
                    f"(groups={conv.groups})"
                )
            found.append((f"{name}.{attribute}", conv))
    if not found:
        raise ConfigError(
            f"filter pruning supports ResNets (CIFAR or torchvision BasicBlock/Bottleneck); "
            f"{type(model).__name__} has no such block"
        )
    return found


def inner_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every block-internal conv: what a pruned model changed, for the record."""
    return {name: conv.out_channels for name, conv in inner_convs(model)}


def kept_channels(channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels a layer keeps under Torch-Pruning's local pruning (mirrors ``BasePruner._prune``)."""
    keep = int(channels * (1 - ratio))
    if keep < channels and round_to:
        keep -= keep % round_to
    return keep


# ---------------------------------------------------------------------------------------------
# Pruning


def prune_filters(
    model: nn.Module,
    example_inputs: torch.Tensor | None,
    ratio: float,
    importance: str = "l1",
    round_to: int | None = None,
    taylor_loss: TaylorLoss | None = None,
) -> nn.Module:
    """A pruned deep copy of ``model``: each block's inner convs lose ``ratio`` of their filters.

    ``example_inputs`` (None: one random image at the model's input size) is used for tracing
    only. Ranking is per layer (local pruning), as in Li et al.; ``round_to`` keeps channel counts
    multiples of it (CPU/GPU kernels like multiples of 8). ``taylor`` importance calls
    ``taylor_loss(copy)`` in eval mode and back-propagates it; the loss must have a non-zero
    gradient at the unpruned weights (see ``pseudo_label_loss``). The copy keeps the model's
    train/eval mode, ``model_spec`` and feature protocol.
    """
    tp = _torch_pruning()
    _check_ratio(ratio)
    _check_round_to(round_to)
    scorer = _importance(tp, importance, taylor_loss)
    pruned = copy.deepcopy(model)
    targets = inner_convs(pruned)
    _check_widths(targets, ratio, round_to)
    example_inputs = _example_inputs(pruned, example_inputs)
    was_training = pruned.training
    pruned.eval()  # tracing runs a forward: it must not touch BatchNorm statistics
    try:
        pruner = _pruner_class(tp)(
            pruned,
            example_inputs,
            importance=scorer,
            pruning_ratio=ratio,
            ignored_layers=_stream_layers(pruned, targets),
            round_to=round_to,
            global_pruning=False,
        )
        if importance == "taylor":
            with _gradients(pruned):
                _backward(pruned, taylor_loss, targets)
                pruner.step()
        else:
            pruner.step()
    finally:
        pruned.train(was_training)
    _check_stream_unchanged(model, pruned, {name for name, _ in targets})
    return pruned


def pseudo_label_loss(inputs: torch.Tensor) -> TaylorLoss:
    """A label-free Taylor loss: cross-entropy against the model's own predictions on ``inputs``.

    Why not feature mimicking: before pruning the copy *is* the teacher, so an MSE against the
    teacher's features is exactly zero with a zero gradient, and every Taylor score would be 0.
    The teacher's argmax labels keep the criterion label-free and give a real gradient.
    ``inputs`` are what the model takes (already normalised).
    """

    def loss(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            labels = model(inputs).argmax(dim=1)
        return F.cross_entropy(model(inputs), labels)

    return loss


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as error:  # an optional dependency: only the baselines need it
        raise ConfigError(
            "filter pruning needs torch-pruning: pip install 'dfpractise[bench]'"
        ) from error
    return torch_pruning


def _pruner_class(tp):
    """``BasePruner`` (Torch-Pruning >= 1.5); ``MetaPruner``, its earlier name, in 1.4."""
    return getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio must be a number in (0, 1), got {ratio!r}")


def _check_round_to(round_to: int | None) -> None:
    if round_to is None:
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer or None, got {round_to!r}")


def _importance(tp, importance: str, taylor_loss: TaylorLoss | None):
    """Torch-Pruning's scorer for ``importance``; ranking is per layer, so no normaliser."""
    if importance == "l1":
        # "first": the L1 norm of the conv1 filter alone (Li et al.), not averaged with bn1/conv2
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if importance == "taylor":
        if taylor_loss is None:
            raise ConfigError("taylor importance needs taylor_loss (e.g. pseudo_label_loss(images))")
        return tp.importance.TaylorImportance(group_reduction="mean", normalizer=None)
    raise ConfigError(f"unknown filter importance {importance!r}; choose from {', '.join(IMPORTANCES)}")


def _check_widths(targets: list[tuple[str, nn.Conv2d]], ratio: float, round_to: int | None) -> None:
    for name, conv in targets:
        if kept_channels(conv.out_channels, ratio, round_to) < 1:
            rounding = f" rounded to multiples of {round_to}" if round_to else ""
            raise ConfigError(
                f"pruning ratio {ratio:g}{rounding} would remove every channel of {name} "
                f"({conv.out_channels} channels); use a smaller ratio"
            )


def _example_inputs(model: nn.Module, example_inputs: torch.Tensor | None) -> torch.Tensor:
    device = next(model.parameters()).device
    if example_inputs is not None:
        return example_inputs.to(device)
    size = spec_of(model).input_size
    return torch.randn(1, 3, size, size, device=device)


def _stream_layers(model: nn.Module, targets: list[tuple[str, nn.Conv2d]]) -> list[nn.Module]:
    """Every conv/linear that is not a target: Torch-Pruning must not choose them as roots."""
    keep = {id(conv) for _, conv in targets}
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in keep]


class _gradients:
    """Let every parameter take a gradient for the Taylor pass; restore flags and drop grads after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = {name: p.requires_grad for name, p in model.named_parameters()}

    def __enter__(self) -> None:
        self.model.requires_grad_(True)
        self.model.zero_grad(set_to_none=True)

    def __exit__(self, *exc) -> None:
        # parameters are new objects after pruning: restore by name
        for name, p in self.model.named_parameters():
            p.grad = None
            p.requires_grad_(self.flags.get(name, True))


def _backward(model: nn.Module, loss_fn: TaylorLoss, targets: list[tuple[str, nn.Conv2d]]) -> None:
    loss = loss_fn(model)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not torch.isfinite(loss).all():
        raise ConfigError(f"taylor_loss must return a finite scalar tensor, got {loss!r}")
    loss.reshape(()).backward()
    if all(conv.weight.grad is None or not conv.weight.grad.any() for _, conv in targets):
        raise ConfigError(
            "taylor_loss has a zero gradient on every pruned conv, so Taylor importance would be 0 "
            "everywhere (a feature MSE against an identical teacher is one such loss); "
            "use a loss with a gradient at the teacher, e.g. pseudo_label_loss(images)"
        )


def _check_stream_unchanged(original: nn.Module, pruned: nn.Module, targets: set[str]) -> None:
    """Guard against Torch-Pruning reaching past the block interiors (a bug, not a user error)."""
    before = {n: m for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for name, module in pruned.named_modules():
        if name in targets or name not in before:
            continue
        if isinstance(module, nn.Conv2d) and module.out_channels != before[name].out_channels:
            raise RuntimeError(f"filter pruning changed the residual stream at {name}")
        if isinstance(module, nn.Linear) and module.out_features != before[name].out_features:
            raise RuntimeError(f"filter pruning changed the classifier {name}")


# ---------------------------------------------------------------------------------------------
# Matching a measured latency cut


def latency_measure(timing: Timing) -> Measure:
    """``measure({"teacher": t, "pruned": p})`` -> median measured cut of p against t (a fraction).

    Built on ``compare_latency`` with the teacher as reference, so each timing of the pruned
    model is bracketed by teacher forwards.
    """

    def measure(models: Mapping[str, nn.Module]) -> float:
        comparison = compare_latency(models, timing, reference="teacher")
        (other,) = [name for name in models if name != "teacher"]
        return comparison.reduction(other, "teacher")[0]

    return measure


def match_latency(
    model: nn.Module,
    target_cut: float,
    make_pruned: Callable[[float], nn.Module],
    measure: Measure | None = None,
    tolerance: float = 0.02,
    max_trials: int = 8,
    bounds: tuple[float, float] = (0.05, 0.9),
    progress: Progress | None = None,
) -> tuple[float, nn.Module, float, list[dict]]:
    """Search the pruning ratio whose measured latency cut is within ``tolerance`` of ``target_cut``.

    Returns (ratio, pruned model, measured cut, trial log). Cuts are fractions of the unpruned
    model's latency. CPU kernel speed is not monotone in channel count, so this brackets and
    bisects on the ratio, measures each distinct structure once (ratios that give the same
    channel counts share a measurement), and keeps every trial. A trial within tolerance does not
    end the search: a plateau can put a far larger ratio within tolerance too (growth from 0.42
    once landed on the 0.9 bound), so it keeps bisecting below the match and returns the
    *smallest* ratio within tolerance, the least pruning that reaches the cut. If no trial lands
    within tolerance it returns the trial closest to the target from above (the smallest cut
    that still meets it), else the largest cut found; the chosen log entry says which
    (``chosen``, ``note``). ``max_trials`` counts measurements; ``bounds`` limits the ratios tried.
    """
    _check_search(target_cut, tolerance, max_trials, bounds)
    measure = measure or latency_measure(Timing(resolution=spec_of(model).input_size, repeats=5))
    progress = progress or Progress()
    search = _Search(target_cut, tolerance, bounds)
    log: list[dict] = []
    models: dict[int, nn.Module] = {}  # trial index -> model, only for trials that may be chosen
    seen: dict[tuple, int] = {}  # structure -> first trial index
    ratio: float | None = search.first()
    measured = repeats = 0
    while ratio is not None and measured < max_trials:
        pruned = make_pruned(ratio)
        structure = _structure(pruned)
        entry = {
            "trial": len(log) + 1,
            "ratio": ratio,
            "inner_channels": _inner_channel_total(pruned),
            "params": sum(p.numel() for p in pruned.parameters()),
            "measured": structure not in seen,
            "duplicate_of": None,
            "chosen": False,
            "note": "",
        }
        if structure in seen:
            first = log[seen[structure]]
            entry["duplicate_of"] = first["trial"]
            entry["cut"] = first["cut"]
            repeats += 1
        else:
            repeats = 0
            seen[structure] = len(log)
            entry["cut"] = float(measure({"teacher": model, "pruned": pruned}))
            models[len(log)] = pruned
            measured += 1
        entry["within_tolerance"] = abs(entry["cut"] - target_cut) <= tolerance
        log.append(entry)
        progress.log(_describe(entry, target_cut))
        _forget_losers(models, log, target_cut)
        if repeats >= _MAX_REPEATS:
            search.stopped = f"{repeats} bisections in a row gave no new channel counts"
            break
        ratio = search.next(ratio, entry["cut"], hit=entry["within_tolerance"])
    index, note = _choose(log, target_cut, tolerance, stopped=search.stopped)
    log[index]["chosen"] = True
    log[index]["note"] = note
    progress.log(f"filter pruning: chose ratio {log[index]['ratio']:.4f}, cut {log[index]['cut']:.2%}: {note}")
    return log[index]["ratio"], models[index], log[index]["cut"], log


def _check_search(target_cut: float, tolerance: float, max_trials: int, bounds: tuple[float, float]) -> None:
    if not 0 < target_cut < 1:
        raise ConfigError(f"target latency cut must be a fraction in (0, 1), got {target_cut!r}")
    if not tolerance > 0:
        raise ConfigError(f"tolerance must be positive, got {tolerance!r}")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(f"max_trials must be a positive integer, got {max_trials!r}")
    low, high = bounds
    if not 0 < low < high < 1:
        raise ConfigError(f"ratio bounds must satisfy 0 < low < high < 1, got {bounds!r}")


_MAX_REPEATS = 3
"""Consecutive already-seen structures after which the bracket is taken to hold no new one."""


class _Search:
    """Ratio proposals: grow until a trial overshoots the target, then bisect the bracket.

    Growing extrapolates cut ~ ratio from the last trial, but moves at least a step that doubles
    each time, so a plateau (many ratios, one measured speed) is crossed in a few trials.

    The bracket is (largest ratio measured below target, smallest ratio measured above it or
    within tolerance); every proposal lies strictly inside it, so it stays consistent even where
    the cut is not monotone, and after a match it only proposes smaller ratios.
    """

    MIN_WIDTH = 1e-3  # below this the bracket holds no other channel count worth measuring

    def __init__(self, target: float, tolerance: float, bounds: tuple[float, float]) -> None:
        self.target = target
        self.tolerance = tolerance
        self.low, self.high = bounds
        self.below: float | None = None
        self.above: float | None = None
        self.stopped = ""
        self.step = 0.025  # smallest growth step; doubles while growing, to cross plateaus fast

    def first(self) -> float:
        # inner convs carry nearly all block FLOPs, so cut ~ ratio is the optimistic first guess
        return min(max(self.target, self.low), self.high)

    def next(self, ratio: float, cut: float, hit: bool = False) -> float | None:
        if hit or cut >= self.target:
            self.above = ratio if self.above is None else min(self.above, ratio)
        else:
            self.below = ratio
        if self.above is None:
            return self._grow(ratio, cut)
        low = self.below if self.below is not None else self.low
        if self.above - low < self.MIN_WIDTH:
            self.stopped = "bracket narrower than one channel step"
            return None
        if self.below is None and self.above <= self.low:
            self.stopped = f"even the lowest ratio {self.low:g} cuts more than the target"
            return None
        return 0.5 * (low + self.above)

    def _grow(self, ratio: float, cut: float) -> float | None:
        if ratio >= self.high:
            self.stopped = f"the highest ratio {self.high:g} does not reach the target"
            return None
        proposal = ratio * self.target / cut if cut > 0 else 0.5 * (ratio + self.high)
        proposal = max(proposal, ratio + self.step)
        self.step *= 2
        return min(self.high, proposal)


def _describe(entry: dict, target: float) -> str:
    same = f" (same structure as trial {entry['duplicate_of']})" if entry["duplicate_of"] else ""
    return f"filter pruning: ratio {entry['ratio']:.4f} -> cut {entry['cut']:.2%}, target {target:.2%}{same}"


def _inner_channel_total(model: nn.Module) -> int | None:
    try:
        return sum(inner_widths(model).values())
    except ConfigError:  # the search itself works for any model make_pruned returns
        return None


def _structure(model: nn.Module) -> tuple:
    """Parameter shapes: two ratios that give the same shapes give the same network."""
    return tuple(tuple(p.shape) for p in model.parameters())


def _candidates(log: list[dict], target: float) -> set[int]:
    """Measured trials that can still be chosen: any within tolerance, the best above, the best below."""
    unique = [i for i, e in enumerate(log) if e["measured"]]
    keep = {i for i in unique if log[i]["within_tolerance"]}
    above = [i for i in unique if log[i]["cut"] >= target]
    below = [i for i in unique if log[i]["cut"] < target]
    if above:
        keep.add(min(above, key=lambda i: log[i]["cut"]))
    if below:
        keep.add(max(below, key=lambda i: log[i]["cut"]))
    return keep


def _forget_losers(models: dict[int, nn.Module], log: list[dict], target: float) -> None:
    """Drop the models of trials that can no longer be chosen, so memory stays flat."""
    keep = _candidates(log, target)
    for index in [i for i in models if i not in keep]:
        del models[index]


def _choose(log: list[dict], target: float, tolerance: float, stopped: str) -> tuple[int, str]:
    unique = [i for i, e in enumerate(log) if e["measured"]]
    hits = [i for i in unique if log[i]["within_tolerance"]]
    if hits:
        return min(hits, key=lambda i: log[i]["ratio"]), "the smallest ratio within tolerance"
    reason = f"no trial within ±{tolerance:g} of the target {target:g}"
    if stopped:
        reason += f" ({stopped})"
    above = [i for i in unique if log[i]["cut"] >= target]
    if above:
        return min(above, key=lambda i: log[i]["cut"]), reason + "; chose the closest cut at or above it"
    best = max(unique, key=lambda i: log[i]["cut"])
    return best, reason + "; none reached it, chose the largest cut"


# ---------------------------------------------------------------------------------------------
# A filter-pruned network at a given measured cut


@dataclass
class MatchedPruning:
    """A filter-pruned copy of a model whose measured cut was searched to match a target cut."""

    model: nn.Module
    importance: str
    ratio: float
    round_to: int | None
    cut: float  # measured, a fraction of the unpruned model's latency
    target_cut: float
    within_tolerance: bool
    trials: list[dict]  # every trial of every search, each with its round_to

    def to_json(self) -> dict:
        """Everything but the model; ``prune_filters(model, None, ratio, importance, round_to)``
        rebuilds it (L1; Taylor also needs its loss)."""
        return {"importance": self.importance, "ratio": self.ratio, "round_to": self.round_to, "cut": self.cut,
                "target_cut": self.target_cut, "within_tolerance": self.within_tolerance, "trials": self.trials}


def max_ratio(model: nn.Module, round_to: int | None) -> float:
    """The largest pruning ratio (to 0.005) that leaves every block-internal conv a channel."""
    widths = inner_widths(model).values()
    ratio = 0.9
    while ratio > 0.05 and any(kept_channels(w, ratio, round_to) < 1 for w in widths):
        ratio -= 0.005
    return round(ratio, 3)


def prune_to_cut(
    model: nn.Module,
    target_cut: float,
    timing: Timing,
    *,
    importance: str = "l1",
    round_to: tuple[int | None, ...] = (8, None),
    tolerance: float = 0.02,
    max_trials: int = 8,
    taylor_loss: TaylorLoss | None = None,
    measure: Measure | None = None,
    progress: Progress | None = None,
) -> MatchedPruning:
    """Filter pruning of ``model`` at the ratio whose measured cut (``timing``) matches ``target_cut``.

    Each ``round_to`` setting is searched in turn (``match_latency``) until one lands within
    ``tolerance``: widths in multiples of 8 suit CPU kernels but may not reach every cut, so
    unrounded widths (None) come next. If none lands, the trial closest to the target wins.
    ``measure`` replaces the timing (``latency_measure(timing)``), e.g. by a fake one in tests.
    """
    measure = measure or latency_measure(timing)
    attempts: list[MatchedPruning] = []
    trials: list[dict] = []
    for rounding in round_to:
        ratio, pruned, cut, log = match_latency(
            model, target_cut,
            lambda r, rt=rounding: prune_filters(model, None, r, importance, round_to=rt, taylor_loss=taylor_loss),
            measure=measure, tolerance=tolerance, max_trials=max_trials,
            bounds=(0.05, max_ratio(model, rounding)), progress=progress,
        )
        trials += [{**trial, "round_to": rounding} for trial in log]
        attempts.append(MatchedPruning(pruned, importance, ratio, rounding, cut, target_cut,
                                       abs(cut - target_cut) <= tolerance, trials))
        if attempts[-1].within_tolerance:
            break
    chosen = next((a for a in attempts if a.within_tolerance), min(attempts, key=lambda a: abs(a.cut - target_cut)))
    chosen.trials = trials
    return chosen


__all__ = [
    "IMPORTANCES",
    "MatchedPruning",
    "inner_convs",
    "inner_widths",
    "kept_channels",
    "latency_measure",
    "match_latency",
    "max_ratio",
    "prune_filters",
    "prune_to_cut",
    "pseudo_label_loss",
]
