"""The latency table: kept per (architecture, timing, machine), reused by the next run, passed
in by a user, refused when it describes another model; and the reruns it makes reproducible."""

import json

import pytest
import torch
from click.testing import CliRunner

from dfpractise.cli import main
from dfpractise.engine import compress
from dfpractise.errors import ConfigError
from dfpractise.latency_table import architecture_fingerprint
from dfpractise.models.reference import load_model
from dfpractise.progress import Progress
from dfpractise.runs import load_run

from conftest import tiny_run_config


class Watching(Progress):
    """Records the progress tasks a run starts (timing shows as 'Timing blocks')."""

    def __init__(self):
        super().__init__(quiet=True)
        self.tasks = []

    def task(self, description, total):
        self.tasks.append(description)
        return super().task(description, total)


def _config(assets_dir, **latency):
    return tiny_run_config(assets_dir, seed=7, **{"recovery.iterations": 4, **{f"latency.{k}": v for k, v in latency.items()}})


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPRACTISE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_second_run_reuses_the_table_and_gives_the_same_blocks_and_weights(tmp_path, assets_dir, own_cache):
    """The same command twice gives the same model: on a noisy machine the timing alone used to
    change the blocks dropped (scores divide by ΔLat, even with a count target)."""
    first_progress, second_progress = Watching(), Watching()
    first = compress(_config(assets_dir), tmp_path / "one", progress=first_progress)
    second = compress(_config(assets_dir), tmp_path / "two", progress=second_progress)
    assert "Timing blocks" in first_progress.tasks and "Timing blocks" not in second_progress.tasks
    assert len(list((own_cache / "latency").glob("*.json"))) == 1
    assert second.dropped == first.dropped
    assert (tmp_path / "one" / "latency.json").read_text() == (tmp_path / "two" / "latency.json").read_text()
    again = load_run(tmp_path / "two").pruned.state_dict()
    for key, value in load_run(tmp_path / "one").pruned.state_dict().items():
        assert torch.equal(again[key], value), key


def test_remeasure_times_again_and_replaces_the_table(tmp_path, assets_dir, own_cache):
    compress(_config(assets_dir), tmp_path / "one")
    table = next((own_cache / "latency").glob("*.json"))
    before = json.loads(table.read_text())
    progress = Watching()
    compress(_config(assets_dir, remeasure=True), tmp_path / "two", progress=progress)
    assert "Timing blocks" in progress.tasks
    after = json.loads(table.read_text())
    assert after["key"] == before["key"]
    assert after["profile"] == json.loads((tmp_path / "two" / "latency.json").read_text())


def test_another_timing_is_another_table(tmp_path, assets_dir, own_cache):
    compress(_config(assets_dir), tmp_path / "one")
    progress = Watching()
    compress(_config(assets_dir, batch_size=2), tmp_path / "two", progress=progress)
    assert "Timing blocks" in progress.tasks
    assert len(list((own_cache / "latency").glob("*.json"))) == 2


def test_a_users_table_is_written_when_missing_then_read(tmp_path, assets_dir, own_cache):
    table = tmp_path / "deploy-latency.json"
    compress(_config(assets_dir, table=str(table)), tmp_path / "one")
    saved = json.loads(table.read_text())
    assert saved["format"] == "dfpractise-latency-table/1" and saved["key"]["batch_size"] == 4
    # a table measured elsewhere: other machine facts are fine, its numbers are what the run uses
    saved["key"]["cpu"] = "the deployment machine"
    saved["profile"]["blocks"][0]["delta_lat"] = 42.0
    table.write_text(json.dumps(saved))
    progress = Watching()
    result = compress(_config(assets_dir, table=str(table)), tmp_path / "two", progress=progress)
    assert "Timing blocks" not in progress.tasks
    assert json.loads((tmp_path / "two" / "latency.json").read_text())["blocks"][0]["delta_lat"] == 42.0
    assert result.report["blocks"][0]["delta_lat"] == 42.0


def test_a_table_of_another_model_or_batch_is_refused(tmp_path, assets_dir, own_cache):
    table = tmp_path / "t.json"
    compress(_config(assets_dir, table=str(table)), tmp_path / "one")
    with pytest.raises(ConfigError, match=r"does not describe this model's blocks: batch_size \(4 there, 2 here\)"):
        compress(_config(assets_dir, table=str(table), batch_size=2), tmp_path / "two")
    other = _config(assets_dir, table=str(table))
    other.model, other.weights = "cifar10_resnet32", "none"
    with pytest.raises(ConfigError, match="architecture"):
        compress(other, tmp_path / "three")
    table.write_text("{}")
    result = CliRunner().invoke(main, ["run", "--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20",
                                       "--data", str(assets_dir / "cifar10-jpeg" / "train"), "--num-images", "12",
                                       "--drop", "1", "--latency-table", str(table), "--out", str(tmp_path / "four"),
                                       "--quiet"])
    assert result.exit_code == 2 and "is not a dfpractise-latency-table/1 file" in result.output
    assert "Traceback" not in result.output


def test_the_fingerprint_is_the_architecture_not_the_weights():
    a, _, _ = load_model("cifar10_resnet20", "none")
    torch.manual_seed(1)
    b, _, _ = load_model("cifar10_resnet20", "none")
    c, _, _ = load_model("cifar10_resnet32", "none")
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    assert architecture_fingerprint(a) == architecture_fingerprint(b) != architecture_fingerprint(c)


def test_blocks_writes_the_table_a_run_then_reads(tmp_path, assets_dir, own_cache):
    """Measure on the deployment machine with ``dfpractise blocks``, carry the file, run anywhere."""
    table = tmp_path / "measured-there.json"
    result = CliRunner().invoke(main, ["blocks", "--model", "cifar10_resnet20", "--batch-size", "4", "--repeats", "1",
                                       "--latency-table", str(table), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    progress = Watching()
    config = _config(assets_dir, table=str(table))
    compress(config, tmp_path / "run", progress=progress)
    assert "Timing blocks" not in progress.tasks
    used = json.loads((tmp_path / "run" / "latency.json").read_text())
    assert [round(b["delta_lat"], 3) for b in used["blocks"]] == [b["delta_lat"] for b in listed["blocks"]]
