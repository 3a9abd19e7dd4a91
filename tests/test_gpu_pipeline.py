"""The GPU pipeline benchmark's pieces that need no GPU: block sampling, extrapolation, BN
calibration and its BENCHMARKS.md section."""

from __future__ import annotations

import torch

from benchmarks import gpu_report
from benchmarks.gpu_pipeline import calibrate_batchnorm, extrapolate, one_per_stage
from dfpractise.models import create_model
from dfpractise.models.blocks import find_blocks


def _blocks():
    model = create_model("cifar10_resnet20")
    return find_blocks(model, model.model_spec.input_size)


def test_one_block_per_stage_from_the_middle():
    blocks = _blocks()
    picked = one_per_stage(blocks)
    assert sorted(b.stage for b in picked) == sorted({b.stage for b in blocks})
    for block in picked:
        members = [b.name for b in blocks if b.stage == block.stage]
        assert block.name == members[len(members) // 2]


def test_extrapolation_charges_each_unfitted_block_its_stages_mean():
    blocks = _blocks()
    fitted = one_per_stage(blocks)
    seconds = {b.name: float(10 * b.stage) for b in fitted}
    expected = sum(10.0 * b.stage for b in blocks)
    assert extrapolate(seconds, blocks) == expected
    everything = {b.name: 1.0 + i for i, b in enumerate(blocks)}
    assert extrapolate(everything, blocks) == sum(everything.values())


def test_batchnorm_calibration_takes_the_statistics_of_the_tiny_set():
    torch.manual_seed(0)
    model = create_model("resnet18")
    images = torch.rand(8, 3, 64, 64)
    cfg = model.model_spec
    x = (images - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    calibrate_batchnorm(model, images, 4, torch.device("cpu"))
    with torch.no_grad():
        stem = model.conv1(x)
    # the first BatchNorm's running mean is the mean of what it saw over both batches
    torch.testing.assert_close(model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        features = model.forward_features(x)
    assert features.pow(2).mean().item() < 10  # a trained network's scale, not a random one's


def _run(extrapolated: bool = False) -> dict:
    return {
        "model": "resnet34", "num_images": 256, "target": 0.4, "batch_size": 64, "resolution": 224,
        "recovery_iterations": 2000, "device": "cuda", "gpu": "Test GPU", "torch": "2.x", "cuda": "13.0",
        "date": "2026-11-26", "commit": "abc1234",
        "pipeline": {"phases": {"latency": 2.73, "scoring": 3.7, "recovery": 44.95, "total": 52.5},
                     "teacher_ms": 5.426, "pruned_ms": 3.161, "reduction": 0.417, "reduction_spread": [0.41, 0.42],
                     "speedup": 1.716, "teacher_macs": 3.66e9, "pruned_macs": 1.58e9, "dropped": ["layer1.1", "layer3.2"]},
        "scoring": {"cheap": {"seconds": 4.1}, "reference": {"seconds": 82.2, "extrapolated": extrapolated},
                    "speedup": 20.05, **({} if extrapolated else {"agreement": {"spearman": 0.95}})},
    }


def test_gpu_section_shows_every_run_with_its_gpu():
    lines = gpu_report.section({"runs": [_run(), _run(extrapolated=True)]})
    text = "\n".join(lines)
    assert "GPU: Test GPU." in text
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    assert "| 2.7 | 3.7 | 0.0 | 45.0 | 0.0 | 52.5 | 5.43 / 3.16 | 41.7 [41.0, 42.0] | 1.72x | 3.66 / 1.58 |" in rows[0]
    assert rows[0].endswith("| 4.1 / 82.2 | 20.1x | 0.950 |")
    assert rows[1].endswith("| 4.1 / 82.2 (extrapolated) | 20.1x | — |")
    assert "- run 1: layer1.1, layer3.2" in text
    assert gpu_report.section({}) == []
