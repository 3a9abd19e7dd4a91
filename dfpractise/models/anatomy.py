"""How a model is built out of residual computations, read from one recorded forward.

A probe forward records every module call (hooks). Each module that kept its input's shape is
then called alone on a copy of its recorded input, and the autograd graph of its output is read:

- an *identity skip* is a path from the output back to the input through additions only (and
  pointwise activations, views and copies, so ``relu(x + f(x))`` counts); each addition on that
  path adds one branch, ``y = x + f1(x) + f2(x + f1(x)) + ...``;
- a *projection block* ends in an addition whose two operands both come from the input (a
  strided or widened shortcut beside the branch);
- anything else is one plain computation.

This is the evidence Torch-Pruning reads for residual joins (``AddBackward`` nodes), and it needs
no tracing: shape arithmetic, control flow and loops over an ``nn.ModuleList`` are no obstacle.
``torch.fx`` was the alternative; it cannot trace timm's Swin blocks (they unpack ``x.shape``) nor
user code with data-dependent branches, while hooks and autograd see every call as it runs.
Branch scaling (layer-scale, drop-path) sits on the branch side and does not hide the skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LINEAR_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)
"""Modules around which an adaptor can be placed (a learnable map of its input or output)."""

# autograd nodes a skip path may pass through: additions, pointwise activations, views, copies
_ON_SKIP_PATH = {
    "AddBackward0", "AddBackward1", "ReluBackward0", "ReluBackward1", "Relu6Backward0", "HardtanhBackward0",
    "GeluBackward0", "SiluBackward0", "HardswishBackward0", "LeakyReluBackward0", "EluBackward0",
    "CloneBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0",
    "TransposeBackward0", "ToCopyBackward0", "AsStridedBackward0", "SqueezeBackward0", "UnsqueezeBackward0",
}
_ADD = ("AddBackward0", "AddBackward1")


@dataclass
class Call:
    """One module call seen by the probe."""

    name: str
    start: int  # order in which calls began
    done: int = -1  # order in which calls finished
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    output: Any = None

    @property
    def depth(self) -> int:
        return self.name.count(".") + 1

    @property
    def keeps_shape(self) -> bool:
        """One tensor in, a tensor of the same shape out: replacing it by the identity type-checks."""
        first = self.args[0] if self.args else None
        return torch.is_tensor(first) and torch.is_tensor(self.output) and self.output.shape == first.shape


@dataclass
class Probe:
    """Every module call of one forward, by module name, in call order."""

    calls: dict[str, list[Call]]
    order: list[Call]


def probe(model: nn.Module, example: torch.Tensor) -> Probe:
    """Run ``example`` through ``model`` (eval, no grad) recording every module call."""
    calls: dict[str, list[Call]] = {}
    order: list[Call] = []
    handles = []
    finished = [0]

    def before(name: str):
        def hook(module, args, kwargs):
            call = Call(name, len(order), args=args, kwargs=kwargs)
            calls.setdefault(name, []).append(call)
            order.append(call)
        return hook

    def after(name: str):
        def hook(module, args, kwargs, output):
            call = next(c for c in reversed(calls[name]) if c.done < 0)
            call.output, call.done = output, finished[0]
            finished[0] += 1
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Probe(calls, order)


@dataclass(frozen=True)
class Branch:
    """One computed part ``f`` added onto the trunk, as an adaptor placement needs it."""

    first: str | None  # first conv/linear/attention call on it: an adaptor may go on its input
    last: str | None  # the last one: an adaptor may go on its output
    children: tuple[str, ...] = ()  # the module's direct children that run for this branch only
    tuple_sizes: tuple[int, ...] = ()  # per child: 0 if it returns a tensor, n for an n-tuple
    zeroable: bool = False  # replacing those children by zeros removes the branch exactly


@dataclass(frozen=True)
class Anatomy:
    """The residual structure of one module call."""

    name: str
    identity: bool  # y = x + f1 + f2 + ...: the module can be replaced by the identity
    branches: tuple[Branch, ...]  # in order of computation (the trunk's additions, input side first)
    shortcut: Branch | None = None  # the projection of a projection block

    @property
    def halves(self) -> bool:
        """Whether each branch can be dropped on its own (several branches, each zeroable)."""
        return self.identity and len(self.branches) > 1 and all(b.zeroable for b in self.branches)


def analyse(module: nn.Module, call: Call) -> Anatomy:
    """The anatomy of ``module`` from a standalone call on its recorded input (autograd)."""
    x = call.args[0].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        entry = x.clone()  # the node ops on the input hang from (a leaf may not be modified in place)
        entry_node = entry.grad_fn
        inner = _Recorder(module)
        with inner:
            output = module(entry, *call.args[1:], **call.kwargs)
    if not torch.is_tensor(output) or output.grad_fn is None:
        return Anatomy(call.name, False, ())
    skip = _skip_path(output.grad_fn, entry_node)
    if skip is not None:
        branches = []
        for add, trunk in skip:
            operands = [n for n, _ in add.next_functions if n is not None and n is not trunk]
            reached = _ancestors(operands, entry_node) - _ancestors([trunk], entry_node)
            branches.append(inner.branch(module, reached))
        return Anatomy(call.name, True, tuple(_checked_zeroable(module, call, branches)))
    add = _first_add(output.grad_fn)
    if add is not None:
        operands = [n for n, _ in add.next_functions if n is not None]
        if len(operands) == 2 and all(id(entry_node) in _ancestors([n], None) for n in operands):
            sides = [inner.branch(module, _ancestors([n], entry_node)) for n in operands]
            counts = [inner.linear_count(_ancestors([n], entry_node)) for n in operands]
            branch, shortcut = (sides[0], sides[1]) if counts[0] >= counts[1] else (sides[1], sides[0])
            return Anatomy(call.name, False, (branch,), shortcut)
    return Anatomy(call.name, False, (inner.branch(module, None),))


class _Recorder:
    """Hooks on every descendant during a standalone call: which ran, on what, in which order."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.calls: list[tuple[str, Any, Any, Any]] = []  # (name, output node, first input, output)
        self.handles: list = []

    def __enter__(self) -> "_Recorder":
        for name, sub in self.module.named_modules():
            if name:
                self.handles.append(sub.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(sub, args, output):
            tensor = output if torch.is_tensor(output) else next(
                (t for t in output if torch.is_tensor(t)), None) if isinstance(output, (tuple, list)) else None
            node = tensor.grad_fn if tensor is not None else None
            self.calls.append((name, node, args[0] if args else None, output))
        return hook

    def linear_count(self, nodes: set[int]) -> int:
        return sum(1 for name, node, _, _ in self.calls
                   if node is not None and id(node) in nodes and isinstance(self._sub(name), LINEAR_TYPES))

    def branch(self, module: nn.Module, nodes: set[int] | None) -> Branch:
        """The branch made of the calls whose output nodes are ``nodes`` (None: every call)."""
        on = [(n, node, arg, out) for n, node, arg, out in self.calls
              if nodes is None or (node is not None and id(node) in nodes)]
        linear = [n for n, _, _, _ in on if isinstance(self._sub(n), LINEAR_TYPES)]
        children, sizes = [], []
        for child, _ in module.named_children():
            mine = [c for c in on if c[0] == child]
            everywhere = [c for c in self.calls if c[0] == child]
            if mine and len(mine) == len(everywhere) and all(_zero_template(a, o) for _, _, a, o in mine):
                children.append(child)
                sizes.append(len(mine[0][3]) if isinstance(mine[0][3], tuple) else 0)
        return Branch(linear[0] if linear else None, linear[-1] if linear else None, tuple(children), tuple(sizes))

    def _sub(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)


def _skip_path(node: Any, entry: Any) -> list[tuple[Any, Any]] | None:
    """[(add node, its operand on the trunk)] from the input side, or None without an identity skip."""

    def walk(current: Any, below: Any, path: list) -> list | None:
        if current is entry:
            return path
        if type(current).__name__ not in _ON_SKIP_PATH:
            return None
        for child, _ in current.next_functions:
            if child is None:
                continue
            step = [(current, child)] if type(current).__name__ in _ADD else []
            found = walk(child, current, step + path)
            if found is not None:
                return found
        return None

    found = walk(node, None, [])
    return found if found else None


def _first_add(node: Any) -> Any:
    """The addition the output comes from, through pointwise and view nodes only."""
    while node is not None:
        name = type(node).__name__
        if name in _ADD:
            return node
        if name not in _ON_SKIP_PATH:
            return None
        parents = [n for n, _ in node.next_functions if n is not None]
        if len(parents) != 1:
            return None
        node = parents[0]
    return None


def _ancestors(nodes: list[Any], stop: Any) -> set[int]:
    """Ids of every node reachable from ``nodes`` (themselves included), not going past ``stop``
    (``stop`` None: all the way to the leaves)."""
    seen: set[int] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or node is stop:
            continue
        seen.add(id(node))
        stack.extend(n for n, _ in node.next_functions)
    return seen


def _zero_template(first_input: Any, output: Any) -> bool:
    """Whether ``ZeroBranch`` can stand in for this call: a tensor shaped like its first input,
    or a tuple of one such tensor followed by Nones (``nn.MultiheadAttention``)."""
    if not torch.is_tensor(first_input):
        return False
    if torch.is_tensor(output):
        return output.shape == first_input.shape
    return (isinstance(output, tuple) and len(output) > 0 and torch.is_tensor(output[0])
            and output[0].shape == first_input.shape and all(o is None for o in output[1:]))


class ZeroBranch(nn.Module):
    """Stands in for a module of a dropped branch: zeros shaped like its input, at no cost.

    ``tuple_size`` > 0 mimics a module returning ``(tensor, None, ...)`` (attention).
    """

    def __init__(self, tuple_size: int = 0):
        super().__init__()
        self.tuple_size = tuple_size

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        zeros = torch.zeros_like(x)
        return (zeros,) + (None,) * (self.tuple_size - 1) if self.tuple_size else zeros

    def extra_repr(self) -> str:
        return f"tuple_size={self.tuple_size}" if self.tuple_size else ""


def zero_branch(module: nn.Module, branch: Branch) -> None:
    """Replace ``branch.children`` of ``module`` by ``ZeroBranch`` modules, in place."""
    for child, size in zip(branch.children, branch.tuple_sizes, strict=True):
        setattr(module, child, ZeroBranch(size))


def _checked_zeroable(module: nn.Module, call: Call, branches: list[Branch]) -> list[Branch]:
    """Mark the branches zeroable when zeroing all of them makes the module the identity exactly.

    Zeroing every branch must leave exactly the input (the additions receive zeros); if some
    functional op (a bias added outside any module, say) survives, no branch is offered alone.
    """
    if len(branches) < 2 or any(not b.children for b in branches):
        return branches
    saved = {c: getattr(module, c) for b in branches for c in b.children}
    try:
        for b in branches:
            zero_branch(module, b)
        with torch.no_grad():
            result = module(*call.args, **call.kwargs)
        exact = torch.is_tensor(result) and torch.equal(result, call.args[0])
    except Exception:  # a stand-in the module's code cannot use
        exact = False
    finally:
        for child, original in saved.items():
            setattr(module, child, original)
    return [Branch(b.first, b.last, b.children, b.tuple_sizes, exact) for b in branches]
