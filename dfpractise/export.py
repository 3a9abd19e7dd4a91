"""The compressed model leaves the toolkit: ONNX, TorchScript or safetensors, each checked on the spot.

``export_run(RUN_DIR, OUT, format)`` writes the pruned model of a run folder. Input: a float32
N x 3 x H x W batch normalised as the teacher expects (the run's input size, mean and std, which
every format also records); output: the logits. Each file is written under a temporary name
(``atomic_write``), loaded back with the runtime a user would load it with (onnxruntime for
ONNX, ``torch.jit.load`` for TorchScript, the model rebuilt from the file's manifest and weights
for safetensors), and its outputs compared with PyTorch's on the same inputs: the images of the
run's tiny set (``tiny_set.txt``, preprocessed like the run) when they can be read, else random
normal inputs. Only a file that passes takes its name:

    max |exported - PyTorch| <= TOLERANCE x max(1, max |PyTorch logit|)     (TOLERANCE = 1e-4)

A dynamic-batch export is checked at two batch sizes. A file that fails is deleted, and a
``ModelError`` says by how much it missed. ``dfpractise.load(path)`` rebuilds the pruned model of
a run folder or of an exported safetensors file. The optional packages (onnx, onnxruntime,
onnxscript) come with ``pip install 'dfpractise[export]'``.
"""

from __future__ import annotations

import copy
import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from synthesizers.files import atomic_write
from synthesizers.registry import Registry
from torch import nn

from . import onnx_graph
from .errors import ConfigError, DFPractiseError, ModelError
from .onnx_graph import EXPORTERS, INPUT, OUTPUT

TOLERANCE = 1e-4
"""Allowed max |exported - PyTorch| logit difference, relative to max(1, max |PyTorch logit|)."""
CHECK_IMAGES = 8
"""Inputs an export is checked on (tiny-set images, else random normal ones)."""
METADATA_KEY = "dfpractise"
"""Where every format keeps what rebuilds and feeds the model (manifest, input spec), as JSON."""
EXPORT_FORMAT = "dfpractise-export/1"


@dataclass(frozen=True)
class ExportOptions:
    """How a model is written: the batch axis, and for ONNX the opset and exporter."""

    dynamic_batch: bool = True
    opset: int | None = None
    exporter: str = "torchscript"


Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportFormat(ABC):
    """A file format: how a model is written to it, and how a user runs the file."""

    name: str = ""
    suffix: str = ""
    needs: tuple[str, ...] = ()  # optional packages
    needs_manifest: bool = False

    def check(self, options: ExportOptions) -> None:
        """Refuse options or missing packages before anything is exported."""
        for module in self.needs:
            onnx_graph.require(module, f"{self.name} export")

    @abstractmethod
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions,
              metadata: dict[str, Any]) -> None:
        """Write ``model`` (eval mode, CPU) to ``path``, with ``metadata`` kept inside the file."""

    @abstractmethod
    def runner(self, path: Path) -> Runner:
        """The file at ``path`` loaded back as a user would: a function from inputs to logits."""

    def runtime(self) -> str:
        """What ran the file for the check."""
        return f"torch {torch.__version__}"


F = TypeVar("F", bound=type[ExportFormat])
EXPORT_FORMATS: Registry[type[ExportFormat]] = Registry("export format", "export formats", unknown=ConfigError,
                                                        invalid=ConfigError)


def register_format(name: str) -> Callable[[F], F]:
    return EXPORT_FORMATS.register(name)


