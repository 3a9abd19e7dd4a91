"""Export: each file reproduces the pruned model where a user runs it, or nothing is written."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner

import dfpractise
from dfpractise import export, onnx_graph
from dfpractise.cli import main
from dfpractise.config import RunConfig
from dfpractise.engine import compress
from dfpractise.errors import ConfigError, ModelError
from dfpractise.models.adapter import spec_of
from dfpractise.progress import Progress
from dfpractise.runs import load_run

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, assets_dir):
    """A finished tiny run: ResNet-20, 16 real images, two blocks dropped, a few steps of everything."""
    config = RunConfig(model="cifar10_resnet20", weights="cifar10jpeg-resnet20", latency_reduction=None, drop=2,
                       seed=3)
    config.data.path = str(assets_dir / "cifar10-jpeg" / "train")
    config.data.num_images = 16
    config.latency.batch_size, config.latency.repeats, config.latency.warmup = 8, 2, 1
    config.scoring.iterations, config.scoring.batch_size = 2, 8
    config.recovery.iterations, config.recovery.batch_size = 4, 8
    out = tmp_path_factory.mktemp("export") / "run"
    compress(config, out, progress=Progress(quiet=True))
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def images(run_dir, loaded):
    """Normalised tiny-set images, as the export check reads them."""
    inputs, label = export.check_inputs(run_dir, loaded.pruned)
    assert "tiny-set images" in label
    return inputs


def _export(loaded, images, out, fmt, **options):
    """``export_run`` without rebuilding the run each time: its pruned model, manifest and inputs."""
    return export.export_model(loaded.pruned, out, fmt, inputs=images, inputs_label="8 tiny-set images",
                               manifest=loaded.manifest, **options)


def _pytorch(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _allowed(reference: torch.Tensor) -> float:
    return export.TOLERANCE * max(1.0, float(reference.abs().max()))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in favour of torch.export
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_each_format_gives_the_pruned_models_logits(fmt, run_dir, loaded, images, tmp_path):
    out = tmp_path / f"model.{fmt}"
    result = _export(loaded, images, out, fmt)
    assert out.is_file() and result.bytes == out.stat().st_size
    assert result.max_abs_diff <= result.allowed == pytest.approx(export.TOLERANCE * result.logit_scale)
    assert result.batch_sizes == [1, 8]
    want = _pytorch(loaded.pruned, images)
    if fmt == "onnx":  # loaded here the way a user would, not through the exporter's own runner
        import onnx
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": images.numpy()})[0])
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["dfpractise"])
        assert meta["input"]["size"] == 32 and meta["input"]["mean"] == list(spec_of(loaded.teacher).mean)
        assert meta["manifest"]["dropped"] == loaded.manifest["dropped"] and result.opset
    elif fmt == "torchscript":
        got = _pytorch(torch.jit.load(str(out)), images)
    else:
        rebuilt = dfpractise.load(out)
        got = _pytorch(rebuilt, images)
        assert torch.equal(got, want), "same weights, same code: the same numbers"
        assert spec_of(rebuilt).input_size == 32
    assert float((got - want).abs().max()) <= _allowed(want)
    assert not torch.allclose(want, _pytorch(loaded.teacher, images)), "the pruned model, not the teacher"


def test_a_dynamic_batch_onnx_file_takes_any_batch_and_a_static_one_only_its_own(run_dir, loaded, images, tmp_path):
    import onnxruntime as ort

    dynamic, static = tmp_path / "dynamic.onnx", tmp_path / "static.onnx"
    _export(loaded, images, dynamic, "onnx")
    result = _export(loaded, images, static, "onnx", dynamic_batch=False, batch_size=3)
    assert result.batch_sizes == [3] and not result.dynamic_batch
    session = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    for size in (1, 5):
        got = torch.from_numpy(session.run(None, {"input": images[:size].numpy()})[0])
        want = _pytorch(loaded.pruned, images[:size])
        assert got.shape == (size, 10) and float((got - want).abs().max()) <= _allowed(want)
    fixed = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    assert fixed.run(None, {"input": images[:3].numpy()})[0].shape == (3, 10)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        fixed.run(None, {"input": images[:5].numpy()})


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_differs_is_refused_and_leaves_no_file(fmt, loaded, images, tmp_path, monkeypatch):
    """The exporter writes the wrong model (here the teacher): the check catches it and nothing stays."""
    pruned_type = type(loaded.pruned)
    if fmt == "onnx":
        real = onnx_graph.onnx_bytes
        monkeypatch.setattr(onnx_graph, "onnx_bytes", lambda model, *a, **k: real(loaded.teacher, *a, **k))
    else:
        real_trace = torch.jit.trace
        monkeypatch.setattr(torch.jit, "trace", lambda model, *a, **k: real_trace(loaded.teacher, *a, **k))
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ModelError, match="differs from PyTorch by .* nothing was written"):
        _export(loaded, images, folder / f"model.{fmt}", fmt)
    assert list(folder.iterdir()) == [], "no file, and no temporary file either"
    kept = folder / "model.onnx"
    kept.write_bytes(b"an earlier export")
    with pytest.raises(ModelError):
        _export(loaded, images, kept, fmt, dynamic_batch=False)
    assert kept.read_bytes() == b"an earlier export" and list(folder.iterdir()) == [kept]
    assert type(loaded.pruned) is pruned_type


def test_export_run_checks_on_the_tiny_set_else_on_random_inputs(run_dir, loaded, tmp_path):
    result = export.export_run(run_dir, tmp_path / "m.safetensors", "safetensors")
    assert result.inputs == "8 tiny-set images from tiny_set.txt" and result.max_abs_diff == 0.0
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "tiny_set.txt").unlink()
    inputs, label = export.check_inputs(copy, loaded.pruned)
    assert label == "8 random normal inputs (no tiny_set.txt in the run folder)" and inputs.shape == (8, 3, 32, 32)
    (copy / "tiny_set.txt").write_text("# header only\n/nowhere/a.jpg\t1\n/nowhere/b.jpg\t2\n")
    _, label = export.check_inputs(copy, loaded.pruned)
    assert label == "8 random normal inputs (the images tiny_set.txt lists cannot be read)"


def test_load_gives_the_run_folders_pruned_model(run_dir, loaded, images):
    model = dfpractise.load(run_dir)
    assert not model.training
    assert spec_of(model) == spec_of(loaded.teacher)
    assert torch.equal(_pytorch(model, images), _pytorch(loaded.pruned, images))


def test_load_refuses_a_file_without_a_manifest(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match="holds no dfpractise manifest"):
        dfpractise.load(path)


def test_export_options_are_checked_before_any_work(loaded, images, tmp_path):
    with pytest.raises(ConfigError, match="--opset is for ONNX"):
        _export(loaded, images, tmp_path / "m.pt", "torchscript", opset=17)
    with pytest.raises(ConfigError, match="for --static-batch exports"):
        _export(loaded, images, tmp_path / "m.onnx", "onnx", batch_size=4)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export.export_run(tmp_path / "no-run", tmp_path / "m.tflite", "tflite")
    with pytest.raises(ConfigError, match="needs the manifest"):
        export.export_model(loaded.pruned, tmp_path / "m.safetensors", "safetensors")
    assert list(tmp_path.iterdir()) == []


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_export_json(run_dir, tmp_path):
    out = tmp_path / "m.onnx"
    result = _invoke("export", run_dir, "--format", "onnx", "--out", out, "--static-batch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["batch_sizes"] == [1] and data["tolerance"] == 1e-4
    assert data["max_abs_diff"] <= data["allowed"] and data["runtime"].startswith("onnxruntime")


def test_cli_latency_on_onnxruntime_reports_the_backend(run_dir):
    result = _invoke("latency", run_dir, "--backend", "onnxruntime", "--repeats", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "onnxruntime" and data["teacher_ms"] > 0 and data["pruned_ms"] > 0
    assert data["batch_size"] == 8 and data["resolution"] == 32
    torch_run = json.loads(_invoke("latency", run_dir, "--repeats", "1", "--json").stdout)
    assert torch_run["backend"] == "torch", "default: the run's backend"


@pytest.mark.parametrize("command", [
    ["export", "{run}", "--format", "onnx", "--out", "{tmp}/m.onnx"],
    ["latency", "{run}", "--backend", "onnxruntime", "--json"],
])
def test_without_onnxruntime_one_line_says_how_to_install_it(command, run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    result = _invoke(*[part.format(run=run_dir, tmp=tmp_path) for part in command])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dfpractise[export]'" in lines[0] and "onnxruntime" in lines[0]
    assert list(tmp_path.iterdir()) == []
