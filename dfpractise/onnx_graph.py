"""ONNX in memory: a module exported to an ONNX graph, and an onnxruntime session to run one.

The one place that imports the optional ONNX packages (``pip install 'dfpractise[export]'``); both
``export`` (files a user deploys) and ``backends`` (latency measured on onnxruntime) build on it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import ConfigError

INSTALL_HINT = "pip install 'dfpractise[export]'"
INPUT, OUTPUT = "input", "logits"
EXPORTERS = ("torchscript", "dynamo")
"""ONNX exporters of torch: the TorchScript-based one (``dynamo=False``) and ``torch.export``'s."""


def require(module: str, purpose: str) -> Any:
    """Import an optional package, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs {module}, which is not installed: {INSTALL_HINT}") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters warn (deprecations, tracer notes) and may print; the check below is what counts,
    and stdout stays clean for ``--json``."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True, opset: int | None = None,
               exporter: str = "torchscript") -> bytes:
    """``model`` (in eval mode) as an ONNX graph: input ``input`` (N x 3 x H x W), output ``logits``.

    ``exporter`` "torchscript" is torch's TorchScript-based exporter (``dynamo=False``: several
    times faster, needs onnx but not onnxscript); "dynamo" is ``torch.export``'s (needs onnxscript
    too). Both are checked the same way by ``export_model``. With
    ``dynamic_batch`` the batch axis is left free (``example`` should then hold two images or
    more: torch.export fixes an axis of size 1).
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    require("onnx", "ONNX export")  # torch's exporters both build the graph with it
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter")
    with quiet(), eval_mode(model), torch.no_grad():
        if exporter == "torchscript":
            buffer = io.BytesIO()
            axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=opset, dynamic_axes=axes)
            return buffer.getvalue()
        shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    opset_version=opset, dynamic_shapes=shapes, verbose=False)
        return program.model_proto.SerializeToString()


def onnx_session(graph: bytes | str | Path, threads: int | None = None, *, spinning: bool = True) -> Any:
    """An onnxruntime ``InferenceSession`` on CPU (all graph optimisations, ``threads`` intra-op)."""
    ort = require("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(graph) if isinstance(graph, Path) else graph
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