@register_format("onnx")
class OnnxFormat(ExportFormat):
    """ONNX, with the input spec and the manifest in its ``metadata_props``; checked in onnxruntime."""

    suffix = ".onnx"
    needs = ("onnx", "onnxruntime")

    def check(self, options: ExportOptions) -> None:
        super().check(options)
        if options.exporter not in EXPORTERS:
            raise ConfigError(f"unknown ONNX exporter {options.exporter!r}; known: {', '.join(EXPORTERS)}")
        if options.exporter == "dynamo":
            onnx_graph.require("onnxscript", "the dynamo ONNX exporter")

    def write(self, model, example, path, options, metadata) -> None:
        onnx = onnx_graph.require("onnx", "ONNX export")
        graph = onnx.load_from_string(onnx_graph.onnx_bytes(model, example, dynamic_batch=options.dynamic_batch,
                                                 opset=options.opset, exporter=options.exporter))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        graph.producer_name = "dfpractise"
        onnx.checker.check_model(graph)
        path.write_bytes(graph.SerializeToString())

    def runner(self, path: Path) -> Runner:
        session = onnx_graph.onnx_session(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])

        return run

    def runtime(self) -> str:
        return f"onnxruntime {onnx_graph.require('onnxruntime', 'running ONNX models').__version__}"


@register_format("torchscript")
class TorchScriptFormat(ExportFormat):
    """A traced TorchScript module (``torch.jit.trace``), its metadata in ``dfpractise.json`` inside."""

    suffix = ".pt"
    EXTRA = "dfpractise.json"

    def check(self, options: ExportOptions) -> None:
        if options.opset is not None:
            raise ConfigError("--opset is for ONNX exports")

    def write(self, model, example, path, options, metadata) -> None:
        with onnx_graph.quiet(), onnx_graph.eval_mode(model), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={self.EXTRA: json.dumps(metadata)})

    def runner(self, path: Path) -> Runner:
        with onnx_graph.quiet():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run


