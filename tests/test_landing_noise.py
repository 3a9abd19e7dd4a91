"""The landing-under-noise benchmark: it reads grid run folders, replays an earlier commit's
selection beside this tree's, and counts landings the way the engine grid does."""

from __future__ import annotations

import json

import pytest

from benchmarks import landing_noise
from dfpractise import selection


def _run_folder(root, name, target, deltas, costs):
    folder = root / name
    folder.mkdir()
    (folder / "recipe.yaml").write_text(f"latency_reduction: {target}\n")
    blocks = [{"name": f"b{i}", "stage": 0, "delta_lat": d, "delta_lat_raw": d} for i, d in enumerate(deltas)]
    (folder / "latency.json").write_text(json.dumps({"blocks": blocks, "all_dropped_cut_percent": sum(deltas)}))
    (folder / "scores.json").write_text(json.dumps({"costs": {f"b{i}": c for i, c in enumerate(costs)}}))
    return folder


def test_runs_with_a_target_are_read_and_a_count_only_run_is_left_out(tmp_path):
    _run_folder(tmp_path, "t30", 0.3, [2.0] * 30, [1.0] * 30)
    dropped = _run_folder(tmp_path, "drop3", 0.3, [2.0] * 30, [1.0] * 30)
    (dropped / "recipe.yaml").write_text("drop: 3\n")
    (tmp_path / "unfinished").mkdir()
    assert [t["run"] for t in landing_noise.load_tables(tmp_path)] == ["t30"]


def test_a_quiet_machine_lands_every_selection_and_a_noisy_one_misses_some(tmp_path):
    # 2% blocks: a set summing to 32% lies inside [30, 33] whatever the costs
    _run_folder(tmp_path, "t30", 0.3, [2.0] * 30, [0.1 * (i % 7 + 1) for i in range(30)])
    tables = landing_noise.load_tables(tmp_path)
    quiet = landing_noise.landing(selection, tables, sigma=0.0, busy=0.0, trials=3)
    assert quiet["inside"] == quiet["selections"] == 3 and quiet["readings_per_selection"] >= 2
    noisy = landing_noise.landing(selection, tables, sigma=0.2, busy=0.5, trials=20)
    assert noisy["inside"] < noisy["selections"] == noisy["inside"] + noisy["below"] + noisy["above"]
    assert landing_noise.landing(selection, tables, sigma=0.2, busy=0.5, trials=20) == noisy, "seeded draws"


def test_an_earlier_commits_selection_is_imported_beside_this_one():
    module = landing_noise.selection_at("HEAD")
    assert module is not selection and module.select_blocks is not selection.select_blocks
    scores = [module.BlockScore(f"b{i}", 0, i, 3.0, 0.1) for i in range(8)]
    chosen = module.select_blocks(scores, lambda b, rounds=1: module.MeasuredCut(0.03 * len(b), (0, 0), b),
                                  target=0.12, all_dropped_cut_percent=24.0, margin=0.0)
    assert len(chosen.dropped) == 4


def test_the_section_shows_both_selections_per_noise_level():
    row = {"inside": 9, "below": 0, "above": 1, "selections": 10, "readings_per_selection": 2.5}
    record = {"against": "abc1234", "commit": "def5678", "runs": ["a", "b"], "trials": 5, "date": "2026-12-05",
              "machine": "test box", "command": "python -m benchmarks.landing_noise runs --against abc1234",
              "levels": [{"sigma": 0.025, "busy": 0.1, "this tree": row, "abc1234": {**row, "inside": 7, "above": 3}}]}
    text = "\n".join(landing_noise.section(record))
    assert "| 2.5% | 10% | this tree | 9 of 10 (90.0%) | 0 | 1 | 2.5 |" in text
    assert "| 2.5% | 10% | abc1234 | 7 of 10 (70.0%) | 0 | 3 | 2.5 |" in text
    assert landing_noise.section({}) == []


def test_an_empty_runs_folder_is_said_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["landing_noise", str(tmp_path), "--against", "HEAD"])
    with pytest.raises(SystemExit, match="no finished runs"):
        landing_noise.main()
