"""Report rendering, JSON files, and the environment summary."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from dfpractise.envinfo import env_table, environment_info
from dfpractise.errors import DFPractiseError
from dfpractise.report import (
    blocks_table,
    human_count,
    human_seconds,
    phases_table,
    print_report,
    read_json,
    summary_table,
    write_json,
)


def make_report(top1=(89.4, 88.1), top5=(99.6, 99.5)) -> dict:
    side = lambda acc1, acc5, ms, params, macs: {  # noqa: E731
        "top1": acc1, "top5": acc5, "latency_ms": ms, "params": params, "macs": macs,
    }
    return {
        "model": "cifar10_resnet56",
        "weights": "cifar10jpeg-resnet56",
        "source": "real",
        "num_images": 500,
        "seed": 1,
        "target": {"latency_reduction": 0.3, "drop": None},
        "dropped": ["layer1.2", "layer2.5"],
        "teacher": side(top1[0], top5[0], 41.25, 853_018, 125_485_706),
        "pruned": side(top1[1], top5[1], 28.6, 804_186, 88_000_000),
        "latency": {
            "reduction": 0.307, "reduction_spread": [0.29, 0.32], "speedup": 1.44,
            "batch_size": 64, "resolution": 32, "threads": 2, "device": "cpu", "repeats": 15,
        },
        "blocks": [
            {"name": "layer1.0", "stage": 1, "delta_lat": 3.41, "delta_lat_raw": 3.41, "clamped": False,
             "recoverability": 0.0123, "score": 0.0036, "dropped": False},
            {"name": "layer1.2", "stage": 1, "delta_lat": 0.1, "delta_lat_raw": -0.4, "clamped": True,
             "recoverability": None, "score": None, "dropped": True},
        ],
        "phases": {"latency": 12.5, "scoring": 70.0, "recovery": 300.0, "total": 400.0},
        "environment": {},
    }


def render(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_summary_shows_rows_and_numbers():
    text = render(summary_table(make_report()))
    for needle in ("Top-1", "Top-5", "Latency (ms, batch 64)", "Speed-up", "Params", "MACs"):
        assert needle in text
    assert "1.44×" in text and "89.40%" in text and "-1.3 pt" in text
    assert "-30.7%" in text and "125.5 M" in text and "0.85 M" in text
    assert "layer1.2, layer2.5" in text


def test_missing_accuracy_renders_as_dash():
    text = render(summary_table(make_report(top1=(None, None), top5=(None, None))))
    top1_line = next(line for line in text.splitlines() if "Top-1" in line)
    assert top1_line.count("—") == 3


def test_fraction_accuracy_is_shown_in_percent():
    text = render(summary_table(make_report(top1=(0.894, 0.881), top5=(0.996, 0.995))))
    assert "89.40%" in text and "-1.3 pt" in text


def test_blocks_table_marks_dropped_and_clamped():
    text = render(blocks_table(make_report()["blocks"]))
    assert "ΔLat %" in text and "3.41" in text and "0.0123" in text
    dropped_line = next(line for line in text.splitlines() if "layer1.2" in line)
    assert "✓" in dropped_line and "0.10*" in dropped_line and "—" in dropped_line
    assert "clamped" in text


def test_phases_table_has_total_and_shares():
    text = render(phases_table(make_report()["phases"]))
    assert "total" in text and "6 min 40 s" in text and "75%" in text


def test_print_report_prints_all_three_tables():
    console = Console(record=True, width=120)
    print_report(make_report(), console)
    text = console.export_text()
    assert "Speed-up" in text and "layer1.0" in text and "recovery" in text


@pytest.mark.parametrize(
    "n, expected",
    [(None, "—"), (950, "950"), (272_474, "0.27 M"), (25_557_032, "25.6 M"), (4_100_000_000, "4.10 G")],
)
def test_human_count(n, expected):
    assert human_count(n) == expected


def test_human_seconds():
    assert (human_seconds(12.34), human_seconds(245), human_seconds(3720)) == ("12.3 s", "4 min 05 s", "1 h 02 min")


def test_write_json_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "run" / "report.json"
    report = make_report()
    write_json(report, path)
    write_json(report, path)  # overwrite in place
    assert read_json(path) == report
    assert path.read_text(encoding="utf-8").startswith('{\n  "model"')
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left


def test_write_json_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "report.json"
    write_json({"ok": 1}, path)
    with pytest.raises(TypeError):
        write_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(DFPractiseError, match="missing.json does not exist"):
        read_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  oops\n}")
    with pytest.raises(DFPractiseError, match="broken.json, line 2"):
        read_json(broken)


def test_environment_info_has_versions_and_table():
    import torch

    info = environment_info()
    assert info["torch"] == torch.__version__.split("+")[0] or info["torch"] == torch.__version__
    assert info["python"] and info["cpu_count"] >= 1 and isinstance(info["cuda_available"], bool)
    assert "DFPRACTISE_ASSETS" in info and "DFPRACTISE_CACHE" in info
    json.dumps(info)  # JSON-ready, so it can go into report.json
    text = render(env_table(info))
    assert "torch" in text and info["torch"] in text


def test_blocks_table_leaves_out_columns_no_block_has():
    rows = [{"name": "layer2.1", "stage": 2, "delta_lat": 2.5, "delta_lat_raw": 2.5,
             "spread": [2.1, 2.9], "clamped": False}]
    text = render(blocks_table(rows, title="Blocks"))
    assert "IQR %" in text and "2.10 to 2.90" in text
    assert "recoverability" not in text and "dropped" not in text