@register_format("safetensors")
class SafetensorsFormat(ExportFormat):
    """The pruned weights, and in the metadata the manifest that rebuilds the model around them
    (``dfpractise.load(FILE)``); the architecture's code comes from this package (or the factory)."""

    suffix = ".safetensors"
    needs_manifest = True

    def check(self, options: ExportOptions) -> None:
        if options.opset is not None:
            raise ConfigError("--opset is for ONNX exports")

    def write(self, model, example, path, options, metadata) -> None:
        from safetensors.torch import save_file

        from .models.weights import MODULE_METADATA

        state = model.state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(path), metadata={MODULE_METADATA: json.dumps(getattr(state, "_metadata", {}) or {}),
                                                METADATA_KEY: json.dumps(metadata)})

    def runner(self, path: Path) -> Runner:
        model = load_safetensors(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return run


@dataclass
class ExportResult:
    """What was written and how well the file reproduced the PyTorch model."""

    path: str
    format: str
    dynamic_batch: bool
    batch_sizes: list[int]  # the batch sizes the file was checked at
    inputs: str  # what the check ran on: tiny-set images or random normal inputs, and why
    max_abs_diff: float
    allowed: float  # TOLERANCE x logit_scale
    logit_scale: float  # max(1, max |PyTorch logit|)
    tolerance: float
    runtime: str
    bytes: int
    seconds: float
    exporter: str | None = None  # ONNX only
    opset: int | None = None  # ONNX only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_model(model: nn.Module, out: str | Path, format: str = "onnx", *, dynamic_batch: bool = True,
                 batch_size: int | None = None, opset: int | None = None, exporter: str = "torchscript",
                 inputs: torch.Tensor | None = None, inputs_label: str | None = None,
                 manifest: dict[str, Any] | None = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Write ``model`` to ``out`` in ``format`` and check the file against the model; see the module.

    ``inputs``: normalised N x 3 x H x W images to check on (default: ``CHECK_IMAGES`` random
    normal ones at the model's input size). ``batch_size``: the one batch a static-batch file takes
    (default 1). ``manifest``: what rebuilds the model (a run's; required for safetensors).
    Nothing is left at ``out`` unless the check passes (an existing file there stays as it was).
    """
    from .models.adapter import spec_of

    fmt = EXPORT_FORMATS.get(format)()
    options = ExportOptions(dynamic_batch, opset, exporter)
    fmt.check(options)
    if dynamic_batch and batch_size is not None:
        raise ConfigError("a batch size is for --static-batch exports (a dynamic-batch file takes any)")
    if fmt.needs_manifest and manifest is None:
        raise ConfigError(f"a {format} export needs the manifest that rebuilds the model; export a run folder")
    spec = spec_of(model)
    if inputs is None:
        inputs = _random_inputs(spec.input_size)
        inputs_label = inputs_label or f"{len(inputs)} random normal inputs"
    inputs = inputs.detach().float().cpu()
    if len(inputs) < 2:
        raise ConfigError("an export is checked on at least two inputs")
    if dynamic_batch:
        example, batches = inputs[:2], [inputs[:1], inputs]
    else:
        size = batch_size or 1
        batch = inputs[torch.arange(size) % len(inputs)]
        example, batches = batch, [batch]
    metadata = _metadata(spec, manifest, dynamic_batch, batch_size)
    out = Path(out)
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()  # exported and checked on the CPU; the caller's model stays put

    def write_and_check(tmp: Path) -> None:
        try:
            fmt.write(model, example, tmp, options, metadata)
            run = fmt.runner(tmp)
            outputs = [(run(x), x) for x in batches]
        except DFPractiseError:
            raise
        except Exception as err:  # noqa: BLE001 - an exporter or runtime refusing this model: one line
            raise ModelError(f"{format} export failed ({_first_line(err)}); nothing was written"
                             + _hint(format, options)) from None
        diff, scale = 0.0, 1.0
        with onnx_graph.eval_mode(model), torch.no_grad():
            for got, x in outputs:
                want = model(x)
                if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                    raise ModelError(f"the exported {format} model gives outputs of shape {shape} at batch "
                                     f"{len(x)}, PyTorch {tuple(want.shape)}; nothing was written"
                                     + _hint(format, options))
                diff = max(diff, float((got.float() - want.float()).abs().max()))
                scale = max(scale, float(want.abs().max()))
        allowed = tolerance * scale
        if not diff <= allowed:  # also refuses NaN
            raise ModelError(
                f"the exported {format} model differs from PyTorch by {diff:.3g} on {inputs_label} "
                f"(allowed {allowed:.3g} = {tolerance:g} x logit scale {scale:.3g}); nothing was written"
                + _hint(format, options))
        result.update(max_abs_diff=diff, allowed=allowed, logit_scale=scale)

    atomic_write(out, write_and_check)
    opset_used = _onnx_opset(out) if format == "onnx" else None
    return ExportResult(
        path=str(out), format=format, dynamic_batch=dynamic_batch, batch_sizes=[len(x) for x in batches],
        inputs=inputs_label or f"{len(inputs)} given inputs", tolerance=tolerance, runtime=fmt.runtime(),
        bytes=out.stat().st_size, seconds=round(time.perf_counter() - started, 2),
        exporter=exporter if format == "onnx" else None, opset=opset_used, **result)


def export_run(run_dir: str | Path, out: str | Path, format: str = "onnx", *, dynamic_batch: bool = True,
               batch_size: int | None = None, opset: int | None = None, exporter: str = "torchscript",
               tolerance: float = TOLERANCE) -> ExportResult:
    """Export the pruned model of a finished run folder, checked on its tiny set's images."""
    from .runs import load_run

    EXPORT_FORMATS.get(format)().check(ExportOptions(dynamic_batch, opset, exporter))  # before any loading
    loaded = load_run(run_dir)
    pruned = loaded.pruned.eval()
    inputs, label = check_inputs(loaded.path, pruned)
    return export_model(pruned, out, format, dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset,
                        exporter=exporter, inputs=inputs, inputs_label=label, manifest=loaded.manifest,
                        tolerance=tolerance)


def check_inputs(run_dir: Path, model: nn.Module, count: int = CHECK_IMAGES) -> tuple[torch.Tensor, str]:
    """Up to ``count`` images of the run's tiny set, read and normalised as the run read them
    (``sources.images``: the evaluation resize, then the model's mean and std), and what they are;
    random normal inputs when the file list is missing or its images cannot be read."""
    from .augment import normalize
    from .models.adapter import spec_of
    from .runs import FILE_LIST
    from .sources.base import read_file_list
    from .sources.images import decode_images, to_float_batch

    spec = spec_of(model)
    listed = run_dir / FILE_LIST
    why = f"no {FILE_LIST} in the run folder"
    if listed.is_file():
        try:
            names = [name for name, _ in read_file_list(listed)]
        except (OSError, ValueError, UnicodeError):
            names, why = [], f"{FILE_LIST} cannot be read"
        paths = [Path(n) if Path(n).is_absolute() else run_dir / n for n in names[:4 * count]]
        images = [image for image in decode_images(paths, spec.input_size) if image is not None][:count]
        if len(images) >= 2:
            batch = normalize(to_float_batch(images), spec.mean, spec.std)
            return batch, f"{len(images)} tiny-set images from {FILE_LIST}"
        if names:
            why = f"the images {FILE_LIST} lists cannot be read"
        elif why.startswith("no "):
            why = f"{FILE_LIST} lists no image files"
    return _random_inputs(spec.input_size, count), f"{count} random normal inputs ({why})"


def load(path: str | Path) -> nn.Module:
    """The compressed model of a run folder, or of a safetensors file ``export`` wrote.

    Rebuilt from the manifest and the weights (never a pickle), in eval mode, with its input spec
    attached (``models.adapter.spec_of``: input size, mean, std, classes).
    """
    from .runs import load_run

    path = Path(path)
    if path.is_file():
        return load_safetensors(path)
    return load_run(path).pruned.eval()


def load_safetensors(path: str | Path) -> nn.Module:
    """The model of a safetensors export: its manifest's architecture, units dropped, weights loaded."""
    from safetensors import safe_open

    from .runs import build_architecture, build_pruned

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            stored = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as err:  # noqa: BLE001 - not safetensors, truncated: one answer
        raise ModelError(f"{path} cannot be read as safetensors ({_first_line(err)})") from None
    try:
        metadata = json.loads(stored) if stored else None
        manifest = metadata["manifest"] if isinstance(metadata, dict) else None
    except (ValueError, KeyError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("dropped"), list):
        raise ModelError(f"{path} holds no dfpractise manifest; it was not written by "
                         "`dfpractise export --format safetensors` (a run folder loads with its folder)")
    return build_pruned(manifest, build_architecture(manifest), path).eval()


def _metadata(spec: Any, manifest: dict[str, Any] | None, dynamic_batch: bool,
              batch_size: int | None) -> dict[str, Any]:
    """What a deployed model needs besides its graph: how to feed it, and how to rebuild it."""
    return {
        "format": EXPORT_FORMAT,
        "input": {"name": INPUT, "layout": "NCHW", "dtype": "float32", "size": spec.input_size,
                  "mean": list(spec.mean), "std": list(spec.std), "normalised": True,
                  "batch": "dynamic" if dynamic_batch else batch_size or 1},
        "output": {"name": OUTPUT, "num_classes": spec.num_classes},
        "class_names": list(spec.class_names) if getattr(spec, "class_names", None) else None,
        "manifest": manifest,
        "dfpractise": _version(),
    }


def _random_inputs(size: int, count: int = CHECK_IMAGES) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def _onnx_opset(path: Path) -> int | None:
    onnx = onnx_graph.require("onnx", "ONNX export")
    graph = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)


def _hint(format: str, options: ExportOptions) -> str:
    if format == "onnx" and options.exporter == "torchscript":
        return "; try --exporter dynamo" + (" or --static-batch" if options.dynamic_batch else "")
    if options.dynamic_batch and format != "safetensors":
        return "; try --static-batch"
    return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _version() -> str:
    from . import __version__

    return __version__
