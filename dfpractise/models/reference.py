"""Naming a model: this project's registry, torchvision, timm, or a user's own factory.

``--model`` (``model:`` in a recipe) accepts

- a registered name (``cifar10_resnet56``, see ``dfpractise models``);
- a torchvision classification builder by its torchvision name (``resnet101``, ``convnext_tiny``,
  ``vit_b_16``...);
- ``timm/NAME`` for a timm model (``pip install 'dfpractise[timm]'``);
- ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``, a factory returning an ``nn.Module``.

``model_options`` go to the builder as keywords (``image_size=32`` for a torchvision ViT,
``img_size=32`` for timm's). What the model expects as input comes from the torchvision weights'
transforms, timm's ``pretrained_cfg`` or the model's own ``model_spec``, else ImageNet defaults;
``input_size``, ``mean`` and ``std`` override it. A ``ModelReference`` is what a run folder's
manifest keeps to build the same architecture again (a factory file is checked by its sha256).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from .registry import IMAGENET_MEAN, IMAGENET_STD, MODELS, ModelSpec, create_model

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelReference:
    """How to build an architecture again: what the user named and what the builder was given."""

    kind: str  # "registered", "torchvision", "timm" or "factory"
    name: str  # as named: "resnet18", "vit_tiny_patch16_224", "/abs/path/net.py:build", "pkg.mod:build"
    options: dict[str, Any] = field(default_factory=dict)
    file_sha256: str | None = None  # a factory file's content, so a rebuild uses the same code

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "options": dict(self.options), "file_sha256": self.file_sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelReference":
        if not isinstance(data, dict) or data.get("kind") not in ("registered", "torchvision", "timm", "factory"):
            raise ModelError(f"not a model reference: {data!r}")
        return cls(data["kind"], str(data["name"]), dict(data.get("options") or {}), data.get("file_sha256"))

    @property
    def label(self) -> str:
        """The name as the user gave it."""
        return TIMM_PREFIX + self.name if self.kind == "timm" else self.name


def parse_reference(text: str, options: dict[str, Any] | None = None) -> ModelReference:
    """Read ``--model``; unknown names are a ``ModelError`` suggesting close ones."""
    options = dict(options or {})
    if not isinstance(text, str) or not text.strip():
        raise ModelError(f"a model name is needed, got {text!r}")
    text = text.strip()
    if text.startswith(TIMM_PREFIX):
        return ModelReference("timm", text[len(TIMM_PREFIX):], options)
    if ":" in text:
        target, _, function = text.rpartition(":")
        if not target or not function.isidentifier():
            raise ModelError(f"'{text}' is not FILE.py:FUNCTION nor package.module:FUNCTION")
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ModelError(f"model file {target} does not exist")
            return ModelReference("factory", f"{path}:{function}", options, _sha256(path))
        return ModelReference("factory", text, options)
    if text in MODELS:
        return ModelReference("registered", text, options)
    if text in _torchvision_names():
        return ModelReference("torchvision", text, options)
    MODELS.get(text)  # the registry's error, with close names
    raise AssertionError("unreachable")


def build(reference: ModelReference, num_classes: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """The architecture of ``reference`` with fresh weights, and what it expects as input."""
    options = dict(reference.options)
    if reference.kind == "registered":
        if options:
            raise ModelError(f"{reference.name} is built by this project's registry and takes no model options "
                             f"({', '.join(options)})")
        model = create_model(reference.name, num_classes=num_classes)
        return model, model.model_spec
    if reference.kind == "torchvision":
        return _torchvision(reference.name, num_classes, options)
    if reference.kind == "timm":
        return _timm(reference.name, num_classes, options)
    return _factory(reference, options)


def with_overrides(spec: ModelSpec, input_size: int | None = None, mean: tuple | None = None,
                   std: tuple | None = None) -> ModelSpec:
    """``spec`` with what the user said of the input in place of what the model said."""
    changes = {k: v for k, v in (("input_size", input_size), ("mean", mean), ("std", std)) if v is not None}
    return replace(spec, **changes) if changes else spec


# ---------------------------------------------------------------------- the builders


def _torchvision_names() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def _torchvision(name: str, num_classes: int | None, options: dict[str, Any]) -> tuple[nn.Module, ModelSpec]:
    from torchvision import models

    if num_classes is not None:
        options.setdefault("num_classes", num_classes)
    try:
        model = models.get_model(name, weights=None, **options)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"torchvision {name} cannot be built with {options}: {exc}") from None
    size, mean, std, classes = 224, IMAGENET_MEAN, IMAGENET_STD, None
    weights = list(models.get_model_weights(name))
    if weights:
        transforms = weights[0].transforms()
        size = int(transforms.crop_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        classes = tuple(weights[0].meta.get("categories") or ()) or None
    size = int(options.get("image_size", size))
    outputs = _classes(model)
    if classes is not None and outputs != len(classes):
        classes = None
    return model, ModelSpec(name, size, mean, std, outputs, class_names=classes)


def _timm(name: str, num_classes: int | None, options: dict[str, Any]) -> tuple[nn.Module, ModelSpec]:
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install 'dfpractise[timm]'") from None
    if num_classes is not None:
        options.setdefault("num_classes", num_classes)
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(f"timm has no model '{name}'{hint}")
    try:
        model = timm.create_model(name, pretrained=False, **options)
    except TypeError as exc:
        raise ModelError(f"timm {name} cannot be built with {options}: {exc}") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = options.get("img_size", cfg.get("input_size", (3, 224, 224))[-1])
    size = int(size[-1] if isinstance(size, (tuple, list)) else size)
    classes = None
    if model.num_classes == 1000:
        from timm.data import ImageNetInfo

        classes = tuple(d.split(",")[0] for d in ImageNetInfo().label_descriptions())
    return model, ModelSpec(name, size, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                            int(model.num_classes), class_names=classes)


def _factory(reference: ModelReference, options: dict[str, Any]) -> tuple[nn.Module, ModelSpec]:
    target, _, function = reference.name.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        if reference.file_sha256 and _sha256(path) != reference.file_sha256:
            raise ModelError(f"model file {path} has changed since the run was made (sha256 differs)")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"cannot import {target}: {exc}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelError(f"{target} has no function '{function}'")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ModelError(f"{reference.name} does not take {options}: {exc}") from None
    model = factory(**options)
    if not isinstance(model, nn.Module):
        raise ModelError(f"{reference.name} returned {type(model).__name__}, not an nn.Module")
    spec = getattr(model, "model_spec", None)
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(function, 224, IMAGENET_MEAN, IMAGENET_STD, _classes(model))
    return model, spec


def _import_file(path: Path) -> Any:
    name = f"dfpractise_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def _classes(model: nn.Module) -> int:
    """The number of outputs: the out_features of the last linear layer."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1].out_features if linear else 1000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- with weights, for a run

