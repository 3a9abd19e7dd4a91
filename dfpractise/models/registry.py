"""Model registry: names -> factory functions, plus what each model expects as input.

Recipes and the CLI name models by string; the registry turns a name into a module that
implements the feature protocol the engine relies on (``feature_layers``, ``forward_features``,
``forward_head``) and carries a ``model_spec`` (``ModelSpec``) describing its input and classes.
The attribute is not called ``default_cfg``: timm models have one of that name, holding a dict.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Callable, TypeVar, overload

from synthesizers.registry import Registry
from torch import nn

from dfpractise.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
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


@dataclass
class ModelEntry:
    """A registered architecture: its factory and, when declared up front, its spec."""

    factory: Factory
    spec: ModelSpec | None = None


MODELS: Registry[ModelEntry] = Registry(
    "model", "models", unknown=ModelError, invalid=ModelError, hint=" (see `dfpractise models`)"
)


@overload
def register_model(fn: F) -> F: ...
@overload
def register_model(fn: None = None, *, spec: ModelSpec | None = None) -> Callable[[F], F]: ...


def register_model(fn: F | None = None, *, spec: ModelSpec | None = None):
    """Register ``fn(num_classes=None) -> nn.Module`` under its function name.

    Usable bare (``@register_model``) or with the model's spec (``@register_model(spec=...)``);
    with a spec, ``get_model_spec`` needs no model build. A taken name is refused.
    """

    def decorate(factory: F) -> F:
        name = factory.__name__
        if spec is not None and spec.name != name:
            raise ValueError(f"spec name '{spec.name}' differs from factory name '{name}'")
        MODELS.register(name, ModelEntry(factory, spec))
        return factory

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, naturally sorted, optionally filtered by an fnmatch pattern."""
    return [n for n in MODELS.names() if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def get_model_spec(name: str) -> ModelSpec:
    """The registered model's default spec (its default number of classes)."""
    entry = MODELS.get(name)
    if entry.spec is None:
        entry.spec = entry.factory().model_spec
    return entry.spec


def with_num_classes(spec: ModelSpec, num_classes: int | None) -> ModelSpec:
    """The spec of a model built with ``num_classes`` outputs (None keeps the default)."""
    if num_classes is None or num_classes == spec.num_classes:
        return spec
    return replace(spec, num_classes=num_classes, class_names=None)


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")


def create_model(name: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Build a registered model and, if ``weights`` is given, load them strictly.

    ``weights`` is a file path, a known weights name (see ``dfpractise.models.weights``) or a
    torchvision weights enum name such as ``ResNet34_Weights.IMAGENET1K_V1``. None means random
    initialisation (the model's ``model_spec.default_weights`` is only a suggestion for callers).
    """
    entry = MODELS.get(name)
    _check_num_classes(num_classes)
    model = entry.factory(num_classes=num_classes)
    if getattr(model, "model_spec", None) is None:
        if entry.spec is None:
            raise TypeError(f"factory '{name}' returned a model without model_spec")
        model.model_spec = with_num_classes(entry.spec, num_classes)
    if weights is not None:
        from dfpractise.models.weights import load_weights

        load_weights(model, weights)
    return model
