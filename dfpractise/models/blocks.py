"""Droppable units of a model: what they are called, and the user's overrides of discovery.

Units are found by ``dfpractise.models.adapter`` from any module's recorded forward (see
``anatomy``): a whole residual block ``x + f(x)``, or, in blocks with several branches
(transformer layers: attention then MLP), one branch on its own. By the paper's convention the
first block of each stage is kept (it opens the stage); ``keep_stage_first=False`` lifts it.

``find_blocks(model)`` and ``drop_blocks(model, names)`` are the short way in; both go through the
model's adapter, built once per model. ``register_residual_block`` lets a user say of a block
type what discovery cannot see, or overrule it: ``is_identity(module)`` decides whether a module of
that type is a droppable block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from synthesizers.registry import Registry
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class Block:
    """A droppable unit: a whole block, or one branch (``part``) of a block with several."""

    name: str  # "layer1.1"; a branch is named after its main module, "blocks.3.attn"
    step: int  # position in network order among all units
    stage: int
    position: int  # position within its stage (the stage's opening module is 0)
    module: str = ""  # the block's module path (for a branch, its block's)
    part: int | None = None  # which branch of the block; None: the whole block

    @property
    def group(self) -> str:
        """Units of one block exclude each other in a selection (a block, or one of its branches)."""
        return self.module or self.name


@dataclass(frozen=True)
class ResidualRule:
    """The user's word on one block type: ``is_identity(module)`` says whether it can be dropped."""

    block_type: type
    is_identity: Callable[[nn.Module], bool]


RESIDUAL_RULES: Registry[ResidualRule] = Registry(
    "residual-block rule", "residual-block rules", unknown=ModelError, invalid=ModelError
)


def register_residual_block(block_type: type, is_identity: Callable[[nn.Module], bool]) -> ResidualRule:
    """Decide for every module of ``block_type`` whether it is a droppable block.

    Registered under the type's qualified name (``package.module.Class``); a second rule for the
    same type is refused.
    """
    name = f"{block_type.__module__}.{block_type.__qualname__}"
    return RESIDUAL_RULES.register(name, ResidualRule(block_type, is_identity))


def residual_rule(module: nn.Module) -> ResidualRule | None:
    for rule in RESIDUAL_RULES:
        if isinstance(module, rule.block_type):
            return rule
    return None


def find_blocks(model: nn.Module, input_size: int | None = None) -> list[Block]:
    """Droppable units of ``model`` in network order (its adapter's, built on first use)."""
    from .adapter import adapter_for

    return adapter_for(model, example_size=input_size).blocks


def drop_blocks(model: nn.Module, names: Iterable[str], input_size: int | None = None) -> nn.Module:
    """A copy of ``model`` without the named units (the original is untouched)."""
    from .adapter import adapter_for

    return adapter_for(model, example_size=input_size).drop(list(names))
