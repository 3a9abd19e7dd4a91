"""The one interface through which the engine reaches a model, whatever its origin.

A ``ModelAdapter`` is built once per model: one recorded forward (``anatomy.probe``) gives the
droppable units in network order and the stages they sit in, the feature map recovery mimics,
the head, and how to take units out. It works the same for this project's models, torchvision's,
timm's and any ``nn.Module`` a user writes; the model itself knows nothing of data: its input
spec (size, mean/std, class names) travels in the adapter.

- **Units**: modules computing ``x + f(x)`` with ``x``'s shape (see ``anatomy``) that contain no
  smaller such module, wherever they live (``nn.Sequential``, an ``nn.ModuleList`` run in a loop,
  plain attributes); in blocks with several branches, each branch on its own as well.
- **Stages**: runs of units among one parent's children, each opened by the module before them
  (a strided block, or the first unit, which is kept by the paper's convention).
- **Features**: ``forward_features`` where the model has one (timm, this project's models); else
  the output of the last module producing a feature map or token sequence before the head, or the
  classifier's input.
"""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ModelError
from .anatomy import Anatomy, Branch, Call, Probe, analyse, probe, zero_branch
from .blocks import Block, residual_rule
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

_GLOBAL_POOLING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_POOLING = _GLOBAL_POOLING + (nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class Stage:
    """Consecutive children of one parent: an opening module, then droppable units."""

    index: int
    members: tuple[str, ...]  # module paths in call order; members[0] opens the stage
    following: str | None  # the first module after the stage at its depth (next stage's opener)
    replayable: bool  # members[0] takes one tensor only, so its input can be cached and fed again


@dataclass(frozen=True)
class FeaturePoint:
    """Where the feature map to mimic is read: a method, or a module's output or input."""

    kind: str  # "method" (forward_features), "output" or "input" (of ``module``)
    module: str = ""


class _Features(Exception):
    """Raised by a hook to stop a forward once the features exist (the head is not needed)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


class ModelAdapter:
    """Units, stages, features and head of one model, found from one recorded forward."""

    def __init__(self, model: nn.Module, spec: ModelSpec, *, example_size: int | None = None,
                 keep_stage_first: bool = True, halves: bool = True):
        self.model = model
        self.spec = spec
        self.options = {"keep_stage_first": keep_stage_first, "halves": halves}
        was_training = model.training
        model.eval()  # discovery must neither need a batch of many nor touch BatchNorm statistics
        try:
            self._discover(example_size or spec.input_size, keep_stage_first, halves)
        finally:
            model.train(was_training)

    def _discover(self, size: int, keep_stage_first: bool, halves: bool) -> None:
        model, spec = self.model, self.spec
        generator = torch.Generator().manual_seed(0)
        self._example = torch.randn(1, 3, size, size, generator=generator).to(_device_of(model))
        recorded = probe(model, self._example)
        self._calls = {n: c[0] for n, c in recorded.calls.items() if len(c) == 1}  # modules called once
        self._anatomy: dict[str, Anatomy] = {}
        units = self._units(recorded)
        self.stages, stage_of = self._stages(recorded, units)
        self.blocks = self._blocks(units, stage_of, keep_stage_first, halves)
        if not self.blocks:
            raise ModelError(f"{spec.name or type(model).__name__} has no droppable residual block (no module "
                             "computes x + f(x) with the shape of x)")
        for stage in self.stages:  # what scoring will ask, while the recorded inputs exist
            for name in stage.members + ((stage.following,) if stage.following else ()):
                self.anatomy(name)
        self.feature_point = self._feature_point(recorded)
        self.head_modules = self._head_modules(recorded)
        self._calls = {n: Call(c.name, c.start, c.done, args=c.args[:0]) for n, c in self._calls.items()}
        del self._example  # the recorded activations are not kept

    # ------------------------------------------------------------------ what the engine asks

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        known = ", ".join(b.name for b in self.blocks)
        raise ModelError(f"'{name}' is not a droppable block of this model (droppable: {known})")

    def check(self, names: list[str]) -> list[Block]:
        """The blocks named, refusing unknown names and two units of one block."""
        chosen = [self.block(n) for n in names]
        groups = [b.group for b in chosen]
        clash = next((g for g in groups if groups.count(g) > 1), None)
        if clash is not None:
            raise ModelError(f"{', '.join(n for n, b in zip(names, chosen) if b.group == clash)} are parts of one "
                             f"block ({clash}); drop the block or one of its parts")
        return chosen

    def anatomy(self, name: str) -> Anatomy:
        """The residual structure of the module at ``name`` (analysed on first use)."""
        if name not in self._anatomy:
            call = self._calls.get(name)
            if call is None or not call.args:
                raise ModelError(f"'{name}' was not called once with a tensor in the probe forward")
            self._anatomy[name] = analyse(self.model.get_submodule(name), call)
        return self._anatomy[name]

    def branch(self, block: Block) -> tuple[Branch, ...]:
        """The branches a unit removes (all of its block's, for a whole block)."""
        branches = self.anatomy(block.module).branches
        return branches if block.part is None else (branches[block.part],)

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The feature map of ``model`` (this model or a pruned copy of it) for input ``x``."""
        point = self.feature_point
        if point.kind == "method":
            return model.forward_features(x)
        module = model.get_submodule(point.module)

        def stop(*args: Any) -> None:
            raise _Features(args[-1] if point.kind == "output" else args[1][0])

        handle = (module.register_forward_hook(stop) if point.kind == "output"
                  else module.register_forward_pre_hook(stop))
        try:
            model(x)
        except _Features as found:
            return found.value
        finally:
            handle.remove()
        raise ModelError(f"the feature point {point.module} was not reached")

    @property
    def stage_ends(self) -> list[str]:
        """Modules whose input is a stage's output: each stage's next opener, where no unit is (an
        opener that may be dropped would be missing from a pruned copy)."""
        units = {b.module for b in self.blocks}
        return [s.following for s in self.stages if s.following and s.following not in units]

    def stage_features(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage that another stage follows, then the feature map, in one forward
        of ``model`` (this model or a pruned copy of it, which keeps the stage openers)."""
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Any:
            def hook(module: nn.Module, args: tuple) -> None:
                if args and torch.is_tensor(args[0]):
                    seen[name] = args[0]
            return hook

        names = self.stage_ends
        handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
        try:
            final = self.features(model, x)
        finally:
            for handle in handles:
                handle.remove()
        return [seen[n] for n in names if n in seen] + [final]

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The feature extractor's parameters (everything but the head), in a stable order."""
        head = {id(p) for name in self.head_modules if _has(model, name)
                for p in model.get_submodule(name).parameters()}
        seen: set[int] = set()
        params = []
        for p in model.parameters():
            if id(p) not in head and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def drop(self, names: list[str]) -> nn.Module:
        """A copy of the model without the named units (the original is untouched)."""
        blocks = self.check(list(names))
        pruned = copy.deepcopy(self.model)
        whole = [b for b in blocks if b.part is None]
        for block in blocks:
            if block.part is not None:
                zero_branch(pruned.get_submodule(block.module), self.branch(block)[0])
        _remove(pruned, [b.module for b in whole])
        return pruned

    @contextmanager
    def holes(self, names: list[str]) -> Iterator[nn.Module]:
        """The model itself with the named units taken out, restored afterwards (for scoring)."""
        blocks = self.check(list(names))
        saved: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for block in blocks:
                if block.part is None:
                    parent, child = _parent(self.model, block.module)
                    saved.append((parent, child, getattr(parent, child)))
                    setattr(parent, child, nn.Identity())
                else:
                    module = self.model.get_submodule(block.module)
                    for branch in self.branch(block):
                        saved.extend((module, c, getattr(module, c)) for c in branch.children)
                        zero_branch(module, branch)
            yield self.model
        finally:
            for parent, child, original in reversed(saved):
                setattr(parent, child, original)

    def stage(self, block: Block) -> Stage:
        return self.stages[block.stage]

    # ------------------------------------------------------------------ discovery

    def _units(self, recorded: Probe) -> list[str]:
        """Whole droppable blocks: identity-skip modules holding no smaller one (or a rule's say)."""
        found = []
        for name in dict.fromkeys(c.name for c in recorded.order):
            call = self._calls.get(name)
            module = self.model.get_submodule(name)
            if call is None or not call.keeps_shape or _plain_layer(module):
                continue
            rule = residual_rule(module)
            if rule is not None:
                if rule.is_identity(module):
                    anatomy = self.anatomy(name)
                    if not anatomy.identity:  # the user knows better: one branch, all of it
                        self._anatomy[name] = Anatomy(name, True, anatomy.branches[:1] or (Branch(None, None),))
                    found.append(name)
                continue
            if self.anatomy(name).identity:
                found.append(name)
        minimal = [n for n in found if not any(o != n and o.startswith(n + ".") for o in found)]
        return self._verified(minimal)

    def _verified(self, units: list[str]) -> list[str]:
        """Keep the units whose removal leaves a network that still computes the same output shape."""
        if not units:
            return units
        with torch.no_grad():
            reference = _shape(self.model.eval()(self._example))

        def runs(names: list[str]) -> bool:
            pruned = copy.deepcopy(self.model)
            for name in names:
                parent, child = _parent(pruned, name)
                setattr(parent, child, nn.Identity())
            try:
                with torch.no_grad():
                    return _shape(pruned.eval()(self._example)) == reference
            except Exception:  # a dropped unit the rest of the code depended on
                return False

        if runs(units):
            return units
        return [u for u in units if runs([u])]

    def _stages(self, recorded: Probe, units: list[str]) -> tuple[list[Stage], dict[str, int]]:
        """Split each parent's children (in call order) into stages, one per opening non-unit."""
        unit_set = set(units)
        parents = list(dict.fromkeys(_parent_name(u) for u in units))
        stages: list[Stage] = []
        stage_of: dict[str, int] = {}
        pending: list[tuple[int, list[str]]] = []
        for parent in parents:
            depth = parent.count(".") + 2 if parent else 1
            members = [n for n in dict.fromkeys(c.name for c in recorded.order)
                       if _parent_name(n) == parent and n.count(".") + 1 == depth and n in self._calls]
            run: list[str] = []
            for member in members:
                if member not in unit_set or not run:
                    if run and any(m in unit_set for m in run):
                        pending.append((self._calls[run[0]].start, run))
                    run = [member]
                else:
                    run.append(member)
            if run and any(m in unit_set for m in run):
                pending.append((self._calls[run[0]].start, run))
        for index, (_, run) in enumerate(sorted(pending)):
            opener = self._calls[run[0]]
            stages.append(Stage(index, tuple(run), self._following(recorded, run),
                                len(opener.args) == 1 and not opener.kwargs and torch.is_tensor(opener.args[0])))
            for member in run:
                stage_of[member] = index
        return stages, stage_of

    def _following(self, recorded: Probe, run: list[str]) -> str | None:
        last = self._calls[run[-1]]
        for call in recorded.order:
            if call.start > last.start and call.depth == last.depth and not call.name.startswith(last.name + "."):
                return call.name if call.name in self._calls else None
        return None

    def _blocks(self, units: list[str], stage_of: dict[str, int], keep_stage_first: bool,
                halves: bool) -> list[Block]:
        blocks: list[Block] = []
        for name in sorted(units, key=lambda n: self._calls[n].start):
            stage = self.stages[stage_of[name]]
            position = stage.members.index(name)
            if position == 0 and keep_stage_first:
                continue
            blocks.append(Block(name, len(blocks), stage.index, position, module=name))
            anatomy = self.anatomy(name)
            if halves and anatomy.halves:
                for part, branch in enumerate(anatomy.branches):
                    main = max(branch.children, key=lambda c: _size(self.model.get_submodule(f"{name}.{c}")))
                    blocks.append(Block(f"{name}.{main}", len(blocks), stage.index, position, name, part))
        return blocks

    def _feature_point(self, recorded: Probe) -> FeaturePoint:
        """``forward_features`` if the model has it; else the last feature map or token sequence
        made before the global pooling that follows the last unit (the outermost module making
        it); else the classifier's input."""
        if callable(getattr(self.model, "forward_features", None)):
            return FeaturePoint("method")
        last_unit = max((self._calls[b.module].start for b in self.blocks), default=-1)
        pooling = [c for c in recorded.order if c.start > last_unit and isinstance(
            self.model.get_submodule(c.name), _GLOBAL_POOLING)]
        before = pooling[0].start if pooling else len(recorded.order)
        maps = [c for c in recorded.order
                if c.start < before and torch.is_tensor(c.output) and c.output.dim() >= 3 and not isinstance(
                    self.model.get_submodule(c.name), _POOLING)]
        if maps:
            last = max(maps, key=lambda c: c.done)
            outermost = min((c for c in maps if c.output is last.output), key=lambda c: c.depth)
            return FeaturePoint("output", outermost.name)
        linear = [c for c in recorded.order if isinstance(self.model.get_submodule(c.name), nn.Linear)]
        if linear:
            return FeaturePoint("input", linear[-1].name)
        raise ModelError(f"cannot tell where the features of {type(self.model).__name__} end and its head begins")

    def _head_modules(self, recorded: Probe) -> set[str]:
        """Modules that run after the features: the head, which recovery leaves as it is."""
        point = self.feature_point
        if point.kind == "method":
            seen: set[str] = set()
            handles = [m.register_forward_pre_hook(lambda mod, args, n=name: seen.add(n))
                       for name, m in self.model.named_modules() if name]
            try:
                with torch.no_grad():
                    self.model.eval().forward_features(self._example)
            finally:
                for handle in handles:
                    handle.remove()
            return {c.name for c in recorded.order if c.name not in seen}
        anchor = self._calls.get(point.module) or recorded.calls[point.module][-1]
        after = anchor.done if point.kind == "output" else anchor.start - 1
        return {c.name for c in recorded.order if c.start > after and not
                (point.kind == "output" and c.name.startswith(point.module + "."))} | (
            {point.module} if point.kind == "input" else set())


# ---------------------------------------------------------------------- helpers


def _plain_layer(module: nn.Module) -> bool:
    """A torch.nn building block (conv, norm, activation...), which cannot hold a residual."""
    return type(module).__module__.startswith("torch.nn.") and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not any(True for _ in module.children())


def _parent_name(name: str) -> str:
    return name.rpartition(".")[0]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def _remove(model: nn.Module, names: list[str]) -> None:
    """Take whole units out: from an ``nn.Sequential`` for real (other children keep their names),
    elsewhere (``nn.ModuleList`` run in a loop, attributes) by an ``nn.Identity`` in their place."""
    by_parent: dict[str, set[str]] = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        by_parent.setdefault(parent, set()).add(child)
    for parent_name, children in by_parent.items():
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(parent) is nn.Sequential:
            kept = OrderedDict((n, m) for n, m in parent.named_children() if n not in children)
            holder, attr = _parent(model, parent_name) if parent_name else (None, "")
            if holder is None:
                raise ModelError("cannot drop children of the model itself when it is an nn.Sequential")
            setattr(holder, attr, nn.Sequential(kept))
        else:
            for child in children:
                setattr(parent, child, nn.Identity())


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shape(output: Any) -> Any:
    if torch.is_tensor(output):
        return tuple(output.shape)
    if isinstance(output, (tuple, list)):
        return tuple(_shape(o) for o in output)
    return type(output).__name__


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------- one adapter per model

_ADAPTERS: "weakref.WeakKeyDictionary[nn.Module, ModelAdapter]" = weakref.WeakKeyDictionary()
_SPECS: "weakref.WeakKeyDictionary[nn.Module, ModelSpec]" = weakref.WeakKeyDictionary()


def set_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Record what ``model`` expects as input, beside it (the model itself is not changed)."""
    _SPECS[model] = spec
    return model


def spec_of(model: nn.Module) -> ModelSpec:
    """What is known of the model's input: recorded by ``set_spec``, its own ``model_spec`` (this
    project's models), else ImageNet defaults (224 px, ImageNet mean/std)."""
    spec = _SPECS.get(model) or getattr(model, "model_spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    classes = head[-1].out_features if head else 1000
    return ModelSpec(type(model).__name__, 224, IMAGENET_MEAN, IMAGENET_STD, classes)


def adapter_for(model: nn.Module, *, example_size: int | None = None, **options: Any) -> ModelAdapter:
    """The model's adapter, built on first use and kept while the model lives.

    ``options`` (``keep_stage_first``, ``halves``) that differ from the kept adapter's build a
    new one; ``example_size`` is the probe's input side (default: the model's input size).
    """
    adapter = _ADAPTERS.get(model)
    if adapter is None or any(adapter.options.get(k) != v for k, v in options.items()) or (
            adapter.spec != spec_of(model)):
        adapter = ModelAdapter(model, spec_of(model), example_size=example_size, **options)
        _ADAPTERS[model] = adapter
    return adapter

