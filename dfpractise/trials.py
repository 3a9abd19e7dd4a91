"""Which of a few sets of blocks recovers best, tried briefly before the real recovery.

The selection keeps the set with the least summed single-block cost, each cost measured with that
block alone taken out. Blocks interact: two adjacent holes can recover better together than their
costs say, so the cheapest set is not always the one that recovers best (``benchmarks/NOTES.md``,
"Reading every set of blocks at the ResNet-20s' 30% cut"). With ``trials.sets`` above 1 the run
also measures the next cheapest minimal sets (``selection.alternatives``), keeps those whose
measured cut reaches the target, recovers each for ``trials.iterations`` steps on most of the tiny
set, and keeps the set whose features are closest to the teacher's on blends of two of the
images held back; the smaller cut wins a tie. Label-free, like the rest of a run. Each trial is
written as it ends, so an interrupted run resumes after the last finished one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .models.adapter import ModelAdapter
from .progress import Progress
from .recovery import recover
from .errors import DataError
from .report import read_json, write_json
from .selection import Measure, MeasuredCut, Selection


@dataclass
class Trial:
    """One set of blocks tried: its measured cut, and its held-back error once it was recovered
    (None while it has not been, and for good when its cut fell short of the target)."""

    blocks: list[str]
    cut: MeasuredCut
    error: float | None = None
    confirmed: MeasuredCut | None = None
    """The second measurement of a set about to be kept: it must reach the target too, as a
    selection's must (the best of several first readings flatters the set it picks)."""

    def to_json(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "cut": self.cut.to_json(), "error": self.error,
                "confirmed": self.confirmed.to_json() if self.confirmed is not None else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Trial":
        confirmed = data.get("confirmed")
        return cls(list(data["blocks"]), MeasuredCut.from_json(data["cut"]), data.get("error"),
                   MeasuredCut.from_json(confirmed) if confirmed else None)


@dataclass
class Trials:
    """Every set tried, in the order tried (the selection first), and the one kept."""

    FILE = "trials.json"
    PARTIAL = "trials.partial.json"
    """The trials finished so far, while the phase runs (what a resumed run starts from)."""
    chosen: list[str]
    trials: list[Trial] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"chosen": list(self.chosen), "trials": [t.to_json() for t in self.trials]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Trials":
        return cls(list(data["chosen"]), [Trial.from_json(t) for t in data["trials"]])

    def selection(self, selected: Selection) -> Selection:
        """``selected`` when it was kept, else the kept set with its trial's measurement, and every
        trial's reading added to the selection's."""
        kept = next(t for t in self.trials if t.blocks == self.chosen)
        readings = selected.readings + [
            {"blocks": list(t.blocks), "measured": round(100 * cut.reduction, 3), "rounds": 2, "trial_error": t.error}
            for t in self.trials if t.blocks != selected.dropped
            for cut in ([t.cut] if t.confirmed is None else [t.cut, t.confirmed])]
        if kept.blocks == selected.dropped:
            return Selection(selected.dropped, selected.measured, selected.predicted, readings)
        return Selection(list(kept.blocks), kept.confirmed or kept.cut, None, readings)


Judge = Callable[[list[str], str], float]
"""Recovers a set of blocks briefly and returns its error on held-back images (lower is better);
the second argument names its progress bar."""


def try_sets(selected: Selection, candidates: list[list[str]], measure: Measure, judge: Judge, goal_percent: float,
             done: list[Trial] | None = None, save: Callable[[list[Trial]], None] = lambda trials: None,
             log: Callable[[str], None] = lambda message: None) -> Trials:
    """Measure every candidate's cut, then judge the selection and each candidate whose cut reaches
    ``goal_percent``; keep the least error, the smaller cut on a tie, once a second measurement
    confirms its cut (else the next). When no other set reaches the goal, the selection is kept
    without a trial (nothing to compare it with).

    ``done``: trials measured or judged before an interruption, not done again. ``save`` is called
    with every trial so far once all are measured and after each one judged.
    """
    known = {tuple(t.blocks): t for t in (done or [])}
    trials = []
    for blocks in [selected.dropped] + [c for c in candidates if c != selected.dropped]:
        trial = known.get(tuple(blocks))
        if trial is None:
            trial = Trial(list(blocks), selected.measured if blocks == selected.dropped else measure(blocks, rounds=2))
        trials.append(trial)
        if 100 * trial.cut.reduction < goal_percent:
            log(f"{', '.join(blocks)} cuts {100 * trial.cut.reduction:.1f}% < {goal_percent:.1f}%: not tried")
    save(trials)
    eligible = [t for t in trials if 100 * t.cut.reduction >= goal_percent]
    if len(eligible) < 2:
        log("no other set of blocks reaches the target: the selection is kept untried")
        return Trials(list(selected.dropped), trials)
    for number, trial in enumerate(eligible, 1):
        if trial.error is not None:
            continue
        log(f"trial {number}/{len(eligible)}: {', '.join(trial.blocks)} (cut {100 * trial.cut.reduction:.1f}%)")
        trial.error = float(judge(list(trial.blocks), f"Trying set {number}/{len(eligible)}"))
        log(f"trial {number}/{len(eligible)}: held-back error {trial.error:.4f}")
        save(trials)
    best = trials[0]  # the selection, whose cut its own selection confirmed
    for candidate in sorted(eligible, key=lambda t: (t.error, t.cut.reduction)):
        if candidate.blocks == selected.dropped:
            break
        if candidate.confirmed is None:
            candidate.confirmed = measure(candidate.blocks, rounds=2)
            save(trials)
        if 100 * candidate.confirmed.reduction >= goal_percent:
            best = candidate
            break
        log(f"{', '.join(candidate.blocks)} measured {100 * candidate.confirmed.reduction:.1f}% < "
            f"{goal_percent:.1f}% the second time: not kept")
    return Trials(list(best.blocks), trials)


def held_back_split(images: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images held back (``share`` of them, drawn with ``seed``), the rest to recover on, and
    each held-back image blended half and half with another held-back one (paired with ``seed`` + 1).
    The same for every set a run tries, and for the set-cost benchmark's probe of these trials."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    count = min(len(images) - 1, max(2, round(share * len(images))))
    held, train = images[order[:count]], images[order[count:]]
    partner = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))
    return held, train, 0.5 * held + 0.5 * held[partner]


