"""The run report: JSON on disk, rich tables on screen.

The engine writes ``report.json`` (a plain dict, schema in README.md); this module only reads that
dict, so the CLI can print the report of any run folder, old or new, without the engine. Numbers
are shown the way people compare models: accuracy in %, change in points, sizes in M/G.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rich.console import Console
from rich.table import Table

from .errors import DFPractiseError
from synthesizers.files import atomic_write, write_text_atomic

if TYPE_CHECKING:
    import torch

DASH = "—"


# ---------------------------------------------------------------- JSON


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically: readers never see half a report.

    NaN and infinities (not JSON) are written as null, so every file stays valid JSON.
    """
    return write_text_atomic(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    """``value`` as JSON types only, non-finite numbers as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return _plain(_jsonable(value))


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or broken file is one user-facing line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DFPractiseError(f"{path} does not exist") from None
    except OSError as err:
        raise DFPractiseError(f"{path} cannot be read: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise DFPractiseError(f"{path}, line {err.lineno}: invalid JSON: {err.msg}") from None


def _jsonable(value: Any) -> Any:
    """Turn the odd types a run produces (tensors, NumPy values, paths, sets) into JSON."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------- tables


def summary_table(report: dict[str, Any]) -> Table:
    """Teacher vs pruned: accuracy, latency, speed-up, size, compute; with the change of each."""
    teacher, pruned = report.get("teacher", {}), report.get("pruned", {})
    latency = report.get("latency", {})
    table = Table(title=_summary_title(report), caption=_summary_caption(report))
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("change", justify="right")

    scale = _accuracy_scale(teacher.get("top1"), pruned.get("top1"))
    for key, label in (("top1", "Top-1"), ("top5", "Top-5")):
        t, p = _percent(teacher.get(key), scale), _percent(pruned.get(key), scale)
        change = _signed(p - t, " pt") if t is not None and p is not None else DASH
        table.add_row(label, _fmt_pct(t), _fmt_pct(p), change)

    batch = latency.get("batch_size")
    table.add_row(
        f"Latency (ms, batch {batch})" if batch else "Latency (ms)",
        _fmt_float(teacher.get("latency_ms"), 2),
        _fmt_float(pruned.get("latency_ms"), 2),
        _latency_change(latency, teacher.get("latency_ms"), pruned.get("latency_ms")),
    )
    speedup = latency.get("speedup")
    table.add_row("Speed-up", "1.00×", f"{speedup:.2f}×" if _is_num(speedup) else DASH, "")
    for key, label, unit in (("params", "Params", human_count), ("macs", "MACs", human_count)):
        t, p = teacher.get(key), pruned.get(key)
        table.add_row(label, unit(t), unit(p), _relative_change(t, p))
    return table


def blocks_table(blocks: Iterable[dict[str, Any]], title: str = "Candidate blocks") -> Table:
    """One row per block in network order: measured ΔLat, recoverability, score, dropped or not.

    Columns whose key no block carries are left out, so ``dfpractise blocks`` (latency only) and a
    finished run share this one table.
    """
    blocks = list(blocks)
    columns = [c for c in _BLOCK_COLUMNS if c[0] in _ALWAYS or any(c[0] in b for b in blocks)]
    table = Table(title=title)
    for _, header, justify, _ in columns:
        table.add_column(header, justify=justify)
    for block in blocks:
        cells = [fmt(block.get(key), block) for key, _, _, fmt in columns]
        table.add_row(*cells, style="bold" if block.get("dropped") else None)
    if any(b.get("clamped") for b in blocks):
        table.caption = "* saving near zero or negative: clamped to a small floor (raw value in report.json)"
    return table


def _fmt_delta(value: Any, block: dict[str, Any]) -> str:
    return _fmt_float(value, 2) + ("*" if block.get("clamped") else "")


def _fmt_spread(value: Any, block: dict[str, Any]) -> str:
    if not value or len(value) != 2 or not all(_is_num(v) for v in value):
        return DASH
    return f"{value[0]:.2f} to {value[1]:.2f}"


_ALWAYS = ("name", "delta_lat")
_BLOCK_COLUMNS = (  # (key, header, justify, formatter)
    ("name", "block", "left", lambda v, b: str(v) if v is not None else "?"),
    ("stage", "stage", "right", lambda v, b: str(v) if v is not None else DASH),
    ("delta_lat", "ΔLat %", "right", _fmt_delta),
    ("spread", "IQR %", "right", _fmt_spread),
    ("recoverability", "recoverability", "right", lambda v, b: _fmt_sig(v)),
    ("score", "score", "right", lambda v, b: _fmt_sig(v)),
    ("dropped", "dropped", "center", lambda v, b: "✓" if v else ""),
)


def phases_table(phases: dict[str, float]) -> Table:
    """Where the time went, phase by phase, with each phase's share of the total."""
    table = Table(title="Time")
    table.add_column("phase")
    table.add_column("time", justify="right")
    table.add_column("share", justify="right")
    total = phases.get("total") or sum(v for k, v in phases.items() if k != "total" and _is_num(v))
    for name, seconds in phases.items():
        if name == "total":
            continue
        share = f"{100.0 * seconds / total:.0f}%" if total and _is_num(seconds) else ""
        table.add_row(name, human_seconds(seconds), share)
    table.add_row("total", human_seconds(total), "100%" if total else "", style="bold")
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the summary, the per-block table and the time table of one run."""
    console = console or Console()
    console.print(summary_table(report))
    if report.get("blocks"):
        console.print(blocks_table(report["blocks"]))
    if report.get("phases"):
        console.print(phases_table(report["phases"]))


def robustness_table(result: Any) -> Table:
    """Top-1 of each model clean and per corruption (mean over severities), then the aggregates."""
    table = Table(title=f"Top-1 under corruption ({result.count} images, severities "
                        f"{', '.join(map(str, result.severities))}, seed {result.seed})")
    table.add_column("")
    for model in result.models:
        table.add_column(model, justify="right")
    table.add_row("clean", *(_fmt_pct(result.clean[m]) for m in result.models))
    for corruption in result.corruptions:
        table.add_row(corruption.replace("_", " "), *(_fmt_pct(result.family(m, corruption)) for m in result.models))
    table.add_row("[bold]mean corruption", *(f"[bold]{_fmt_pct(result.mean_corruption_accuracy(m))}"
                                              for m in result.models))
    errors = [result.corruption_error(m) for m in result.models]
    table.add_row(f"mCE vs {result.reference}", *(f"{e:.1f}" if e is not None else DASH for e in errors))
    table.add_row("relative robustness", *(DASH if m == result.reference else _signed(result.relative_robustness(m),
                                                                                       " pt") for m in result.models))
    table.caption = ("relative robustness: points lost under corruption beyond those lost on clean images "
                     f"(against {result.reference}); positive means compression costs more under shift")
    return table


def sweep_table(record: dict[str, Any]) -> Table:
    """A sweep (``sweep.json``): the teacher, then per target PRACTISE's model and the baseline's,
    with the predicted and measured cut and top-1."""
    teacher = record.get("teacher") or {}
    table = Table(title=f"{record.get('model', '?')}: {record.get('num_images', '?')} {record.get('source', '?')} "
                        f"images, one model per latency target")
    for header in ("target", "method", "blocks", "predicted %", "measured % [IQR]", "top-1 %", "change",
                   "recovery"):
        table.add_column(header, justify="left" if header == "method" else "right", no_wrap=header == "method")
    table.add_row(DASH, "teacher", "", "", "0", _fmt_float(teacher.get("top1"), 2), "", "", style="bold")
    rows = list(record.get("practise") or []) + list((record.get("baseline") or {}).get("rows") or [])
    for row in sorted(rows, key=lambda r: (r["target"], r["method"] != "practise")):
        method = "PRACTISE" if row["method"] == "practise" else row["method"].replace("-", " ")
        target = f"{100 * row['target']:g}%"
        if row["status"] != "done":
            table.add_row(target, method, "", "", row["status"], "", "", "", style="dim")
            continue
        spread = row.get("measured_spread") or []
        cut = f"{100 * row['measured_cut']:.1f}" + (
            f" [{100 * spread[0]:.0f}, {100 * spread[1]:.0f}]" if len(spread) == 2 else "")
        change = (_signed(row["top1"] - row["teacher_top1"], " pt")
                  if _is_num(row.get("top1")) and _is_num(row.get("teacher_top1")) else DASH)
        predicted = row.get("predicted_cut")
        table.add_row(target, method, str(len(row.get("dropped") or [])) if row["method"] == "practise" else DASH,
                      f"{100 * predicted:.1f}" if _is_num(predicted) else DASH, cut, _fmt_float(row.get("top1"), 2),
                      change, human_seconds(row.get("recovery_seconds")))
    notes = ["cuts in % of the teacher's measured latency; each target's run folder is target-<target>/ in the "
             "sweep folder"]
    notes += [f"{100 * r['target']:g}%: {r.get('reason')}" for r in rows if r["status"] == "unreachable"]
    table.caption = "\n".join(notes)
    return table


# ---------------------------------------------------------------- pictures


def save_sample_grid(
    images: torch.Tensor, labels: torch.Tensor | None, path: str | Path, per_class: int = 8, max_images: int = 160
) -> Path:
    """A PNG grid: one row of ``per_class`` samples per class (or the first images if unlabelled)."""
    import torch
    from torchvision.utils import make_grid, save_image

    if labels is not None:
        rows = [images[labels == c][:per_class] for c in torch.unique(labels).tolist()]
        rows = [torch.cat([r, torch.ones(per_class - len(r), *r.shape[1:])]) if len(r) < per_class else r for r in rows]
        chosen = torch.cat(rows)[:max_images]
    else:
        chosen = images[:max_images]
    scale = max(1, 64 // images.shape[-1])  # small (CIFAR-size) images are enlarged to be seen
    if scale > 1:
        chosen = torch.nn.functional.interpolate(chosen, scale_factor=scale, mode="nearest")
    grid = make_grid(chosen, nrow=per_class, padding=2, pad_value=1.0)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


# ---------------------------------------------------------------- numbers


def human_count(n: float | None) -> str:
    """Counts in millions (0.85 M params, 125.5 M MACs) or billions (4.10 G): how models are compared."""
    if not _is_num(n):
        return DASH
    if abs(n) < 1e4:  # toy models in tests; "0.00 M" would hide them
        return f"{n:g}"
    value, unit = (n / 1e9, "G") if abs(n) >= 1e9 else (n / 1e6, "M")
    return f"{value:.2f} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def human_seconds(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if not _is_num(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _summary_title(report: dict[str, Any]) -> str:
    model = report.get("model", "?")
    weights = report.get("weights")
    head = f"{model} ({weights})" if weights else str(model)
    source = report.get("source", "?")
    return f"{head}: {report.get('num_images', '?')} {source} images, seed {report.get('seed', '?')}"


def _summary_caption(report: dict[str, Any]) -> str:
    target = report.get("target") or {}
    if target.get("drop") is not None:
        goal = f"target: drop {target['drop']} blocks"
    elif _is_num(target.get("latency_reduction")):
        goal = f"target: {100 * target['latency_reduction']:.0f}% less latency"
    else:
        goal = "target: —"
    dropped = report.get("dropped") or []
    parts = [goal, f"dropped {len(dropped)}: {', '.join(dropped) or 'none'}"]
    tiny = report.get("tiny_set") or {}
    if tiny:
        parts.append(_tiny_set_line(tiny))
    lat = report.get("latency") or {}
    if lat:
        parts.append(
            f"timed with {lat.get('backend', 'torch')} on {lat.get('device', '?')}"
            + (f" ({lat['memory_format']})" if lat.get("memory_format") else "")
            + f", {lat.get('threads', '?')} threads, "
            f"{lat.get('resolution', '?')} px, median of {lat.get('repeats', '?')} rounds"
        )
    return "\n".join(parts)


def _tiny_set_line(tiny: dict[str, Any]) -> str:
    parts = [f"tiny set: {tiny.get('method', '?')} images"]
    if _is_num(tiny.get("agreement")):
        parts.append(f"teacher agrees with the intended class on {100 * tiny['agreement']:.1f}%")
    if _is_num(tiny.get("bn_distance")):
        parts.append(f"BN-statistics distance {tiny['bn_distance']:.1f}")
    if _is_num(tiny.get("synthesis_seconds")) and tiny.get("generated_batches"):
        parts.append(f"made in {human_seconds(tiny['synthesis_seconds'])}")
    elif tiny.get("cache"):
        parts.append("read from cache")
    return ", ".join(parts)


def _latency_change(latency: dict[str, Any], teacher_ms: Any, pruned_ms: Any) -> str:
    """The measured reduction (median of paired ratios) with its IQR; not the ratio of medians."""
    reduction = latency.get("reduction")
    if not _is_num(reduction):
        return _relative_change(teacher_ms, pruned_ms)
    text = _signed(-100.0 * reduction, "%")
    spread = latency.get("reduction_spread")
    if spread and len(spread) == 2 and all(_is_num(v) for v in spread):
        low, high = sorted(-100.0 * v for v in spread)
        text += f" (IQR {low:+.1f} to {high:+.1f})"
    return text


def _accuracy_scale(*values: Any) -> float:
    """100 if accuracy is stored as a fraction, 1 if already in percent.

    A classifier worth compressing scores well above 1%, so a teacher top-1 at or below 1.0 can
    only be a fraction.
    """
    known = [v for v in values if _is_num(v)]
    return 100.0 if known and max(known) <= 1.0 else 1.0


def _percent(value: Any, scale: float) -> float | None:
    return float(value) * scale if _is_num(value) else None


def _relative_change(before: Any, after: Any) -> str:
    if not (_is_num(before) and _is_num(after)) or before == 0:
        return DASH
    return _signed(100.0 * (after - before) / before, "%")


def _signed(value: float, unit: str) -> str:
    return f"{value:+.1f}{unit}"


def _fmt_pct(value: float | None) -> str:
    return f"{value:.2f}%" if value is not None else DASH


def _fmt_float(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if _is_num(value) else DASH


def _fmt_sig(value: Any) -> str:
    return f"{value:.4g}" if _is_num(value) else DASH


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
