"""Several processes under ``torchrun``: the one place that speaks to ``torch.distributed``.

``torchrun --nproc_per_node N -m dfpractise run ...`` starts N copies of the command; each finds
its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the
others in ``launched(device)``. Without those variables (or with one process) nothing is
initialised and every helper here is the one-process identity: ``is_main()`` is true,
``all_gather_object(x)`` is ``[x]``, ``on_main(fn)`` is ``fn()``.

Backend: NCCL when the device is CUDA (each rank on ``cuda:LOCAL_RANK``, so a bare ``"cuda"``
means the rank's own GPU), gloo on the CPU. Python objects always travel over a gloo group: it
needs no GPU memory, a rank that waits (while rank 0 times latency) sleeps on a socket, and its
collectives never interleave with DistributedDataParallel's gradient reductions.

Errors: a user error on one rank must end every rank with the same message, never leave the
others waiting in a collective. Work that only rank 0 does goes through ``on_main`` and work each
rank does on its own share through ``together``: both hand every rank the first failure, raised
again there, marked ``all_ranks`` (so the CLI prints it once, on rank 0). Collectives time out
after ``DFPRACTISE_DIST_TIMEOUT`` seconds (default 3600: rank 0 may time latency for long), the
last resort for a rank that died without a word.
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT_ENV = "DFPRACTISE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_world = World()
_objects: Any = None  # the gloo group for Python objects, step-wise sums and CPU BatchNorm


def from_environment() -> World:
    """The world torchrun describes in the environment, or a single process."""
    if not all(name in os.environ for name in ENV):
        return World()
    try:
        rank, size, local = (int(os.environ[name]) for name in ENV)
    except ValueError:
        return World()
    return World(rank, size, local)


def world() -> World:
    """The current world: the initialised one, else what the environment says (progress bars ask
    before any process group exists)."""
    return _world if _world.active else from_environment()


def rank() -> int:
    return world().rank


def world_size() -> int:
    return _world.size


def is_main() -> bool:
    return world().is_main


def active() -> bool:
    """True inside ``launched`` with more than one process."""
    return _world.active


def timeout() -> timedelta:
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
    return timedelta(seconds=max(1.0, seconds))


@contextmanager
def launched(device: str = "cpu") -> Iterator[World]:
    """Join the other ranks torchrun started (nothing to do for one process); leave on exit.

    Nested use (the library called from an already launched CLI) joins nothing more.
    """
    global _world, _objects
    found = from_environment()
    if not found.active or _world.active or not torch.distributed.is_available():
        yield world()
        return
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(found.local_rank)
    already = dist.is_initialized()
    if not already:
        dist.init_process_group(backend=backend, timeout=timeout())
    _objects = dist.new_group(backend="gloo", timeout=timeout())  # off the group DDP reduces on
    _world = World(dist.get_rank(), dist.get_world_size(), found.local_rank, dist.get_backend())
    try:
        yield _world
    finally:
        _world, _objects = World(), None
        if not already:
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        torch.distributed.barrier(group=_objects)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src, group=_objects)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj, group=_objects)
    return gathered


def all_reduce_sum(values: list[float]) -> list[float]:
    """The element-wise sum of ``values`` over the ranks (a few numbers per step of a loop)."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(tensor, group=_objects)
    return tensor.tolist()


def shard(items: list[T]) -> list[T]:
    """This rank's share of ``items``: items r, r + N, ... (all of them for one process)."""
    return list(items[rank()::world_size()]) if active() else list(items)


class _Failure:
    """An exception on its way to the other ranks: itself when it pickles, else its message."""

    def __init__(self, error: BaseException):
        try:
            pickle.loads(pickle.dumps(error))
            self.error: BaseException | None = error
        except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
            self.error = None
        self.kind = type(error).__name__
        self.message = str(error)

    def raise_here(self, local: BaseException | None) -> None:
        if local is not None:  # this rank's own error, with its own traceback
            _mark(local)
            raise local
        error = self.error or RuntimeError(f"{self.kind}: {self.message}")
        _mark(error)
        raise error from None


def _mark(error: BaseException) -> None:
    try:
        error.all_ranks = True  # type: ignore[attr-defined]
    except AttributeError:  # some built-in exceptions take no attributes
        pass


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 while the others wait; its result (or its error) on every rank."""
    if not active():
        return fn()
    local: BaseException | None = None
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, fn())
        except BaseException as error:  # noqa: BLE001 - every rank must hear of it
            local = error
            outcome = (False, _Failure(error))
    ok, value = broadcast_object(outcome)
    if not ok:
        value.raise_here(local)
    return value


def together(fn: Callable[[], T]) -> list[T]:
    """``fn()`` on every rank (each on its own share); every rank's result, in rank order.

    If any rank fails, every rank raises the failure of the lowest failing rank.
    """
    if not active():
        return [fn()]
    local: BaseException | None = None
    try:
        outcome: tuple[bool, Any] = (True, fn())
    except BaseException as error:  # noqa: BLE001 - every rank must hear of it
        local = error
        outcome = (False, _Failure(error))
    gathered = all_gather_object(outcome)
    for position, (ok, value) in enumerate(gathered):
        if not ok:
            value.raise_here(local if position == rank() else None)
    return [value for _, value in gathered]


def is_shared(error: BaseException) -> bool:
    """Whether every rank raised ``error`` (so one rank, rank 0, is enough to show it)."""
    return bool(getattr(error, "all_ranks", False))


@contextmanager
def synchronized_batchnorm(model: torch.nn.Module, device: str | torch.device = "cpu") -> Iterator[torch.nn.Module]:
    """``model`` with its BatchNorm layers normalising over the ranks' global batch, put back on exit.

    Each ``BatchNorm*d`` is swapped for a synchronised one that shares its parameters and running
    statistics (same names, so ``state_dict`` and checkpoints do not change): torch's
    ``SyncBatchNorm`` on CUDA; on the CPU, where torch's needs a GPU, ``_GlooBatchNorm``.
    One process: the model as it is.
    """
    if not active():
        yield model
        return
    kind = torch.nn.SyncBatchNorm if torch.device(device).type != "cpu" else _GlooBatchNorm
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and \
                    not isinstance(child, (torch.nn.SyncBatchNorm, _GlooBatchNorm)):
                synced = _sharing(kind, child)
                setattr(parent, name, synced)
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


def _sharing(kind: type, bn: torch.nn.Module) -> torch.nn.Module:
    """A ``kind`` BatchNorm holding ``bn``'s very parameters and buffers (updates land in both)."""
    synced = kind(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        synced.weight, synced.bias = bn.weight, bn.bias
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(synced, buffer, getattr(bn, buffer))
    return synced.train(bn.training)


class _GlooBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU tensors (gloo): mean and variance over every rank's batch,
    by two differentiable all-reduces (``_Summed``, whose backward all-reduces the gradients), so
    gradients are those of the global batch. Not a ``SyncBatchNorm``: DistributedDataParallel
    refuses those on CPU modules."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        self._check_input_dim(x)
        if not (self.training and active()):
            use_batch = self.training or self.running_mean is None
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch,
                                self.momentum or 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype)
        totals = _Summed.apply(torch.cat([x.sum(dims), count]))
        n = totals[channels]
        mean = totals[:channels] / n
        centred = x - mean.view(shape)
        var = _Summed.apply(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / max(float(n) - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        return y


class _Summed(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: the gradient is summed over them too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=_objects)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=_objects)
        return total
