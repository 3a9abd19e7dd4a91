"""Trials: the selection and its alternatives recovered briefly, the least held-back error kept."""

import json

import pytest

from dfpractise.selection import MeasuredCut, Selection
from dfpractise.trials import Trial, Trials, partial_record, try_sets


def _selection(blocks, cut=0.34):
    return Selection(list(blocks), MeasuredCut(cut, (cut - 0.01, cut + 0.01), list(blocks)), 0.33,
                     [{"blocks": list(blocks), "predicted": 33.0, "measured": 100 * cut, "rounds": 2}])


def _fakes(cuts, errors):
    measured, judged = [], []

    def measure(blocks, rounds=1):
        measured.append((tuple(blocks), rounds))
        cut = cuts[tuple(blocks)]
        return MeasuredCut(cut, (cut, cut), list(blocks))

    def judge(blocks, description):
        judged.append((tuple(blocks), description))
        return errors[tuple(blocks)]

    return measure, judge, measured, judged


def test_the_least_held_back_error_is_kept_and_a_short_cut_is_not_tried():
    selected = _selection(["a", "b", "c"])
    cuts = {("a", "b", "d"): 0.38, ("b", "c", "d"): 0.29}
    errors = {("a", "b", "c"): 0.40, ("a", "b", "d"): 0.35, ("b", "c", "d"): 0.10}
    measure, judge, measured, judged = _fakes(cuts, errors)
    trials = try_sets(selected, [["a", "b", "d"], ["b", "c", "d"]], measure, judge, goal_percent=31.0)
    assert trials.chosen == ["a", "b", "d"]
    # the selection's own cut is not measured again; the others are, with the longer timing
    assert measured == [(("a", "b", "d"), 2), (("b", "c", "d"), 2), (("a", "b", "d"), 2)]  # the last confirms
    assert [j[0] for j in judged] == [("a", "b", "c"), ("a", "b", "d")]  # 29% < 31%: not recovered
    assert judged[1][1] == "Trying set 2/2"
    assert [t.error for t in trials.trials] == [0.40, 0.35, None]
    kept = trials.selection(selected)
    assert kept.dropped == ["a", "b", "d"] and kept.measured.reduction == 0.38
    # the selection's own reading, then each trial's: a+b+d twice (found, then confirmed)
    assert [r["blocks"] for r in kept.readings] == [["a", "b", "c"], ["a", "b", "d"], ["a", "b", "d"], ["b", "c", "d"]]


def test_on_a_tie_the_smaller_cut_wins_and_the_selection_keeps_its_own_record():
    selected = _selection(["a", "b", "c"], cut=0.36)
    measure, judge, _, _ = _fakes({("a", "d"): 0.33}, {("a", "b", "c"): 0.2, ("a", "d"): 0.2})
    trials = try_sets(selected, [["a", "d"]], measure, judge, goal_percent=31.0)
    assert trials.chosen == ["a", "d"]
    measure, judge, _, _ = _fakes({("a", "d"): 0.40}, {("a", "b", "c"): 0.2, ("a", "d"): 0.2})
    trials = try_sets(selected, [["a", "d"]], measure, judge, goal_percent=31.0)
    assert trials.chosen == ["a", "b", "c"]
    kept = trials.selection(selected)
    assert kept.measured is selected.measured and kept.predicted == selected.predicted


def test_finished_trials_are_not_run_again_and_each_is_saved_as_it_ends(tmp_path):
    selected = _selection(["a", "b"])
    cuts = {("a", "c"): 0.35, ("b", "c"): 0.36}
    errors = {("a", "b"): 0.3, ("a", "c"): 0.2, ("b", "c"): 0.25}
    done, save = partial_record(tmp_path, resume=False)
    assert done == []
    measure, judge, measured, judged = _fakes(cuts, errors)
    saved = []

    def save_and_stop(trials):
        save(trials)
        saved.append(sum(t.error is not None for t in trials))
        if saved[-1] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try_sets(selected, [["a", "c"], ["b", "c"]], measure, judge, 31.0, save=save_and_stop)
    assert saved == [0, 1, 2] and len(judged) == 2  # every cut first, then each trial as it ends
    assert partial_record(tmp_path, resume=False)[0] == []  # a fresh run does not read an old record
    done, save = partial_record(tmp_path, resume=True)
    assert [t.blocks for t in done] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert [t.error for t in done] == [0.3, 0.2, None]
    measure, judge, measured, judged = _fakes(cuts, errors)
    trials = try_sets(selected, [["a", "c"], ["b", "c"]], measure, judge, 31.0, done=done, save=save)
    # nothing measured or recovered again; the kept set's cut is confirmed by a second measurement
    assert measured == [(("a", "c"), 2)] and [j[0] for j in judged] == [("b", "c")]
    assert trials.chosen == ["a", "c"] and len(trials.trials) == 3
    assert Trials.from_json(json.loads(json.dumps(trials.to_json()))) == trials


def test_with_no_other_set_at_the_target_the_selection_is_kept_untried():
    selected = _selection(["a", "b"])
    measure, judge, measured, judged = _fakes({("a", "c"): 0.25}, {})
    trials = try_sets(selected, [["a", "c"]], measure, judge, 31.0)
    assert trials.chosen == ["a", "b"] and judged == [] and len(measured) == 1
    assert trials.selection(selected).dropped == ["a", "b"]
    assert try_sets(selected, [], measure, judge, 31.0).chosen == ["a", "b"] and judged == []


