"""The BENCHMARKS.md section for ``set_costs.py``: do set costs find the set that recovers best?"""

from __future__ import annotations


def section(record: dict) -> list[str]:
    probes = (record or {}).get("probes") or {}
    if not probes:
        return []
    lines = [
        "## Recoverability of whole sets of blocks against their recovered top-1",
        "",
        "Each minimal set of blocks at the run's target (`recovery_settings.py --every-cover`) scored on a tiny set "
        "two ways: the sum of its blocks' single-block costs (what the selection minimises) and its own cost with "
        "all its holes bridged at once (`dfpractise.recoverability.set_costs`); beside the held-out top-1 the set "
        "reached after recovery. Spearman is cost against top-1: a good predictor is close to -1. "
        "Raw results: `benchmarks/results/set_costs.json`; then `python -m benchmarks.write_benchmarks`.",
        "",
    ]
    for key, probe in probes.items():
        lines += [
            f"**{key}** ({probe['date']}, commit `{probe['commit']}`, {probe['machine']}, {probe['seconds']:.0f} s): "
            f"`{probe['command']}`. Spearman: summed {_number(probe['spearman_summed'])}, "
            f"joint {_number(probe['spearman_joint'])}"
            + ("".join(f", {name} {_number(probe.get('spearman_' + key))}" for key, name in RECOVERED
                       if 'spearman_' + key in probe)) + ".",
            "",
        ]
        sets = probe["sets"]
        recovered = all("recovered_mse" in s for s in sets)
        lines += [
            "| blocks dropped | summed cost | rank | joint cost | rank |"
            + (" short recovery: held-back feature error | rank |" if recovered else "")
            + " held-out top-1 | rank |",
            "|---|---|---|---|---|" + ("---|---|" if recovered else "") + "---|---|",
        ]
        summed, joint = _ranks(sets, "summed"), _ranks(sets, "joint")
        short = _ranks(sets, "recovered_mse") if recovered else {}
        held = _ranks([s for s in sets if s.get("holdout") is not None], "holdout", reverse=True)
        for s in sorted(sets, key=lambda s: -(s.get("holdout") or 0.0)):
            name = "+".join(s["blocks"])
            top1 = s.get("holdout")
            lines.append(f"| {', '.join(s['blocks'])} | {s['summed']:.3f} | {summed[name]} | {s['joint']:.3f} | "
                         f"{joint[name]} | "
                         + (f"{s['recovered_mse']:.3f} | {short[name]} | " if recovered else "")
                         + f"{'—' if top1 is None else f'{top1:.2f}'} | {held.get(name, '—')} |")
        lines.append("")
        if all("recovered_kl" in s for s in sets):
            lines += _signals_table(sets)
    return lines


def _signals_table(sets: list[dict]) -> list[str]:
    """Every held-back signal of the short recovery beside the held-out top-1 (lower is better)."""
    shown = [(key, name) for key, name in SIGNALS if all(key in s for s in sets)]
    header = " | ".join(name for _, name in shown)
    lines = [f"| blocks dropped | {header} | held-out top-1 |", "|---|" + "---|" * (len(shown) + 1)]
    for s in sorted(sets, key=lambda s: -(s.get("holdout") or 0.0)):
        top1 = s.get("holdout")
        lines.append(f"| {', '.join(s['blocks'])} | " + " | ".join(f"{s[key]:.4f}" for key, _ in shown)
                     + f" | {'—' if top1 is None else f'{top1:.2f}'} |")
    return lines + [""]


RECOVERED = (("recovered_mse", "after short recovery, feature error on held-back images"),
             ("recovered_stages_mse", "stage-output error there"), ("recovered_kl", "KL of predictions there"),
             ("recovered_blend_mse", "feature error on blends of two held-back images"),
             ("recovered_blend_kl", "KL there"), ("recovered_logit_mse", "logit MSE on held-back images"),
             ("recovered_kl_t4", "KL at temperature 4"), ("recovered_view_kl", "KL on augmented views"),
             ("recovered_disagreement", "disagreement on held-back images"))
SIGNALS = (("recovered_mse", "feature MSE"), ("recovered_stages_mse", "stage MSE"), ("recovered_kl", "KL"),
           ("recovered_blend_mse", "blend feature MSE"), ("recovered_blend_kl", "blend KL"),
           ("recovered_logit_mse", "logit MSE"), ("recovered_kl_t4", "KL at T=4"),
           ("recovered_view_kl", "KL on augmented views"), ("recovered_disagreement", "disagreement"))
"""The held-back signals of a short recovery, as their table's columns."""
"""The ``--recovered`` scores, when a probe has them (Spearman only; the raw values are in the JSON)."""


def _ranks(sets: list[dict], key: str, reverse: bool = False) -> dict[str, int]:
    """1 for the lowest cost (or the highest top-1 with ``reverse``)."""
    ordered = sorted(sets, key=lambda s: s[key], reverse=reverse)
    return {"+".join(s["blocks"]): rank for rank, s in enumerate(ordered, 1)}


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
