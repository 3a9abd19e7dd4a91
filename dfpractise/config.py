"""The settings of one compression run, as plain dataclasses.

One ``RunConfig`` is what a recipe file holds, what CLI options override, and what a run folder
saves as ``recipe.yaml``; so a run can be rebuilt from what it saved. Sections mirror the phases of
the method (latency, scoring, recovery) so a recipe reads like the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class DataConfig:
    """Where the tiny set comes from, and where accuracy is measured."""

    source: str = "real"
    path: str | None = None
    num_images: int = 500
    class_balanced: bool = False
    eval_path: str | None = None
    eval_batch_size: int = 256
    # synthetic and diffusion sources: synthesizer settings (steps, lr, batch_size, ...); the
    # folder their images are cached in (None: one per settings under $DFPRACTISE_CACHE/synthetic);
    # whether a cache folder written with other settings is rebuilt instead of refused
    synthesis: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    rebuild_cache: bool = False


@dataclass
class LatencyConfig:
    """How latency is measured: paired, interleaved rounds; medians of ratios."""

    batch_size: int = 64
    resolution: int | None = None  # None: the model's own input size
    warmup: int = 2
    repeats: int = 10
    threads: int | None = None  # None: torch's default
    pool_identical: bool = True  # blocks with identical shapes and layers share one ΔLat
    # a selection must measure this many points above the target: on a noisy machine two
    # measurements of the same pair differ by a few points, and a cut should not fall short later
    target_margin: float = 1.0


@dataclass
class ScoringConfig:
    """Recoverability scoring of each candidate block (PRACTISE.md section 3)."""

    scorer: str = "recoverability"
    iterations: int = 50  # the reference fits 1000-2000 per block; 50 keeps scoring ~2 min here
    batch_size: int = 32
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    views: int = 4  # augmented copies of the tiny set cached for adaptor training


@dataclass
class RecoveryConfig:
    """Recovery of the pruned network (PRACTISE.md section 4)."""

    method: str = "mir"  # mir | bp | kd | none
    iterations: int = 2000
    batch_size: int = 64
    lr: float | None = None  # None: 0.02 for mir and kd, 0.002 for bp
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.4, 0.8)
    kd_temperature: float = 4.0
    checkpoint_every: int = 200


@dataclass
class RunConfig:
    """Everything one ``dfpractise run`` needs."""

    model: str = "cifar10_resnet56"
    weights: str | None = None
    latency_reduction: float | None = 0.3
    drop: int | None = None
    selection: str = "min-recoverability"  # min-recoverability | greedy
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def validate(self) -> "RunConfig":
        """Raise ``ConfigError`` for values the method cannot use; return self."""
        if self.drop is not None and self.latency_reduction is not None:
            raise ConfigError("give either a latency-reduction target or a drop count, not both")
        if self.drop is None and self.latency_reduction is None:
            raise ConfigError("give a latency-reduction target (e.g. 0.3) or a drop count")
        if self.latency_reduction is not None and not 0.0 < self.latency_reduction < 1.0:
            raise ConfigError(
                f"latency-reduction must lie strictly between 0 and 1, got {self.latency_reduction}"
            )
        if self.drop is not None and self.drop < 1:
            raise ConfigError(f"drop must be at least 1, got {self.drop}")
        if self.selection not in ("min-recoverability", "greedy"):
            raise ConfigError(f"unknown selection '{self.selection}' (min-recoverability, greedy)")
        positive = {
            "data.num_images": self.data.num_images,
            "data.eval_batch_size": self.data.eval_batch_size,
            "latency.batch_size": self.latency.batch_size,
            "latency.repeats": self.latency.repeats,
            "scoring.batch_size": self.scoring.batch_size,
            "scoring.views": self.scoring.views,
            "recovery.batch_size": self.recovery.batch_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        for key, value in {
            "latency.warmup": self.latency.warmup,
            "scoring.iterations": self.scoring.iterations,
            "recovery.iterations": self.recovery.iterations,
        }.items():
            if value < 0:
                raise ConfigError(f"{key} must not be negative, got {value}")
        if not isinstance(self.data.synthesis, dict):
            raise ConfigError(f"data.synthesis must be a mapping of synthesizer settings, got {self.data.synthesis!r}")
        if self.recovery.method not in ("mir", "bp", "kd", "none"):
            raise ConfigError(f"unknown recovery '{self.recovery.method}' (mir, bp, kd, none)")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["recovery"]["milestones"] = list(self.recovery.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build from nested dicts; unknown keys are an error naming the key."""
        return _build(cls, data, prefix="")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'recipe'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise ConfigError(f"unknown recipe key '{prefix}{unknown[0]}' (known here: {known})")
    kwargs = {}
    for name, value in data.items():
        nested = _SECTIONS.get(name) if cls is RunConfig else None
        if nested is not None:
            kwargs[name] = _build(nested, value or {}, prefix=f"{prefix}{name}.")
        elif name == "milestones" and value is not None:
            kwargs[name] = tuple(float(v) for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS = {
    "data": DataConfig,
    "latency": LatencyConfig,
    "scoring": ScoringConfig,
    "recovery": RecoveryConfig,
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; ``None`` values in override are skipped."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
