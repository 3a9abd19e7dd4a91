"""Model registry: names -> factory functions, plus the per-model preprocessing config.

Recipes and the CLI name models by string; the registry turns a name into a module that
implements the feature protocol the engine relies on (``feature_layers``, ``forward_features``,
``forward_head``) and carries a ``default_cfg`` describing its expected input.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, replace
from typing import Callable, TypeVar, overload

from torch import nn

from dfpractise.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a model expects as input and what it predicts; recorded so data code needs no guessing."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    default_weights: str | None = None
    # names of the output classes, in output order: text-to-image synthesis prompts with them
    class_names: tuple[str, ...] | None = None


Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}
_CONFIGS: dict[str, ModelConfig] = {}


@overload
def register_model(fn: F) -> F: ...
@overload
def register_model(fn: None = None, *, config: ModelConfig | None = None) -> Callable[[F], F]: ...


def register_model(fn: F | None = None, *, config: ModelConfig | None = None):
    """Register ``fn(num_classes=None) -> nn.Module`` under its function name.

    Usable bare (``@register_model``) or with the model's config
    (``@register_model(config=...)``); with a config, ``get_model_config`` needs no model build.
    """

    def decorate(factory: F) -> F:
        name = factory.__name__
        if name in _FACTORIES:
            raise ValueError(f"model '{name}' is registered twice")
        if config is not None and config.name != name:
            raise ValueError(f"config name '{config.name}' differs from factory name '{name}'")
        _FACTORIES[name] = factory
        if config is not None:
            _CONFIGS[name] = config
        return factory

    return decorate(fn) if fn is not None else decorate


def _natural_key(name: str) -> list[object]:
    """Sort resnet20 before resnet110, as people read them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, naturally sorted, optionally filtered by an fnmatch pattern."""
    names = [n for n in _FACTORIES if pattern is None or fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def _unknown(name: str) -> ModelError:
    known = list_models()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(
        f"unknown model '{name}';{hint} known: {', '.join(known)} (see `dfpractise models`)"
    )


def get_model_config(name: str) -> ModelConfig:
    """The registered model's default config (its default number of classes)."""
    if name not in _FACTORIES:
        raise _unknown(name)
    if name not in _CONFIGS:
        _CONFIGS[name] = _FACTORIES[name]().default_cfg
    return _CONFIGS[name]


def with_num_classes(config: ModelConfig, num_classes: int | None) -> ModelConfig:
    """The config of a model built with ``num_classes`` outputs (None keeps the default)."""
    if num_classes is None or num_classes == config.num_classes:
        return config
    return replace(config, num_classes=num_classes, class_names=None)


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")


def create_model(name: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Build a registered model and, if ``weights`` is given, load them strictly.

    ``weights`` is a file path, a known weights name (see ``dfpractise.models.weights``) or a
    torchvision weights enum name such as ``ResNet34_Weights.IMAGENET1K_V1``. None means random
    initialisation (the model's ``default_cfg.default_weights`` is only a suggestion for callers).
    """
    if name not in _FACTORIES:
        raise _unknown(name)
    _check_num_classes(num_classes)
    model = _FACTORIES[name](num_classes=num_classes)
    if getattr(model, "default_cfg", None) is None:
        if name not in _CONFIGS:
            raise TypeError(f"factory '{name}' returned a model without default_cfg")
        model.default_cfg = with_num_classes(_CONFIGS[name], num_classes)
    if weights is not None:
        from dfpractise.models.weights import load_weights

        load_weights(model, weights)
    return model
