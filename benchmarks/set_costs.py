"""Whether recoverability measured on whole sets of blocks finds the set that recovers best.

The selection minimises the sum of its blocks' costs, each measured with that block alone taken
out. For a recovery-settings selection whose every minimal set of blocks at the run's target was
recovered (``recovery_settings.py --every-cover``), this scores each of those sets on the run's own
tiny set two ways: the sum of its blocks' costs, and its own cost with all its holes bridged at once
(``dfpractise.recoverability.set_costs``). Each is compared with the held-out top-1 that set
reached after recovery, by Spearman rank correlation (lower cost should mean higher top-1, so a
good predictor is strongly negative). Label-free: only the tiny set is used, as a run would.

    python -m benchmarks.set_costs --name resnet20-real500-t30-s1 --variant stages-mixup
    python -m benchmarks.write_benchmarks

``--tiny-from`` scores on another selection's tiny set (a data-free one) against the held-out
top-1 of the named one. ``--recovered N`` adds a third score, still label-free: each set recovered
for N steps (the run's recovery settings) on four fifths of the tiny set, then the feature error
and the disagreement with the teacher on the fifth it never saw.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import engine_grid
from benchmarks.recovery_settings import agreement, run_covers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "set_costs.json"
RECOVERY_RESULTS = ROOT / "benchmarks" / "results" / "recovery_settings.json"
RUNS = ROOT / "runs" / "bench-recovery-settings"
RECOVERED_SIGNALS = ("recovered_mse", "recovered_stages_mse", "recovered_kl", "recovered_blend_mse",
                     "recovered_blend_kl", "recovered_logit_mse", "recovered_kl_t4", "recovered_view_kl",
                     "recovered_disagreement")
"""What ``recovered_scores`` judges a briefly recovered set by (lower is better)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="a recovery-settings selection run with --every-cover")
    parser.add_argument("--variant", default="stages-mixup", help="the recovery variant whose top-1 is compared")
    parser.add_argument("--tiny-from", help="score on this selection's tiny set instead (default: --name's)")
    parser.add_argument("--recovered", type=int, default=0, metavar="N",
                        help="also score each set by N steps of recovery, judged on held-back tiny-set images")
    parser.add_argument("--sets", nargs="+", metavar="A+B+C",
                        help="score only these minimal sets (default: all of them)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    engine_grid.CODE_VERSION = engine_grid.commit()
    results = engine_grid.load_results(args.results, empty={"probes": {}})
    source = args.tiny_from or args.name
    key = f"{args.name}/{args.variant}" + (f" on {source}'s tiny set" if args.tiny_from else "")
    key += f", recovered {args.recovered} steps" if args.recovered else ""
    key += f", {len(args.sets)} sets" if args.sets else ""
    started = time.perf_counter()
    rows = score_covers(RUNS / source / "selection", recovered=args.recovered, only=args.sets)
    heldout = heldout_top1(json.loads(RECOVERY_RESULTS.read_text())["selections"][args.name], args.variant)
    for row in rows:
        row["holdout"] = heldout.get("+".join(sorted(row["blocks"])))
    results["probes"][key] = {
        "selection": args.name, "variant": args.variant, "tiny_set": source, "sets": rows,
        "spearman_summed": spearman([r["summed"] for r in rows], [r["holdout"] for r in rows]),
        "spearman_joint": spearman([r["joint"] for r in rows], [r["holdout"] for r in rows]),
        **{f"spearman_{signal}": spearman([r[signal] for r in rows], [r["holdout"] for r in rows])
           for signal in RECOVERED_SIGNALS if args.recovered},
        "seconds": round(time.perf_counter() - started, 1), "machine": engine_grid.machine(),
        "date": time.strftime("%Y-%m-%d"), "commit": engine_grid.CODE_VERSION,
        "command": f"python -m benchmarks.set_costs --name {args.name} --variant {args.variant}"
                   + (f" --tiny-from {args.tiny_from}" if args.tiny_from else "")
                   + (f" --recovered {args.recovered}" if args.recovered else "")
                   + (f" --sets {' '.join(args.sets)}" if args.sets else ""),
    }
    engine_grid.save_results(results, args.results)
    print(json.dumps(results["probes"][key], indent=1))


def score_covers(run: Path, joint: bool = True, recovered: int = 0, only: list[str] | None = None) -> list[dict]:
    """Every minimal cover of the run's target, with the summed single-block cost the run measured
    and (``joint``) the set's own cost on the run's tiny set with its scoring settings; with
    ``recovered`` steps, also how the recovered set does on held-back tiny-set images. ``only``: the
    sets (block names joined by +, any order) to score, of the minimal covers."""
    import torch

    from dfpractise.augment import train_augmentation
    from dfpractise.engine import load_tiny_set, prepare
    from dfpractise.progress import Progress
    from dfpractise.recoverability import ScoringContext, set_costs

    config, saving, covers = run_covers(run)
    if only:
        wanted = {frozenset(s.split("+")) for s in only}
        unknown = wanted - {frozenset(c) for c in covers}
        if unknown:
            raise SystemExit(f"not minimal sets of this run: {', '.join('+'.join(sorted(u)) for u in unknown)}")
        covers = [c for c in covers if frozenset(c) in wanted]
    single = json.loads((run / "scores.json").read_text())["costs"]
    rows = [{"blocks": cover, "summed": round(sum(single[n] for n in cover), 5)} for cover in covers]
    if not joint:
        return rows
    setup = prepare(config)
    progress = Progress(quiet=True)
    tiny = load_tiny_set(config, setup.teacher, setup.weights_sha, progress)
    context = ScoringContext(
        teacher=setup.teacher, blocks=setup.blocks, delta_lat=saving, images=tiny.images,
        augment=train_augmentation(setup.spec.input_size), normalize=setup.normalize, config=config.scoring,
        seed=config.seed, device=torch.device(config.device), progress=progress, adapter=setup.adapter,
        precision=config.precision,
    )
    for row, cost in zip(rows, set_costs(context, covers)):
        row["joint"] = round(cost, 5)
    if recovered:
        for row, scores in zip(rows, recovered_scores(config, setup, tiny.images, covers, recovered)):
            row.update(scores)
    return rows


def recovered_scores(config, setup, images, covers: list[list[str]], iterations: int) -> list[dict]:
    """Each cover recovered for ``iterations`` steps on four fifths of ``images`` (drawn with the
    run's seed), then judged against the teacher on the rest, several ways: the final-feature MSE,
    the MSE summed over every stage's output (what mir-stages trains), the KL divergence of the
    predictions, the same two on blends of two held-back images (where the teacher hesitates, which
    inverted images alone rarely show), the MSE of the logits, the KL at temperature 4 (the
    classes after the first), the KL on four augmented views of each held-back image, and the
    top-1 disagreement."""
    import torch
    import torch.nn.functional as F

    from dfpractise.augment import train_augmentation
    from dfpractise.progress import Progress
    from dfpractise.recovery import recover
    from dfpractise.trials import held_back_split

    held, train, blends = held_back_split(images, config.trials.held_back, config.seed)
    settings = config.recovery.replace(iterations=iterations)
    x = setup.normalize(held)
    blended = setup.normalize(blends)
    adapter = setup.adapter

    torch.manual_seed(config.seed)
    augment = train_augmentation(setup.spec.input_size)
    with torch.no_grad():
        views = setup.normalize(torch.cat([augment(held) for _ in range(4)]))

    def judged(model) -> dict:
        with torch.no_grad():
            return {"stages": adapter.stage_features(model, x), "logits": model(x),
                    "blend_features": adapter.features(model, blended), "blend_logits": model(blended),
                    "view_logits": model(views)}

    def kl(got: torch.Tensor, wanted: torch.Tensor, temperature: float = 1.0) -> float:
        t = temperature
        return F.kl_div(F.log_softmax(got.float() / t, 1), F.log_softmax(wanted.float() / t, 1), log_target=True,
                        reduction="batchmean").item() * t * t

    setup.teacher.eval()
    wanted = judged(setup.teacher)
    out = []
    for cover in covers:
        student = adapter.drop(cover)
        recover(student, setup.teacher, train, settings, train_augmentation(setup.spec.input_size),
                setup.normalize, seed=config.seed, adapter=adapter, precision=config.precision,
                progress=Progress(quiet=True))
        got = judged(student)
        disagreement = 1 - agreement(setup.teacher, student, held, setup.spec.mean, setup.spec.std)
        out.append({
            "recovered_mse": round(F.mse_loss(got["stages"][-1], wanted["stages"][-1]).item(), 5),
            "recovered_stages_mse": round(sum(F.mse_loss(g, w).item()
                                              for g, w in zip(got["stages"], wanted["stages"])), 5),
            "recovered_kl": round(kl(got["logits"], wanted["logits"]), 5),
            "recovered_blend_mse": round(F.mse_loss(got["blend_features"], wanted["blend_features"]).item(), 5),
            "recovered_blend_kl": round(kl(got["blend_logits"], wanted["blend_logits"]), 5),
            "recovered_logit_mse": round(F.mse_loss(got["logits"].float(), wanted["logits"].float()).item(), 5),
            "recovered_kl_t4": round(kl(got["logits"], wanted["logits"], 4.0), 5),
            "recovered_view_kl": round(kl(got["view_logits"], wanted["view_logits"]), 5),
            "recovered_disagreement": round(disagreement, 4),
        })
    return out


def heldout_top1(entry: dict, variant: str) -> dict[str, float]:
    """Held-out top-1 of ``variant`` per set of blocks (sorted names joined by +): its ``@`` rows
    and the run's own selection."""
    out = {}
    for label, row in entry["variants"].items():
        if label == variant:
            out["+".join(sorted(entry["dropped"]))] = row["top1"]["holdout"]
        elif label.split("@")[0] == variant and "drop" in row["changes"]:
            out["+".join(sorted(str(row["changes"]["drop"]).split("+")))] = row["top1"]["holdout"]
    return out


def spearman(costs: list[float], top1: list[float | None]) -> float | None:
    """Spearman rank correlation over the sets both are known for (None with fewer than 3)."""
    from scipy.stats import spearmanr

    pairs = [(c, t) for c, t in zip(costs, top1) if t is not None]
    if len(pairs) < 3:
        return None
    return round(float(spearmanr([c for c, _ in pairs], [t for _, t in pairs]).statistic), 3)


if __name__ == "__main__":
    main()
