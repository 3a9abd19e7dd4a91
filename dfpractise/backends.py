"""Where latency is measured: the runtime the compressed model will be deployed on.

A backend turns an ``nn.Module`` into a forward on one batch that ``latency.compare_latency``
times: ``torch`` (eager PyTorch, the default) or ``onnxruntime`` (the model exported to ONNX in
memory and run by an ``InferenceSession`` on CPU). A block's saving in eager PyTorch is not its
saving on another runtime (onnxruntime folds BatchNorm into convolutions and fuses activations,
so a block costs relatively less there), which is why a run can select its blocks on the backend
it will be deployed on (``latency.backend``): the target then holds there.

Every backend times the same kind of forward: eval mode, no grad, one random batch of the
``Timing``'s shape, ``Timing.threads`` intra-op threads (default: torch's). Register your own with
``@register_backend("name")``; recipes and the CLI then accept it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch
from synthesizers.registry import Registry
from torch import nn

from .allocator import steady_allocator
from .errors import ConfigError

if TYPE_CHECKING:
    from .latency import Timing


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


class Forward(ABC):
    """One model, ready to run on its backend: ``forward(batch)`` returns once the result exists."""

    @abstractmethod
    def __call__(self, batch: Any) -> None: ...

    def close(self) -> None:
        """Give the model back as it was (device, memory format, train/eval flag)."""


class Backend(ABC):
    """A runtime that models are timed on."""

    name: str = ""

    def check(self, timing: "Timing") -> None:
        """Refuse, with a ``ConfigError``, a timing this backend cannot run (before any work)."""

    @contextmanager
    def running(self, timing: "Timing") -> Iterator[int]:
        """The context the timed forwards run in (not their preparation); yields their threads."""
        with torch_threads(timing.threads) as threads:
            yield threads

    @abstractmethod
    def batch(self, timing: "Timing") -> Any:
        """One random input batch of ``timing``'s shape, in the form ``Forward`` takes."""

    def memory_format(self, timing: "Timing") -> str:
        """The input's memory layout a measurement holds for (a cut in one need not hold in another)."""
        return "contiguous"

    @abstractmethod
    def forward(self, model: nn.Module, batch: Any, timing: "Timing") -> Forward:
        """``model`` made ready to run ``batch`` with ``timing``'s threads (outside ``running``)."""


B = TypeVar("B", bound=type[Backend])
BACKENDS: Registry[type[Backend]] = Registry("latency backend", "latency backends", unknown=ConfigError,
                                             invalid=ConfigError)


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: make a backend available to ``Timing(backend=...)`` and ``latency.backend``."""
    return BACKENDS.register(name)


def create_backend(name: str) -> Backend:
    return BACKENDS.create(name)


def check_backend(timing: "Timing") -> None:
    """The ``ConfigError`` a measurement on ``timing`` would end in, raised now (unknown backend,
    missing package, unsupported device)."""
    create_backend(timing.backend).check(timing)


@register_backend("torch")
class TorchBackend(Backend):
    """Eager PyTorch on ``Timing.device``; NHWC (channels-last) memory on CPU when the timing asks."""

    @staticmethod
    def _channels_last(timing: "Timing") -> bool:
        return timing.channels_last and torch.device(timing.device).type == "cpu"

    @contextmanager
    def running(self, timing: "Timing") -> Iterator[int]:
        steady_allocator()  # else the process's history changes what a forward costs (see allocator)
        with super().running(timing) as threads, torch.inference_mode():
            yield threads

    def memory_format(self, timing: "Timing") -> str:
        return "channels_last" if self._channels_last(timing) else "contiguous"

    def batch(self, timing: "Timing") -> torch.Tensor:
        x = torch.randn(timing.batch_size, 3, timing.resolution, timing.resolution, device=torch.device(timing.device))
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last(timing) else x

    def forward(self, model: nn.Module, batch: Any, timing: "Timing") -> Forward:
        return _TorchForward(model, torch.device(timing.device), self._channels_last(timing))


class _TorchForward(Forward):
    def __init__(self, model: nn.Module, device: torch.device, channels_last: bool):
        self.model, self.device, self.was_training = model, device, model.training
        model.eval().to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def __call__(self, batch: torch.Tensor) -> None:
        self.model(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.model.to(memory_format=torch.contiguous_format)
        self.model.train(self.was_training)


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """onnxruntime on CPU (``CPUExecutionProvider``), all graph optimisations on.

    Each model is exported to ONNX in memory at the timing's batch shape (``onnx_graph.onnx_bytes``)
    and gets its own session of ``threads`` intra-op threads. Thread spinning is off: with
    spinning, an idle session's threads keep a core busy for a while after each run and would
    slow the next model of an interleaved round. One instance keeps the sessions of the last
    ``KEEP`` models it prepared (the teacher of a series of measurements and the model last timed
    beside it), so it assumes that a model it has seen again is unchanged.
    """

    KEEP = 2

    def __init__(self) -> None:
        self._kept: list[tuple[nn.Module, tuple, Any]] = []

    def check(self, timing: "Timing") -> None:
        from .onnx_graph import require

        if torch.device(timing.device).type != "cpu":
            raise ConfigError(f"the onnxruntime latency backend runs on the CPU, not {timing.device}; "
                              "use the torch backend there")
        for module in ("onnx", "onnxruntime"):
            require(module, "the onnxruntime latency backend")

    def batch(self, timing: "Timing") -> Any:
        return torch.randn(timing.batch_size, 3, timing.resolution, timing.resolution).numpy()

    def forward(self, model: nn.Module, batch: Any, timing: "Timing") -> Forward:
        from . import onnx_graph

        threads = timing.threads or torch.get_num_threads()
        key = (tuple(batch.shape), threads)
        for index, (kept, kept_key, session) in enumerate(self._kept):
            if kept is model and kept_key == key:
                self._kept.append(self._kept.pop(index))
                return _SessionForward(session)
        self.check(timing)
        graph = onnx_graph.onnx_bytes(model, torch.from_numpy(batch), dynamic_batch=False)
        session = onnx_graph.onnx_session(graph, threads, spinning=False)
        self._kept = [*self._kept, (model, key, session)][-self.KEEP:]
        return _SessionForward(session)


class _SessionForward(Forward):
    def __init__(self, session: Any):
        self.session, self.input = session, session.get_inputs()[0].name

    def __call__(self, batch: Any) -> None:
        self.session.run(None, {self.input: batch})
