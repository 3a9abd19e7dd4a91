"""Residual blocks: which ones can be dropped, and the pruned network without them.

A model exposes ``feature_layers()``; containers among them (``nn.Sequential``) that hold residual
blocks are expanded child by child into one flat list of *steps* whose composition is
``forward_features``. A block is droppable when it is an identity-shortcut residual block
(output = act(x + f(x)) with the shape of x) and not the first block of its stage (the paper's
convention: block 0 sets the stage's width and stride). Dropping removes the block from its
``nn.Sequential`` for real, keeping the other children's names, so state-dict keys stay stable.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from synthesizers.registry import Registry
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class ResidualRule:
    """How to read one residual block type.

    ``is_identity`` tells whether its shortcut is the identity; ``shortcut`` is the attribute that
    holds the shortcut (a projection or parameter-free pad), so the residual branch is everything
    else in the block.
    """

    block_type: type
    is_identity: Callable[[nn.Module], bool]
    shortcut: str | None


RESIDUAL_RULES: Registry[ResidualRule] = Registry(
    "residual-block rule", "residual-block rules", unknown=ModelError, invalid=ModelError
)


def register_residual_block(
    block_type: type, is_identity: Callable[[nn.Module], bool], shortcut: str | None
) -> ResidualRule:
    """Teach block discovery a residual block type (users may add their own).

    Registered under the type's qualified name (``package.module.Class``); registering another
    rule for a type that has one is refused.
    """
    name = f"{block_type.__module__}.{block_type.__qualname__}"
    return RESIDUAL_RULES.register(name, ResidualRule(block_type, is_identity, shortcut))


def residual_rule(module: nn.Module) -> ResidualRule | None:
    for rule in RESIDUAL_RULES:
        if isinstance(module, rule.block_type):
            return rule
    return None


def _register_builtin_rules() -> None:
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import Bottleneck

    from .cifar_resnet import BasicBlock as CifarBasicBlock

    register_residual_block(
        CifarBasicBlock,
        lambda b: isinstance(b.shortcut, nn.Identity),
        shortcut="shortcut",
    )
    register_residual_block(TVBasicBlock, lambda b: b.downsample is None, shortcut="downsample")
    register_residual_block(Bottleneck, lambda b: b.downsample is None, shortcut="downsample")
    register_residual_block(InvertedResidual, lambda b: bool(b.use_res_connect), shortcut=None)


_register_builtin_rules()


@dataclass(frozen=True)
class Step:
    """One element of the flat feature pipeline."""

    index: int
    name: str
    module: nn.Module
    residual: bool
    identity: bool
    stage: int  # -1 for steps outside any run of residual blocks


@dataclass(frozen=True)
class Block:
    """A droppable block: its step, its stage and its position within the stage."""

    name: str
    step: int
    stage: int
    position: int


def feature_steps(model: nn.Module) -> list[Step]:
    """The flat list of steps whose composition is ``model.forward_features``."""
    flat: list[tuple[str, nn.Module]] = []
    for name, module in model.feature_layers():
        if isinstance(module, nn.Sequential) and any(
            residual_rule(child) for child in module.children()
        ):
            flat.extend((f"{name}.{child_name}", child) for child_name, child in module.named_children())
        else:
            flat.append((name, module))
    steps: list[Step] = []
    stage = -1
    previous_parent = None
    for index, (name, module) in enumerate(flat):
        rule = residual_rule(module)
        parent = name.rsplit(".", 1)[0] if "." in name else None
        identity = bool(rule and rule.is_identity(module))
        starts_stage = rule is not None and (
            not identity or parent != previous_parent or not steps or steps[-1].stage == -1
        )
        if rule is None:
            step_stage = -1
        else:
            if starts_stage:
                stage += 1
            step_stage = stage
        steps.append(Step(index, name, module, rule is not None, identity, step_stage))
        previous_parent = parent
    return steps


def stage_steps(steps: Sequence[Step], stage: int) -> list[Step]:
    return [s for s in steps if s.stage == stage]


def find_blocks(model: nn.Module, input_size: int | None = None, probe: bool = True) -> list[Block]:
    """Droppable blocks in network order, verified by a forward probe of their shapes."""
    steps = feature_steps(model)
    candidates: list[Block] = []
    for step in steps:
        if not (step.residual and step.identity):
            continue
        position = [s.index for s in stage_steps(steps, step.stage)].index(step.index)
        if position == 0:
            continue
        candidates.append(Block(step.name, step.index, step.stage, position))
    if probe and candidates:
        size = input_size or model.model_spec.input_size
        same_shape = _probe_shapes(model, steps, size)
        candidates = [b for b in candidates if same_shape[b.step]]
    return candidates


def _probe_shapes(model: nn.Module, steps: Sequence[Step], size: int) -> dict[int, bool]:
    """Run one input through the steps and record whether each kept its input's shape."""
    was_training = model.training
    model.eval()
    result = {}
    x = torch.zeros(1, 3, size, size, device=_device_of(model))
    with torch.no_grad():
        for step in steps:
            y = step.module(x)
            result[step.index] = tuple(y.shape) == tuple(x.shape)
            x = y
    model.train(was_training)
    return result


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_block_names(model: nn.Module, names: Iterable[str], input_size: int | None = None) -> list[Block]:
    """The Block records for ``names``; an unknown or undroppable name is a ``ModelError``."""
    blocks = {b.name: b for b in find_blocks(model, input_size)}
    chosen = []
    for name in names:
        if name not in blocks:
            known = ", ".join(blocks) or "none"
            raise ModelError(f"'{name}' is not a droppable block of this model (droppable: {known})")
        chosen.append(blocks[name])
    return chosen


def drop_blocks(model: nn.Module, names: Iterable[str], input_size: int | None = None) -> nn.Module:
    """A copy of ``model`` with the named blocks really removed (the original is untouched)."""
    names = list(names)
    check_block_names(model, names, input_size)
    pruned = copy.deepcopy(model)
    remove_children(pruned, names)
    return pruned


def remove_children(model: nn.Module, names: Iterable[str]) -> None:
    """Remove named children from their ``nn.Sequential`` parents, in place, keeping other names."""
    by_parent: dict[str, set[str]] = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        by_parent.setdefault(parent, set()).add(child)
    for parent_name, children in by_parent.items():
        parent = model.get_submodule(parent_name)
        if not isinstance(parent, nn.Sequential):
            raise ModelError(f"cannot drop from '{parent_name}': it is not an nn.Sequential")
        kept = OrderedDict((n, m) for n, m in parent.named_children() if n not in children)
        _set_submodule(model, parent_name, nn.Sequential(kept))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def branch_convs(block: nn.Module) -> list[nn.Conv2d]:
    """Convolutions of the residual branch, in forward order (shortcut excluded)."""
    rule = residual_rule(block)
    if rule is None:
        raise ModelError(f"{type(block).__name__} is not a registered residual block")
    prefix = rule.shortcut
    return [
        m
        for n, m in block.named_modules()
        if isinstance(m, nn.Conv2d) and not (prefix and (n == prefix or n.startswith(prefix + ".")))
    ]


def shortcut_convs(block: nn.Module) -> list[nn.Conv2d]:
    """The projection shortcut's convolutions (empty for identity or parameter-free shortcuts)."""
    rule = residual_rule(block)
    if rule is None or rule.shortcut is None:
        return []
    shortcut = getattr(block, rule.shortcut, None)
    if shortcut is None:
        return []
    return [m for m in shortcut.modules() if isinstance(m, nn.Conv2d)]