def held_back_judge(config: RunConfig, teacher: nn.Module, adapter: ModelAdapter, images: torch.Tensor,
                    augment: Callable[[torch.Tensor], torch.Tensor],
                    normalize: Callable[[torch.Tensor], torch.Tensor], progress: Progress) -> Judge:
    """A ``Judge``: recover for ``config.trials.iterations`` steps on the tiny set less a held-back
    share (drawn with the run's seed; the same for every set), then the MSE of the final features
    against the teacher's on blends of two held-back images.

    Blends, because on the held-back images themselves a student can look right and be wrong: the
    teacher is sure of every inverted image, and a set that cut into the last stage matched it there
    better than any other (KL of predictions) and recovered worst on real images. Halfway between
    two images is where the teacher hesitates, as it does on real ones; of the eight signals measured
    (``benchmarks/NOTES.md``, "Reading the trials") the features there ranked the ResNet-20s' sets best.
    """
    held, train, blends = held_back_split(images, config.trials.held_back, config.seed)
    settings = config.recovery.replace(iterations=config.trials.iterations, checkpoint_every=0)
    device = torch.device(config.device)
    x = normalize(blends.to(device))
    teacher.eval()
    with torch.no_grad():
        wanted = adapter.features(teacher, x).float()

    def judge(blocks: list[str], description: str) -> float:
        student = adapter.drop(blocks)
        recover(student, teacher, train, settings, augment, normalize, seed=config.seed, device=device,
                progress=progress, adapter=adapter, precision=config.precision, description=description)
        with torch.no_grad():
            return F.mse_loss(adapter.features(student, x).float(), wanted).item()

    return judge


def partial_record(folder: Path | None, resume: bool) -> tuple[list[Trial], Callable[[list[Trial]], None]]:
    """The trials an interrupted run finished in ``folder`` (when resuming it), and the function
    that records more there (nothing without a folder)."""
    path = folder / Trials.PARTIAL if folder is not None else None
    done = []
    if resume and path is not None and path.exists():
        try:
            done = [Trial.from_json(t) for t in read_json(path)["trials"]]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path} is damaged or was written by another version; delete it to redo the trials") \
                from None

    def save(trials: list[Trial]) -> None:
        if path is not None:
            write_json({"trials": [t.to_json() for t in trials]}, path)

    return done, save