def test_a_damaged_record_is_one_clear_error(tmp_path):
    from dfpractise.errors import DataError

    (tmp_path / Trials.PARTIAL).write_text('{"trials": [{"blocks": 3}]}')
    with pytest.raises(DataError, match="delete it to redo the trials"):
        partial_record(tmp_path, resume=True)


def test_trials_need_a_latency_target():
    from dfpractise.config import RunConfig
    from dfpractise.errors import ConfigError

    config = RunConfig(latency_reduction=None, drop=2)
    config.trials.sets = 3
    with pytest.raises(ConfigError, match="needs a latency-reduction target"):
        config.validate()
    assert Trial(["a"], MeasuredCut(0.3, (0.3, 0.3), ["a"])).error is None


def _fake_cut(monkeypatch):
    """Every set cuts 36%, so every alternative reaches a 30% target whatever the blocks' timed
    savings (with a cut that grew with the set, a noisy timing could make a two-block set minimal,
    fall short and leave the test without its third trial)."""
    import dfpractise.engine as engine

    def cut_measure(model, timing, progress=None):
        def measure(blocks, rounds=1):
            return MeasuredCut(0.36, (0.35, 0.37), list(blocks))
        return measure

    monkeypatch.setattr(engine, "cut_measure", cut_measure)


def _recording_progress(interrupt_at=None):
    from contextlib import contextmanager

    from conftest import interrupting_task
    from dfpractise.progress import Progress

    class Recording(Progress):
        seen: list = []

        @contextmanager
        def task(self, description, total):
            self.seen.append(description)
            with super().task(description, total) as inner:
                if interrupt_at and description.startswith(interrupt_at[0]):
                    yield interrupting_task(inner, interrupt_at[1])
                else:
                    yield inner

    progress = Recording(quiet=True)
    progress.seen = []
    return progress


def test_a_run_with_trials_drops_the_set_they_kept_and_resumes_after_the_last_finished_trial(
        tmp_path, assets_dir, monkeypatch):
    from conftest import tiny_run_config
    from dfpractise.engine import compress

    _fake_cut(monkeypatch)
    config = tiny_run_config(assets_dir, drop=None, latency_reduction=0.3, **{
        "trials.sets": 3, "trials.iterations": 4, "trials.held_back": 0.25, "recovery.checkpoint_every": 0})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        compress(config, out, progress=_recording_progress(("Trying set 2", 2)))
    record = json.loads((out / Trials.PARTIAL).read_text())["trials"]
    assert len(record) == 3 and record[0]["error"] > 0  # every cut measured, the selection's trial finished
    assert [t["error"] for t in record[1:]] == [None, None]
    assert not (out / Trials.FILE).exists()

    progress = _recording_progress()
    result = compress(config, out, resume=True, progress=progress)
    trying = [d for d in progress.seen if d.startswith("Trying set")]
    assert trying == ["Trying set 2/3 (mir-stages)", "Trying set 3/3 (mir-stages)"]
    trials = Trials.from_json(json.loads((out / Trials.FILE).read_text()))
    assert trials.trials[0].error == record[0]["error"]
    assert len(trials.trials) == 3 and all(t.error is not None and t.error > 0 for t in trials.trials)
    best = min(trials.trials, key=lambda t: t.error)
    assert result.dropped == trials.chosen == best.blocks
    assert result.report["dropped"] == trials.chosen
    assert len({tuple(t.blocks) for t in trials.trials}) == 3  # three different sets, all at the target


def test_cli_trials_with_a_drop_count_is_one_line(tmp_path):
    from click.testing import CliRunner

    from dfpractise.cli import main

    result = CliRunner().invoke(main, ["run", "--model", "cifar10_resnet20", "--weights", "none", "--drop", "2",
                                       "--trials", "3", "--out", str(tmp_path / "run"),
                                       "--quiet"])
    assert result.exit_code == 2, result.output
    assert "needs a latency-reduction target" in result.output and result.output.strip().count("\n") == 0


def test_a_kept_set_whose_second_measurement_falls_short_gives_way_to_the_next():
    selected = _selection(["a", "b", "c"])
    readings = {("a", "d"): [0.32, 0.29], ("b", "d"): [0.33, 0.34]}

    def measure(blocks, rounds=1):
        cut = readings[tuple(blocks)].pop(0)
        return MeasuredCut(cut, (cut, cut), list(blocks))

    errors = {("a", "b", "c"): 0.5, ("a", "d"): 0.1, ("b", "d"): 0.2}
    trials = try_sets(selected, [["a", "d"], ["b", "d"]], measure, lambda blocks, _: errors[tuple(blocks)], 31.0)
    assert trials.chosen == ["b", "d"]  # a+d read 32% then 29%: not kept
    kept = trials.selection(selected)
    assert kept.measured.reduction == 0.34  # the confirming reading
    assert [r["measured"] for r in kept.readings[1:]] == [32.0, 29.0, 33.0, 34.0]
    readings.update({("a", "d"): [0.32, 0.29], ("b", "d"): [0.33, 0.30]})
    assert try_sets(selected, [["a", "d"], ["b", "d"]], measure, lambda blocks, _: errors[tuple(blocks)],
                    31.0).chosen == ["a", "b", "c"]  # neither confirmed: the selection stays