_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, ModelReference]" = weakref.WeakKeyDictionary()
NO_WEIGHTS = "none"


def reference_of(model: nn.Module) -> ModelReference | None:
    """The reference a model was built from by ``load_model`` (None for a model built elsewhere)."""
    return _REFERENCES.get(model)


def load_model(
    name: str,
    weights: str | None,
    *,
    options: dict[str, Any] | None = None,
    input_size: int | None = None,
    mean: tuple | None = None,
    std: tuple | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, str | None, str | None]:
    """(model with weights, weights reference, sha256 of the weights file), its spec and reference
    recorded beside it (``spec_of``, ``reference_of``).

    ``weights`` None takes a registered model's own default; ``"none"`` keeps random weights.
    """
    from .adapter import set_spec
    from .weights import load_weights, resolve_weights, weights_sha256

    reference = parse_reference(name, options)
    if weights is None:
        default = MODELS.get(reference.name).spec if reference.kind == "registered" else None
        weights = default.default_weights if default is not None else None
        if weights is None:
            raise ModelError(f"no weights given for {reference.label}; pass --weights FILE, a known weights "
                             f"name, or --weights {NO_WEIGHTS} for random weights")
    model, spec = build(reference, num_classes)
    sha = None
    if weights != NO_WEIGHTS:
        path = resolve_weights(weights)
        load_weights(model, str(path))
        sha = weights_sha256(path)
    _REFERENCES[model] = reference
    set_spec(model, with_overrides(spec, input_size, mean, std))
    return model, (None if weights == NO_WEIGHTS else weights), sha
