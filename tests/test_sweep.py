"""`dfpractise sweep`: one timing and scoring, one run folder per target, a table and a picture."""

import json
import shutil
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from conftest import interrupting_task, tiny_run_config
from dfpractise.cli import main, spread_list_options
from dfpractise.errors import ConfigError
from dfpractise.latency import torch_threads
from dfpractise.progress import Progress
from dfpractise.recipe import save_recipe
from dfpractise.runs import load_run
from dfpractise.sweep import baseline_goal, check_targets, load_sweep, sweep, target_folder

TARGETS = [0.2, 0.1, 0.99]  # out of order on purpose; 0.99 is beyond what dropping every block cuts


class Watching(Progress):
    """A quiet progress that records every task, and sends SIGINT (as Ctrl-C) at step ``step`` of
    the ``nth`` recovery when asked."""

    def __init__(self, interrupt: tuple[int, int] | None = None):
        super().__init__(quiet=True)
        self.tasks: list[str] = []
        self.interrupt = interrupt

    @contextmanager
    def task(self, description, total):
        self.tasks.append(description)
        recoveries = sum(t.startswith("Recovering") for t in self.tasks)
        with super().task(description, total) as inner:
            if self.interrupt is None or not description.startswith("Recovering") or recoveries != self.interrupt[0]:
                yield inner
                return
            yield interrupting_task(inner, self.interrupt[1])

    def count(self, prefix: str) -> int:
        return sum(t.startswith(prefix) for t in self.tasks)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine two threads make each forward many times slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory, assets_dir):
    """A small labelled folder: the first 2 validation images of each class."""
    folder = tmp_path_factory.mktemp("sweep-val")
    for class_dir in sorted((assets_dir / "cifar10-jpeg" / "val").iterdir()):
        (folder / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:2]:
            shutil.copy(image, folder / class_dir.name / image.name)
    return folder


@pytest.fixture(scope="module")
def config(assets_dir, eval_folder):
    return tiny_run_config(assets_dir, **{
        "drop": None, "latency_reduction": 0.3, "seed": 1, "data.num_images": 16, "data.eval_path": str(eval_folder),
        "latency.repeats": 2, "latency.remeasure": True,  # only the sweep, not the latency cache, may spare a timing
        "recovery.iterations": 4, "recovery.checkpoint_every": 100,
    })


@pytest.fixture(scope="module")
def swept(tmp_path_factory, config):
    """A sweep interrupted in its second target's recovery, then the same call again (resumed)."""
    out = tmp_path_factory.mktemp("sweeps") / "sweep"
    first = Watching(interrupt=(2, 2))
    with pytest.raises(KeyboardInterrupt):
        sweep(config, TARGETS, out, progress=first)
    finished_first = (out / "target-0.10" / "report.json").read_text()
    second = Watching()
    result = sweep(config, TARGETS, out, progress=second)
    return {"out": out, "first": first, "second": second, "result": result, "finished_first": finished_first}


def test_blocks_are_timed_and_scored_once_for_all_targets(swept):
    first, second = swept["first"], swept["second"]
    assert first.count("Timing blocks") == 1 and first.count("Scoring blocks") == 1
    assert second.count("Timing blocks") == 0 and second.count("Scoring blocks") == 0
    assert first.count("Recovering") == 2  # the first target's, and the second's, interrupted


def test_resume_finishes_without_redoing_finished_targets(swept):
    out, second = swept["out"], swept["second"]
    assert second.count("Recovering") == 1, "only the interrupted target recovers again"
    assert (out / "target-0.10" / "report.json").read_text() == swept["finished_first"]
    report = json.loads((out / "target-0.20" / "report.json").read_text())
    assert 2 <= report["recovery"]["resumed_from"] < 4, "the interrupted recovery went on from its checkpoint"


def test_one_loadable_run_folder_per_target(swept):
    out, result = swept["out"], swept["result"]
    assert result.targets == [0.1, 0.2, 0.99]
    done = [p for p in result.practise if p.status == "done"]
    assert [p.target for p in done] == [0.1, 0.2]
    for point in done:
        loaded = load_run(out / point.folder)
        assert loaded.manifest["dropped"] == point.dropped and point.dropped
        assert loaded.report["target"]["latency_reduction"] == point.target
        assert point.measured_cut == loaded.report["latency"]["reduction"]
        assert point.predicted_cut > 0 and point.selection_cut >= point.target  # cuts: noise may take them anywhere
        assert point.teacher_top1 > 50 and point.top1 is not None and point.recovery_seconds >= 0


def test_an_unreachable_target_is_a_row_not_a_failed_sweep(swept):
    (unreachable,) = [p for p in swept["result"].practise if p.target == 0.99]
    assert unreachable.status == "unreachable" and "out of reach" in unreachable.reason


