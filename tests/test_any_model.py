"""Any model: one test over architecture families from torchvision and timm (random weights, 32 px),
in the style of timm's tests/test_models.py, and a user's own module from a file.

For each: units are discovered (whole blocks, and branches of transformer layers), a unit is
dropped and the network still computes the same output shape, dropping every block measurably
cuts latency, the manifest rebuilds the pruned model with identical outputs, and a few
iterations of scoring and recovery run.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from dfpractise.cli import main
from dfpractise.config import RecoveryConfig, ScoringConfig
from dfpractise.latency import Timing, compare_latency
from dfpractise.models.adapter import adapter_for, spec_of
from dfpractise.models.reference import load_model, reference_of
from dfpractise.recoverability import RecoverabilityCost, ScoringContext
from dfpractise.recovery import recover
from dfpractise.runs import load_run, make_manifest, save_model

pytest.importorskip("timm")

from benchmarks.any_model import TRANSFORMERS, families  # noqa: E402

ARCHITECTURES = families(32)  # the benchmark's families, at 32 px


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_family_discovers_drops_rebuilds_scores_and_recovers(name, tmp_path):
    torch.manual_seed(0)
    teacher, _, _ = load_model(name, "none", options=ARCHITECTURES[name], input_size=32)
    adapter = adapter_for(teacher)
    whole = [b for b in adapter.blocks if b.part is None]
    branches = [b for b in adapter.blocks if b.part is not None]
    assert whole, name
    assert bool(branches) == (name in TRANSFORMERS), [b.name for b in branches]
    assert [b.step for b in adapter.blocks] == sorted(b.step for b in adapter.blocks)
    x = torch.randn(2, 3, 32, 32)
    teacher.eval()
    with torch.no_grad():
        expected_shape = teacher(x).shape

    dropped = [whole[len(whole) // 2].name] + ([branches[0].name] if branches else [])
    pruned = adapter.drop(dropped).eval()
    with torch.no_grad():
        assert pruned(x).shape == expected_shape
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in teacher.parameters())

    fastest = adapter.drop([b.name for b in whole])
    comparison = compare_latency({"teacher": teacher, "pruned": fastest}, Timing(batch_size=2, resolution=32,
                                                                                 repeats=5, warmup=1))
    assert comparison.reduction("pruned", "teacher")[0] > 0.0

    spec = spec_of(teacher)
    save_model(tmp_path, pruned, teacher,
               make_manifest(name, spec, None, None, dropped, reference_of(teacher), adapter.options))
    rebuilt = load_run(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.pruned.eval()(x), pruned(x))

    images = torch.rand(8, 3, 32, 32)
    context = ScoringContext(
        teacher=teacher, blocks=adapter.check(dropped), delta_lat={}, images=images,
        augment=lambda t: torch.flip(t, dims=[3]), normalize=lambda t: (t - 0.5) / 0.25,
        config=ScoringConfig(iterations=2, batch_size=4, views=2), adapter=adapter,
    )
    costs = RecoverabilityCost()(context)
    assert set(costs) == set(dropped) and all(c == c and c >= 0 for c in costs.values())

    head = {n: p.clone() for n, p in pruned.named_parameters()
            if any(n.startswith(m + ".") for m in adapter.head_modules)}
    result = recover(pruned, teacher, images, RecoveryConfig(iterations=2, batch_size=4),
                     lambda t: t, lambda t: (t - 0.5) / 0.25, adapter=adapter)
    assert result.final_loss is not None and result.final_loss == result.final_loss
    assert all(torch.equal(p, head[n]) for n, p in pruned.named_parameters() if n in head), "MiR keeps the head"


USER_MODEL = '''
import torch
from torch import nn


class Mixer(nn.Module):
    """x + mlp(norm(x)) on tokens, the residual written in the forward of its container."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.layers = nn.ModuleList(Mixer(16) for _ in range(4))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(1))


def build(classes=10):
    return Net(classes)
'''


def test_a_users_module_from_a_file_runs_end_to_end_from_the_command_line(tmp_path, assets_dir):
    source = tmp_path / "my_net.py"
    source.write_text(textwrap.dedent(USER_MODEL))
    images, labelled = assets_dir / "imagenet-sample-256", assets_dir / "cifar10-jpeg" / "val"
    out = tmp_path / "run"
    runner = CliRunner()
    blocks = runner.invoke(main, ["blocks", "--model", f"{source}:build", "--input-size", "32", "--repeats", "2",
                                  "--batch-size", "4", "--json"])
    assert blocks.exit_code == 0, blocks.output
    assert [b["name"] for b in json.loads(blocks.stdout)["blocks"]] == ["layers.1", "layers.2", "layers.3"]
    run = runner.invoke(main, [
        "run", "--model", f"{source}:build", "--weights", "none", "--input-size", "32", "--source", "ood",
        "--data", str(images), "--num-images", "16", "--drop", "2", "--score-iterations", "2",
        "--recovery-iterations", "3", "--latency-repeats", "2", "--batch-size", "8", "--out", str(out), "--quiet",
    ])
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reference"]["kind"] == "factory" and manifest["reference"]["file_sha256"]
    assert len(manifest["dropped"]) == 2
    latency = runner.invoke(main, ["latency", str(out), "--json", "--repeats", "2"])
    assert latency.exit_code == 0, latency.output
    assert json.loads(latency.stdout)["batch_size"] == 8
    evaluated = runner.invoke(main, ["evaluate", str(out), "--data", str(labelled), "--batch-size", "500", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["count"] == 5000

    source.write_text(textwrap.dedent(USER_MODEL) + "\n# changed\n")
    changed = runner.invoke(main, ["latency", str(out), "--json"])
    assert changed.exit_code == 2 and "has changed since the run" in changed.stderr


@pytest.mark.parametrize("name, fragment", [
    ("shufflenet_v2_x0_5", "has no droppable residual block"),
    ("resnet35", "unknown model 'resnet35'"),
    ("timm/vit_tiny_patch16_2244", "timm has no model 'vit_tiny_patch16_2244'; did you mean"),
    ("nowhere/net.py:build", "model file nowhere/net.py does not exist"),
])
def test_models_that_cannot_be_used_are_one_line_errors(name, fragment):
    result = CliRunner().invoke(main, ["blocks", "--model", name, "--input-size", "32", "--repeats", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert fragment in result.stderr, result.stderr
