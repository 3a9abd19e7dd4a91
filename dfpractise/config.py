"""The settings of one compression run, each declared once.

One ``RunConfig`` is what a recipe file holds, what CLI options override, and what a run folder
saves as ``recipe.yaml``; so a run can be rebuilt from what it saved. Sections mirror the phases of
the method (latency, scoring, recovery) so a recipe reads like the method.

A setting is declared here and nowhere else: its type, default, range (``Field(ge=...)``), the
plug-in registry its value must name, and its help text (``description``, shown by ``--help``).
Recipe loading, validation, the saved recipe, ``--set key=value`` and the CLI's named options all
read these declarations (pydantic models in strict mode: ``seed: one`` or ``pool_identical: 1`` is
an error, not a silent conversion; a whole number is accepted where a number is expected). Only
rules between settings live in ``RunConfig.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import ConfigError


@dataclass(frozen=True)
class RegistryRef:
    """Marks a setting that names a plug-in of ``dfpractise.<module>.<registry>``.

    The name is looked up when the value is checked (so plug-ins registered later count); the
    CLI offers the registered names as the option's choices.
    """

    module: str
    registry: str

    def get(self) -> Any:
        from importlib import import_module

        return getattr(import_module(f"dfpractise.{self.module}"), self.registry)

    def check(self, name: str) -> str:
        try:
            return self.get().check(name)
        except ConfigError as err:
            raise ValueError(str(err)) from None


def registered(module: str, registry: str) -> Any:
    """The type of a setting naming a registered plug-in."""
    ref = RegistryRef(module, registry)
    return Annotated[str, AfterValidator(ref.check), ref]


DropCostName = registered("recoverability", "DROP_COSTS")
RecoveryName = registered("recovery", "RECOVERY_METHODS")
SelectionName = registered("selection", "SELECTION_METHODS")
BackendName = registered("backends", "BACKENDS")
Precision = Literal["auto", "fp32", "bf16"]  # read by dfpractise.precision
LatencyProfile = Literal["auto", "hooks", "variants"]  # dfpractise.latency.PROFILES
Mixing = Literal["none", "mixup", "cutmix"]  # read by dfpractise.augment.mixing
RecoveryMix = Literal["auto", Mixing]  # auto: dfpractise.recovery.mix_of


def _open_unit_interval(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"latency-reduction must lie strictly between 0 and 1, got {value}")
    return value


def _input_size(value: Any) -> Any:
    """``32``, ``"32"`` or ``"3x32x32"``: inputs are square RGB images."""
    if not isinstance(value, str):
        return value
    parts = value.lower().replace(" ", "").split("x")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 3):
        raise ValueError(f"input_size must be N or CxHxW (e.g. 224 or 3x224x224), got {value!r}")
    if len(parts) == 3 and (parts[0] != "3" or parts[1] != parts[2]):
        raise ValueError(f"input_size {value!r}: only square RGB inputs (3xNxN) are supported")
    return int(parts[-1])


def _three_numbers(value: Any) -> Any:
    """``[0.5, 0.5, 0.5]`` or ``"0.5,0.5,0.5"``: one number per RGB channel."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"expected three numbers such as 0.485,0.456,0.406, got {value!r}") from None
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and len(value) != 3:
        raise ValueError(f"expected one number per RGB channel (three), got {len(value)}")
    return value


RGB = Annotated[tuple[float, float, float] | None, BeforeValidator(_three_numbers)]