def test_sweep_json_and_png_are_written(swept):
    out = swept["out"]
    record = load_sweep(out)
    assert record["targets"] == [0.1, 0.2, 0.99] and record["baseline"] is None
    assert [r["status"] for r in record["practise"]] == ["done", "done", "unreachable"]
    assert [r["folder"] for r in record["practise"]] == ["target-0.10", "target-0.20", "target-0.99"]
    assert record["teacher"]["top1"] == record["practise"][0]["teacher_top1"]
    assert record["settings"]["latency_reduction"] is None and record["plot"] == "sweep.png"
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _copy(swept, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(swept["out"], out)
    return out


def test_a_finished_sweep_is_reused_and_other_settings_are_refused(swept, config, tmp_path):
    out = _copy(swept, tmp_path)
    again = Watching()
    result = sweep(config, [0.1], out, progress=again)
    assert again.tasks == [] and [p.status for p in result.practise] == ["done"]
    with pytest.raises(ConfigError, match="other settings \\(seed differs\\)"):
        sweep(config.replace(seed=2), [0.1], out)


def test_the_cli_prints_the_table_and_the_json(swept, config, tmp_path):
    out = _copy(swept, tmp_path)
    recipe = save_recipe(config, tmp_path / "recipe.yaml")
    result = CliRunner().invoke(main, ["sweep", "--recipe", str(recipe), "--targets", "0.2", "0.1", "--out",
                                       str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert [r["target"] for r in record["practise"]] == [0.1, 0.2]
    table = CliRunner().invoke(main, ["sweep", "--recipe", str(recipe), "--targets", "0.1", "--out", str(out)],
                               env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "PRACTISE" in table.stdout and "teacher" in table.stdout


def test_baseline_filter_pruning_adds_its_rows(swept, config, tmp_path, monkeypatch):
    monkeypatch.setattr("dfpractise.sweep.BASELINE_ROUND_TO", (None,))  # one ratio search, not two
    out = _copy(swept, tmp_path)
    watching = Watching()
    result = sweep(config, [0.1], out, baseline="filter-pruning", progress=watching)
    assert watching.count("Scoring blocks") == 0 and watching.count("Recovering") == 1  # the baseline's only
    (practise,), (filtered,) = result.practise, result.baseline_points
    assert filtered.status == "done" and filtered.method == "filter-pruning"
    assert filtered.details["matched_to"] == baseline_goal(practise) and 0 < filtered.details["ratio"] < 1
    assert filtered.top1 is not None and filtered.measured_cut is not None
    folder = out / filtered.folder
    assert {"search.json", "model.safetensors", "result.json"} <= {p.name for p in folder.iterdir()}
    record = load_sweep(out)
    assert record["baseline"]["method"] == "filter-pruning" and len(record["baseline"]["rows"]) == 1
    again = Watching()
    sweep(config, [0.1], out, baseline="filter-pruning", progress=again)
    assert again.tasks == [], "a finished baseline row is reused"


@pytest.mark.parametrize("targets, message", [
    (["0.2", "1.5"], "sweep targets are latency cuts between 0 and 1 (e.g. 0.3), got 1.5"),
    (["0.2", "-0.1"], "got -0.1"),
    (["0.2", "0.20"], "sweep target 0.2 is given twice"),
    (["0"], "got 0.0"),
    (["fast"], "'fast' is not a valid float"),
])
def test_bad_targets_are_one_line(tmp_path, targets, message):
    result = CliRunner().invoke(main, ["sweep", "--targets", *targets, "--out", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_targets_are_checked_sorted_and_named():
    assert check_targets([0.3, 0.1, 0.2]) == [0.1, 0.2, 0.3]
    assert target_folder(0.1) == "target-0.10" and target_folder(0.125) == "target-0.125"
    for bad in ([], [1.0], [float("nan")], [True]):
        with pytest.raises(ConfigError):
            check_targets(bad)
    assert spread_list_options(["--targets", "0.1", "0.2", "--out", "d"], ("--targets",)) == [
        "--targets", "0.1", "--targets", "0.2", "--out", "d"]
    assert spread_list_options(["--targets", "--out", "d"], ("--targets",)) == ["--targets", "--out", "d"]
    assert spread_list_options(["--targets=0.1", "0.2"], ("--targets",)) == ["--targets=0.1", "--targets", "0.2"]


def test_the_benchmark_section_shows_the_sweep_and_redraws_its_plot(swept, tmp_path):
    from benchmarks import sweep_report

    record = {**swept["result"].to_json(), "tiny_set": "real500", "wall_seconds": 60.0, "date": "2026-12-01",
              "machine": "test box", "commit": "abc1234", "torch": "2.x"}
    text = "\n".join(sweep_report.section({"sweeps": {"real500-s1-it4": record}}, tmp_path, tmp_path))
    first = record["practise"][0]
    assert f"| 10% | PRACTISE | {len(first['dropped'])} |" in text
    assert f"{100 * first['measured_cut']:.1f}%" in text and "| 99% | PRACTISE | unreachable |" in text
    assert (tmp_path / "sweep-real500-s1-it4.png").read_bytes()[:4] == b"\x89PNG"
    assert "](sweep-real500-s1-it4.png)" in text
    assert "4 recovery iterations (mir-stages with mixup)" in text, "the defaults' recovery, with auto mix resolved"
    with_command = {**record, "command": "python -m benchmarks.sweep --targets 0.1"}
    text = "\n".join(sweep_report.section({"sweeps": {"real500-s1-it4": with_command}}, tmp_path, tmp_path))
    assert "Command: `python -m benchmarks.sweep --targets 0.1`." in text
