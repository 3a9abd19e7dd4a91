"""Synthesis settings chosen per teacher, from synthesis-side signals alone (never accuracy on val).

The loss weights of BN-statistics inversion and of the generator were chosen on one teacher; a
user's teacher is another, and a data-free user has no labelled images to tune on. So a few
declared candidate settings (``PLANS``) are each tried on a short probe, one batch of
``probe_images`` images (64) made at reduced cost, and scored by what synthesis itself can check
(``quality_report``): does the teacher see the intended classes (agreement), how far the batch's
BatchNorm statistics are from the teacher's running ones (BN distance), and how diverse the
images look to the teacher (mean cosine distance between its penultimate features of two images
of one class).

The rule, in order:

1. a candidate whose agreement is below ``agreement_floor`` (0.95) is out: images the teacher
   does not see as their class teach recovery the wrong thing;
2. of those left, a candidate whose feature diversity is below ``diversity_fraction`` (0.5) of the
   most diverse one's is out: a set of near-copies matches statistics well and teaches little;
3. of those left, the lowest BN distance *relative to that of a noise batch of the same size*
   (the probe's starting point, Gaussian noise in the teacher's input space) wins. Relative, so
   the number means the same on teachers whose BN layers are many or few, wide or narrow. Ties
   go to the earlier candidate in the declared order (the defaults come first).

If no candidate reaches the agreement floor, the one with the highest agreement is taken (ties:
the lower relative BN distance) and the table says so (``fallback``); if every probe diverged,
the first candidate (the defaults) is kept and the table says that. Candidates whose settings the
caller gave explicitly are merged with those (explicit settings always win), so candidates that
differ only in a given setting collapse into one and are probed once; with one left there is
nothing to choose and nothing is probed.

Candidates (few, because each costs a probe; each differs from the defaults in one setting, and
the defaults are always one, so the choice can only move away from the defaults where the
probe's own signals say the move is better):

- ``bn-inversion``: ``bn_weight`` 0.015, 0.05 (default), 0.15 (spanning a decade) and the
  first-layer multiplier ``first_bn_multiplier`` 10 (the paper's) or 1. ``bn_weight`` is the
  setting that trades agreement for BN fidelity, and its right value scales with how many BN
  layers the teacher has and how large their statistics are, i.e. with the teacher; the first
  layer's weight decides how much of the optimisation goes to low-level colour and texture
  statistics, which is where a teacher trained on another domain (lossless CIFAR-10 rather than
  JPEG) differs. The probe makes its batch in a fifth of ``steps`` (at least 1).
- ``generator``: the same ``bn_weight`` values, and the generator's fine-tuning ``lr`` 5e-3
  (default) or 1.5e-2: with a few steps per batch, how far a step moves decides how much of the
  losses a batch reaches. ``meta_steps`` is not a candidate: more warm-up always helps these
  signals and only costs time, so choosing it by them would always take the most; the probe runs
  a quarter of the warm-up (at least 1 iteration) with the batch's usual ``steps``.

``choose_settings`` is a pure function of (teacher, synthesizer name, base settings, image size,
number of classes, seed) and the probe's own parameters: the same inputs give the same choice,
torch's global random state is as it was afterwards, and the teacher's weights and gradient flags
are left as they were (it is put in eval mode, as every synthesizer puts it). Only the
``seconds`` column of the table is measured, not computed. Progress goes out through the
package's plain callbacks (``on_step(done, total, **fields)`` and ``log(message)``).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .base import SYNTHESIZERS, Synthesizer, balanced_labels, create_synthesizer, model_fingerprint
from .cache import to_uint8
from .errors import ConfigError, SynthesisError
from .generate import ProgressCallback
from .quality import quality_report

AGREEMENT_FLOOR = 0.95
DIVERSITY_FRACTION = 0.5
PROBE_IMAGES = 64
_PROBE_TAG = 0x5E77  # mixed into the run seed: the probe's batch is none of the set's batches


@dataclass(frozen=True)
class AutoPlan:
    """What ``choose_settings`` tries for one synthesizer.

    ``candidates``: settings dicts, every one naming the same settings (the first should be the
    synthesizer's defaults). ``shrink``: setting -> the fraction of its value (given, or the
    synthesizer's default) the probe uses, rounded and at least 1, so a probe costs a fraction
    of a batch of the real run. A user's own synthesizer gets automatic settings by adding its
    plan to ``PLANS`` under its registered name.
    """

    candidates: tuple[dict[str, Any], ...]
    shrink: dict[str, float] = field(default_factory=dict)


PLANS: dict[str, AutoPlan] = {
    "bn-inversion": AutoPlan(
        candidates=(
            {"bn_weight": 0.05, "first_bn_multiplier": 10.0},
            {"bn_weight": 0.015, "first_bn_multiplier": 10.0},
            {"bn_weight": 0.15, "first_bn_multiplier": 10.0},
            {"bn_weight": 0.05, "first_bn_multiplier": 1.0},
        ),
        shrink={"steps": 0.2},
    ),
    "generator": AutoPlan(
        candidates=(
            {"bn_weight": 0.05, "lr": 5e-3},
            {"bn_weight": 0.015, "lr": 5e-3},
            {"bn_weight": 0.15, "lr": 5e-3},
            {"bn_weight": 0.05, "lr": 1.5e-2},
        ),
        shrink={"meta_steps": 0.25},
    ),
}


@dataclass
class AutoChoice:
    """What ``choose_settings`` chose, and why.

    ``settings``: the chosen values of the automatic settings the caller did not give (merge them
    under the caller's own). ``probes``: one row per distinct candidate probed, in declared order
    (settings, agreement, bn_distance, relative_bn_distance, feature_diversity(_in_class),
    seconds, status). ``fallback``: why the rule could not apply, or None.
    """

    method: str
    settings: dict[str, Any]
    probes: list[dict[str, Any]]
    rule: str
    fallback: str | None
    noise_bn_distance: float | None
    probe: dict[str, Any]
    seconds: float

    def to_report(self) -> dict[str, Any]:
        """JSON-able, for a tiny set's quality report."""
        return {
            "method": self.method, "chosen": dict(self.settings), "rule": self.rule, "fallback": self.fallback,
            "probe": dict(self.probe), "noise_bn_distance": self.noise_bn_distance, "probes": list(self.probes),
            "seconds": round(self.seconds, 2),
        }


def choose_settings(
    teacher: nn.Module,
    method: str,
    base: dict[str, Any] | None,
    image_size: int,
    num_classes: int,
    seed: int,
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    teacher_id: str | None = None,
    device: str = "cpu",
    candidates: Sequence[dict[str, Any]] | None = None,
    probe_images: int = PROBE_IMAGES,
    agreement_floor: float = AGREEMENT_FLOOR,
    diversity_fraction: float = DIVERSITY_FRACTION,
    on_step: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> AutoChoice:
    """Probe ``method``'s candidate settings on ``teacher`` and choose by the rule of this module.

    ``base``: the settings the caller gives explicitly (they win over every candidate's);
    ``candidates`` replaces the declared ``PLANS[method].candidates``. Bad input is a one-line
    ``ConfigError``.
    """
    began = time.perf_counter()
    plan = _plan(method, candidates)
    base = _check(base, image_size, num_classes, seed, probe_images, agreement_floor, diversity_fraction)
    keys = list(plan.candidates[0])
    given = {k: base[k] for k in keys if k in base}
    distinct: list[dict[str, Any]] = []
    for candidate in plan.candidates:
        merged = {**candidate, **given}
        if merged not in distinct:
            distinct.append(merged)
    chosen_keys = [k for k in keys if k not in given]
    probe = {**{k: _shrunk(method, base, k, f) for k, f in plan.shrink.items()}, "batch_size": probe_images,
             "images": probe_images}
    if len(distinct) == 1:
        note = ("every automatic setting was given explicitly" if not chosen_keys
                else "one candidate only")
        return AutoChoice(method, {k: distinct[0][k] for k in chosen_keys}, [], "nothing to choose", note, None,
                          probe, time.perf_counter() - began)
    teacher_id = teacher_id or model_fingerprint(teacher)
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        return _probe_all(teacher, method, base, distinct, chosen_keys, probe, image_size, num_classes, seed,
                          mean, std, teacher_id, device, agreement_floor, diversity_fraction, on_step, log, began)


def _probe_all(teacher, method, base, distinct, chosen_keys, probe, image_size, num_classes, seed, mean, std,
               teacher_id, device, agreement_floor, diversity_fraction, on_step, log, began) -> AutoChoice:
    probe_size = probe["images"]
    shrunk = {k: v for k, v in probe.items() if k != "images"}
    synthesizers: list[Synthesizer] = [
        create_synthesizer(method, teacher=teacher, mean=mean, std=std, teacher_id=teacher_id, device=device,
                           **{**base, **candidate, **shrunk})
        for candidate in distinct
    ]
    draw_seed = probe_seed(seed)
    labels = balanced_labels(probe_size, num_classes, draw_seed)
    noise_images = _noise(probe_size, image_size, mean, std, draw_seed)
    noise = quality_report(teacher, noise_images, None, mean, std, batch_size=probe_size)["bn_distance"]
    total = sum(s.setup_steps(image_size) + s.steps_per_batch for s in synthesizers)
    done = 0
    rows: list[dict[str, Any]] = []
    for index, (candidate, synthesizer) in enumerate(zip(distinct, synthesizers)):
        where = f"{index + 1}/{len(distinct)}"

        def report(where: str = where, **fields: float | str) -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(done, total, candidate=where, **fields)

        tick = time.perf_counter()
        row: dict[str, Any] = {"candidate": index + 1, "settings": {k: candidate[k] for k in chosen_keys}}
        try:
            images = synthesizer.generate(labels, image_size, draw_seed, report).images
            if not torch.isfinite(images).all():
                raise SynthesisError("the probe's images are not finite")
        except SynthesisError as err:
            rows.append({**row, "agreement": None, "bn_distance": None, "relative_bn_distance": None,
                         "feature_diversity": None, "feature_diversity_in_class": None,
                         "seconds": round(time.perf_counter() - tick, 2), "status": f"diverged: {err}"})
            continue
        quality = quality_report(teacher, _as_saved(images), labels, mean, std, batch_size=probe_size)
        bn = quality["bn_distance"]
        rows.append({
            **row, "agreement": quality["agreement"], "bn_distance": bn,
            "relative_bn_distance": round(bn / noise, 4) if bn is not None and noise else None,
            "feature_diversity": quality["feature_diversity"],
            "feature_diversity_in_class": quality["feature_diversity_in_class"],
            "seconds": round(time.perf_counter() - tick, 2), "status": "",
        })
    winner, fallback = _decide(rows, agreement_floor, diversity_fraction)
    rule = (f"agreement >= {agreement_floor}, then feature diversity >= {diversity_fraction} x the most diverse, "
            "then the lowest BN distance relative to a noise batch")
    chosen = {k: distinct[winner][k] for k in chosen_keys}
    if log is not None:
        said = ", ".join(f"{k}={v}" for k, v in chosen.items())
        log(f"automatic {method} settings: {said} (candidate {winner + 1} of {len(distinct)})"
            + (f"; {fallback}" if fallback else ""))
    return AutoChoice(method, chosen, rows, rule, fallback, noise, probe, time.perf_counter() - began)


def _decide(rows: list[dict[str, Any]], floor: float, fraction: float) -> tuple[int, str | None]:
    """Index of the winning row by the module's rule, and the fallback taken (None: the rule held).

    Writes each row's ``status``.
    """
    probed = [i for i, r in enumerate(rows) if not r["status"]]
    if not probed:
        rows[0]["status"] += "; kept (fallback)"
        return 0, "every candidate's probe diverged; kept the first candidate"
    agreeing = [i for i in probed if rows[i]["agreement"] >= floor]
    for i in probed:
        if i not in agreeing:
            rows[i]["status"] = f"agreement below {floor}"
    if not agreeing:
        best = min(probed, key=lambda i: (-rows[i]["agreement"], _bn(rows[i]), i))
        rows[best]["status"] = "chosen (fallback: highest agreement)"
        return best, f"no candidate reached agreement {floor}; chose the highest agreement"
    measure = ("feature_diversity_in_class" if all(rows[i]["feature_diversity_in_class"] is not None for i in agreeing)
               else "feature_diversity")
    diverse = agreeing
    if all(rows[i][measure] is not None for i in agreeing):
        bar = fraction * max(rows[i][measure] for i in agreeing)
        diverse = [i for i in agreeing if rows[i][measure] >= bar]
        for i in agreeing:
            if i not in diverse:
                rows[i]["status"] = f"diversity below {fraction} x the most diverse"
    best = min(diverse, key=lambda i: (_bn(rows[i]), i))
    for i in diverse:
        rows[i]["status"] = "chosen" if i == best else "higher relative BN distance"
    return best, None


def _bn(row: dict[str, Any]) -> float:
    value = row["relative_bn_distance"]
    if value is None:
        value = row["bn_distance"]
    return float("inf") if value is None else value


def probe_seed(seed: int) -> int:
    """The probe's own 63-bit seed, drawn from the run seed (none of the set's batch seeds)."""
    return int(np.random.SeedSequence([_PROBE_TAG, seed]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _noise(count: int, image_size: int, mean: Sequence[float], std: Sequence[float], seed: int) -> torch.Tensor:
    """The probe's reference: Gaussian noise in the teacher's input space, as pixels (as saved)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 3, image_size, image_size, generator=generator)
    pixels = noise * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return _as_saved(pixels)


def _as_saved(images: torch.Tensor) -> torch.Tensor:
    """Images rounded to 8 bits, as the cache's PNGs will hold them."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _plan(method: Any, candidates: Sequence[dict[str, Any]] | None) -> AutoPlan:
    if not isinstance(method, str) or method not in PLANS:
        known = ", ".join(sorted(PLANS))
        raise ConfigError(f"no automatic settings for synthesizer {method!r}; they exist for {known}")
    plan = PLANS[method]
    if candidates is None:
        return plan
    if isinstance(candidates, (str, bytes, dict)) or not isinstance(candidates, Sequence) or not candidates:
        raise ConfigError(f"candidates must be a non-empty list of settings mappings, got {candidates!r}")
    if not all(isinstance(c, dict) and c for c in candidates):
        raise ConfigError("every candidate must be a non-empty mapping of synthesizer settings")
    keys = set(candidates[0])
    for candidate in candidates:
        if set(candidate) != keys:
            raise ConfigError(f"every candidate must name the same settings ({', '.join(sorted(keys))}); "
                              f"got {', '.join(sorted(candidate))}")
    accepted = set(inspect.signature(SYNTHESIZERS.get(method)).parameters)
    unknown = sorted(keys - accepted)
    if unknown:
        raise ConfigError(f"candidate setting {unknown[0]!r} is not a setting of synthesizer {method!r}")
    return AutoPlan(tuple(dict(c) for c in candidates), plan.shrink)


def _check(base, image_size, num_classes, seed, probe_images, floor, fraction) -> dict[str, Any]:
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ConfigError(f"base settings must be a mapping of synthesizer settings, got {base!r}")
    passed = sorted({"teacher", "mean", "std", "teacher_id", "device"} & set(base))
    if passed:
        raise ConfigError(f"base settings must not hold {passed[0]!r}: choose_settings takes it as its own argument")
    for name, value, least in (("image size", image_size, 8), ("number of classes", num_classes, 1),
                               ("probe_images", probe_images, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be a whole number, got {seed!r}")
    for name, value in (("agreement_floor", floor), ("diversity_fraction", fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{name} must be a number from 0 to 1, got {value!r}")
    return dict(base)


def _shrunk(method: str, base: dict[str, Any], key: str, fraction: float) -> int:
    """``fraction`` of a whole-number setting (given, else the synthesizer's default), at least 1."""
    value = base.get(key, inspect.signature(SYNTHESIZERS.get(method)).parameters[key].default)
    if not isinstance(value, int) or isinstance(value, bool):
        return value  # the synthesizer will refuse it, in its own words
    return max(1, round(value * fraction)) if value > 0 else value


def _cuda_devices(device: str) -> list[int]:
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        return []
    return [where.index or 0] if where.type == "cuda" and torch.cuda.is_available() else []