def _as_tuple(value: Any) -> Any:
    """YAML has lists, not tuples; ``milestones: 0.5`` is a list of one."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    return value


def _fractions(values: tuple[float, ...]) -> tuple[float, ...]:
    """Milestones are fractions of the iterations: 800 (a step count) would never be reached."""
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside:
        raise ValueError(f"recovery.milestones are fractions of the iterations, from 0 to 1 (e.g. [0.4, 0.8]); "
                         f"got {outside[0]}")
    return values


class Settings(BaseModel):
    """A section of settings: strict types, unknown keys refused, assignments checked.

    A bad value assigned, or read by ``from_dict``/``replace``, is a ``ConfigError`` naming the
    setting (the constructor keeps pydantic's ``ValidationError``: pydantic also calls it for
    nested sections, where it must report the setting's full path).
    """

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise settings_error(err, type(self)) from None

    def replace(self, **changes: Any) -> Any:
        """A checked copy with ``changes`` (``dataclasses.replace`` for settings)."""
        try:
            return type(self).model_validate({**dict(self), **changes})
        except ValidationError as err:
            raise settings_error(err, type(self)) from None


class DataConfig(Settings):
    """Where the tiny set comes from, and where accuracy is measured."""

    source: str = Field("real", description="Tiny-set source (registered in dfpractise.sources): real images, "
                        "ood (unlabelled folder), synthetic (BN inversion, no data), generator (a meta-learned generator, no "
                        "data), diffusion (--data is the pipeline).")
    path: str | None = Field(None, description="Tiny-set images: ImageFolder layout for real, any folder for ood, "
                             "a diffusers pipeline for diffusion.")
    num_images: int = Field(500, ge=1, description="Images in the tiny set.")
    class_balanced: bool = Field(False, description="Draw equally per class.")
    eval_path: str | None = Field(None, description="Labelled folder to measure top-1/top-5 on after compression.")
    eval_batch_size: int = Field(256, ge=1, description="Batch size of the evaluation.")
    synthesis: dict[str, Any] = Field(default_factory=dict, description="Synthesizer settings for synthetic/"
                                      "diffusion sources (steps, lr, batch_size...).")
    cache_dir: str | None = Field(None, description="Folder of the synthetic images (default: one per settings "
                                  "under $DFPRACTISE_CACHE/synthetic).")
    rebuild_cache: bool = Field(False, description="Replace a synthetic cache made with other settings instead "
                                "of refusing it.")
    auto_synthesis: bool = Field(False, description="Choose a few synthetic/generator settings per teacher "
                                 "first: each declared candidate tried on a 64-image probe, scored by teacher "
                                 "agreement, BN-statistics distance and feature diversity (never by accuracy); "
                                 "data.synthesis settings still win.")
    ood_path: str | None = Field(None, description="Folder of unrelated photos (any images, searched recursively, "
                                 "labels ignored) added after any source's images, e.g. out-of-domain photos beside "
                                 "synthetic images: both label-free, so a team without its training data can use them.")
    ood_images: int | None = Field(None, ge=1, description="Photos drawn from data.ood_path with the run's seed "
                                   "(default: as many as data.num_images).")
    save_samples: bool = Field(False, description="Keep a grid of the tiny set's images (samples.png) in the run "
                               "folder; synthesised sets always keep theirs, real and out-of-domain ones only "
                               "their file names and hashes unless asked.")


class LatencyConfig(Settings):
    """How latency is measured: paired, interleaved rounds; medians of ratios."""

    batch_size: int = Field(64, ge=1, description="Batch size for latency measurements.")
    resolution: int | None = Field(None, ge=1, description="Input size for latency measurements (default: the "
                                   "model's).")
    warmup: int = Field(2, ge=0, description="Untimed forwards of each model before timing.")
    repeats: int = Field(10, ge=1, description="Interleaved timing rounds.")
    threads: int | None = Field(None, ge=1, description="CPU threads for latency measurements (default: torch's).")
    backend: BackendName = Field("torch", description="Runtime latency is measured on, so the target holds there: "
                                 "torch (eager PyTorch) or onnxruntime (the model exported to ONNX, on CPU).")
    profile: LatencyProfile = Field("auto", description="How blocks are timed: hooks (each block's share of the "
                                    "teacher's own forwards; eager PyTorch only), variants (each pruned copy against the "
                                    "teacher; any backend) or auto (hooks where they work).")
    pool_identical: bool = Field(True, description="Blocks with identical shapes and layers share one ΔLat.")
    table: str | None = Field(None, description="Latency table file (JSON) to read the blocks' ΔLat from, e.g. "
                              "measured on the deployment machine; written there when it does not exist. "
                              "Default: this machine's cache, keyed by architecture, device, batch, "
                              "resolution, threads, runtime and versions.")
    remeasure: bool = Field(False, description="Time the blocks again instead of reading the latency table, "
                            "and replace it.")
    # on a noisy machine two measurements of the same pair differ by a few points, and a cut
    # should not fall short later
    target_margin: float = Field(1.0, ge=0, description="Points a selection must measure above the target.")
    target_window: float = Field(3.0, gt=0, description="Points above the target a selection's predicted cut may "
                                 "reach when some set of blocks lands there at little extra cost "
                                 "(target_window_cost; else the cheapest set reaching it).")
    target_window_cost: float = Field(0.1, ge=0, description="How much more total recoverability cost (a fraction of "
                                      "the cheapest set's) a set inside the window may have and still be preferred "
                                      "to the cheapest set above it.")


class ScoringConfig(Settings):
    """Recoverability scoring of each candidate block (PRACTISE.md section 3)."""

    scorer: DropCostName = Field(
        "recoverability", description="What stands for the cost of dropping a block in its score cost/ΔLat "
        "(random and latency-only are baselines).")
    # the reference fits 1000-2000 per block; 50 keeps scoring ~2 min here
    iterations: int = Field(50, ge=0, description="Adaptor training steps per candidate block.")
    batch_size: int = Field(32, ge=1, description="Batch size of the adaptor fits.")
    lr: float = Field(0.02, gt=0, description="Learning rate of the adaptor fits.")
    momentum: float = Field(0.9, ge=0, description="SGD momentum of the adaptor fits.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay of the adaptor fits.")
    views: int = Field(4, ge=1, description="Augmented copies of the tiny set cached for adaptor training.")


class RecoveryConfig(Settings):
    """Recovery of the pruned network (PRACTISE.md section 4)."""

    method: RecoveryName = Field(
        "mir-stages", description="Recovery of the pruned network: mir-stages mimics the teacher's features at "
        "every stage's output and at the end, mir at the end only (the paper's MiR), kd its logits, bp trains on "
        "labels.")
    iterations: int = Field(2000, ge=0, description="Recovery training steps.")
    batch_size: int = Field(64, ge=1, description="Batch size of recovery.")
    lr: float | None = Field(None, gt=0, description="Learning rate (default: the recovery method's own).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum of recovery.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay of recovery.")
    milestones: Annotated[tuple[float, ...], BeforeValidator(_as_tuple), AfterValidator(_fractions)] = Field(
        (0.75,), description="Fractions of the iterations at which the learning rate falls tenfold (one fall at "
        "3/4, chosen on held-out images over the paper's 0.4 and 0.8: BENCHMARKS.md, \"Recovery settings\").")
    kd_temperature: float = Field(4.0, gt=0, description="Softmax temperature of kd.")
    checkpoint_every: int = Field(200, ge=0, description="Iterations between recovery checkpoints (0: only on "
                                  "interruption).")
    mix: RecoveryMix = Field("auto", description="Blend pairs of tiny-set images into new inputs after augmentation "
                             "(mixup, cutmix; dfpractise.augment.mixing); the teacher's outputs on the blends are "
                             "what the student learns, so no labels are needed. auto: mixup for methods that learn "
                             "from the teacher (mir-stages, mir, kd), none for those that train on labels (bp).")
    teacher_views: int = Field(32, ge=0, description="Augmented copies of the tiny set whose teacher outputs are "
                               "computed once and drawn from, as many as fit in memory (0: augment and run the "
                               "teacher every step).")


class TrialsConfig(Settings):
    """Short recoveries that choose between the selection and its nearest alternatives
    (``dfpractise.trials``)."""

    sets: int = Field(0, ge=0, description="Sets of blocks tried by a short recovery before the real one: the "
                      "selection and its cheapest alternatives whose measured cut reaches the target; the set whose "
                      "features come closest to the teacher's on blends of held-back tiny-set images is kept (0 or 1: the "
                      "selection as it is).")
    iterations: int = Field(500, ge=1, description="Recovery steps of each trial (the recovery's other settings).")
    held_back: float = Field(0.2, gt=0, lt=1, description="Share of the tiny set each trial is judged on and not "
                             "trained on.")


class BlocksConfig(Settings):
    """Which units of the model may be dropped (found from its recorded forward)."""

    keep_stage_first: bool = Field(True, description="Never drop the first block of a stage (the paper's "
                                   "convention: it opens the stage).")
    halves: bool = Field(True, description="Offer each branch of a multi-branch block (a transformer layer's "
                         "attention and MLP) as a unit of its own, beside the whole block.")


class RunConfig(Settings):
    """Everything one ``dfpractise run`` needs."""

    model: str = Field("cifar10_resnet56", description="A registered name (see `dfpractise models`), a "
                       "torchvision name (resnet101, vit_b_16...), timm/NAME, or FILE.py:FUNCTION / "
                       "package.module:FUNCTION returning an nn.Module.")
    weights: str | None = Field(None, description="Weights file, known weights name or torchvision enum name; "
                                "'none' for random weights (default: the registered model's own).")
    model_options: dict[str, Any] = Field(default_factory=dict, description="Keywords for the model's builder "
                                          "(image_size=32 for a torchvision ViT, img_size=32 for timm's).")
    input_size: Annotated[Annotated[int, Field(ge=8)] | None, BeforeValidator(_input_size)] = Field(
        None, description="Input side N (or 3xNxN) where the model does not say or says otherwise.")
    mean: RGB = Field(None, description="Per-channel input mean, e.g. 0.485,0.456,0.406 (default: the model's).")
    std: RGB = Field(None, description="Per-channel input std, e.g. 0.229,0.224,0.225 (default: the model's).")
    latency_reduction: Annotated[float | None, AfterValidator(_open_unit_interval)] = Field(
        0.3, description="Target cut of measured latency, e.g. 0.3.")
    drop: int | None = Field(None, ge=1, description="Drop this many blocks instead of a latency target.")
    selection: SelectionName = Field(
        "min-recoverability", description="How blocks are chosen for a latency target: the least total cost "
        "that reaches it, or greedily by score.")
    seed: int = Field(0, description="Seed of the tiny-set draw, augmentations and fits: same seed, same blocks.")
    device: str = Field("cpu", description="cpu, cuda, cuda:1 ...")
    precision: Precision = Field("auto", description="Arithmetic of the training loops (scoring fits, recovery): "
                                 "auto (bf16 autocast where the device does bf16 natively, else fp32), fp32 or bf16.")
    blocks: BlocksConfig = Field(default_factory=BlocksConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    trials: TrialsConfig = Field(default_factory=TrialsConfig)

    def validate(self) -> "RunConfig":
        """Check the rules between settings (each setting checks itself); return self."""
        if self.drop is not None and self.latency_reduction is not None:
            raise ConfigError("give either a latency-reduction target or a drop count, not both")
        if self.latency.target_window <= self.latency.target_margin:
            raise ConfigError(f"latency.target_window ({self.latency.target_window:g}) must be larger than "
                              f"latency.target_margin ({self.latency.target_margin:g}): a selection must land "
                              "between the two")
        if self.drop is None and self.latency_reduction is None:
            raise ConfigError("give a latency-reduction target (e.g. 0.3) or a drop count")
        if self.trials.sets > 1 and self.drop is not None:
            raise ConfigError("trials.sets tries other sets of blocks at the same latency cut; it needs a "
                              "latency-reduction target, not a drop count")
        if self.data.ood_images is not None and self.data.ood_path is None:
            raise ConfigError("data.ood_images says how many photos to add from data.ood_path, which is not set "
                              "(--ood-data FOLDER)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists, as a recipe holds them."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> "RunConfig":
        """Build from nested dicts; a bad key or value is one ``ConfigError`` naming the setting."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise settings_error(err, cls) from None


# ---------------------------------------------------------------- reading the declarations


def setting(path: str) -> tuple[type[Settings], str]:
    """(section class, field name) of the declared setting a dotted key falls under.

    ``recovery.lr`` is the field ``lr`` of ``RecoveryConfig``; ``data.synthesis.steps`` falls
    under the mapping ``data.synthesis``. An unknown key is a ``ConfigError`` naming it.
    """
    section: type[Settings] = RunConfig
    parts = path.split(".")
    for depth, part in enumerate(parts):
        field = section.model_fields.get(part)
        if field is None:
            raise ConfigError(f"unknown setting '{path}' (known here: {', '.join(section.model_fields)})")
        annotation = field.annotation
        rest = parts[depth + 1:]
        if not rest:
            return section, part
        if isinstance(annotation, type) and issubclass(annotation, Settings):
            section = annotation
        elif annotation is dict or getattr(annotation, "__origin__", None) is dict:
            return section, part  # keys inside a mapping setting are the plug-in's own
        else:
            raise ConfigError(f"unknown setting '{path}': '{'.'.join(parts[:depth + 1])}' has no parts")
    raise AssertionError("unreachable")


_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number", "float_type": "a number",
    "bool_type": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "tuple_type": "a list of numbers", "model_type": "a mapping",
}


