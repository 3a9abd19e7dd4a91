"""An interrupted run resumes from its run folder and finishes with nothing lost."""

import json

import pytest

from dfpractise.engine import compress
from dfpractise.progress import Progress
from dfpractise.runs import load_run

from conftest import interrupting_progress, tiny_run_config


def _config(assets_dir):
    return tiny_run_config(assets_dir, seed=4, **{
        "data.num_images": 16, "latency.batch_size": 8, "latency.repeats": 2, "latency.warmup": 1,
        "scoring.batch_size": 8, "recovery.iterations": 8, "recovery.batch_size": 8, "recovery.checkpoint_every": 100})


def test_interrupted_recovery_resumes_from_the_run_folder(tmp_path, assets_dir):
    out = tmp_path / "run"
    config = _config(assets_dir)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=interrupting_progress("Recovering", 3))
    assert (out / "recovery.ckpt").exists() and (out / "selection.json").exists()
    assert not (out / "report.json").exists()
    saved_selection = (out / "selection.json").read_text()

    result = compress(config, out, resume=True)
    assert result.report["recovery"]["resumed_from"] == 3
    assert (out / "selection.json").read_text() == saved_selection, "finished phases are not redone"
    assert not (out / "recovery.ckpt").exists()
    rebuilt = load_run(out)
    assert rebuilt.manifest["dropped"] == result.dropped
    for key, value in result.pruned.state_dict().items():
        assert rebuilt.pruned.state_dict()[key].equal(value.cpu())


def test_resume_refuses_different_settings(tmp_path, assets_dir):
    out = tmp_path / "run"
    config = _config(assets_dir)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=interrupting_progress("Recovering", 2))
    config.seed = 5
    from dfpractise.errors import ConfigError

    with pytest.raises(ConfigError, match="different settings"):
        compress(config, out, resume=True)


def test_each_finished_phase_is_read_back_not_redone(tmp_path, assets_dir):
    """Interrupted while scoring: the latency phase is kept and read back on resume, not timed again."""
    out = tmp_path / "run"
    config = _config(assets_dir)
    config.latency.remeasure = True  # so that only the run folder, not the latency cache, can spare the timing
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=interrupting_progress("Scoring blocks", 1))
    assert (out / "latency.json").exists() and not (out / "scores.json").exists()
    saved_latency = (out / "latency.json").read_text()

    timed = []

    class Watching(Progress):
        def task(self, description, total):
            timed.append(description)
            return super().task(description, total)

    result = compress(config, out, resume=True, progress=Watching(quiet=True))
    assert "Timing blocks" not in timed and "Scoring blocks" in timed
    assert (out / "latency.json").read_text() == saved_latency
    assert [b["name"] for b in result.report["blocks"]] == [b["name"] for b in json.loads(saved_latency)["blocks"]]


def test_a_damaged_phase_file_is_one_clear_error(tmp_path, assets_dir):
    out = tmp_path / "run"
    config = _config(assets_dir)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=interrupting_progress("Recovering", 2))
    (out / "selection.json").write_text('{"blocks": ["layer1.1"]}')  # not a selection
    from dfpractise.errors import DataError

    with pytest.raises(DataError, match=r"selection\.json is damaged or was written by another version"):
        compress(config, out, resume=True)