def settings_error(err: ValidationError, model: type[Settings] = RunConfig) -> ConfigError:
    """The first problem pydantic found, as the one line a user reads (naming the setting)."""
    problem = err.errors(include_url=False)[0]
    names = [str(p) for p in problem["loc"] if isinstance(p, str)]
    key = ".".join(names)
    kind, value, ctx = problem["type"], problem.get("input"), problem.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = _section_at(model, names[:-1])
        known = ", ".join(parent.model_fields) if parent is not None else ""
        return ConfigError(f"unknown recipe key '{key}' (known here: {known})")
    if kind == "value_error":
        return ConfigError(str(ctx.get("error", problem["msg"])))
    if kind in _TYPE_WORDS:
        what = _TYPE_WORDS[kind]
        if _accepts_none(model, names):
            what += " or null"
        return ConfigError(f"'{key}' must be {what}, got {value!r}")
    bounds: dict[str, Callable[[Any], str]] = {
        "greater_than_equal": lambda b: "must not be negative" if b == 0 else f"must be at least {b}",
        "greater_than": lambda b: "must be positive" if b == 0 else f"must be more than {b}",
        "less_than_equal": lambda b: f"must be at most {b}",
        "less_than": lambda b: f"must be less than {b}",
    }
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return ConfigError(f"{key} {bounds[kind](bound)}, got {value!r}")
    return ConfigError(f"'{key}': {problem['msg']}, got {value!r}")


def _section_at(model: type[Settings], names: list[str]) -> type[Settings] | None:
    section = model
    for name in names:
        field = section.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, Settings)):
            return None
        section = annotation
    return section


def _accepts_none(model: type[Settings], names: list[str]) -> bool:
    section = _section_at(model, names[:-1])
    field = section.model_fields.get(names[-1]) if section is not None and names else None
    return field is not None and type(None) in get_args(field.annotation)
