"""Dropping blocks against filter pruning, at the same measured speed-up and with the same images.

Teacher cifar10jpeg-resnet56; CPU latency at batch 64, 32x32; accuracy on cifar10-jpeg/val.
A cell of the grid is (tiny set, latency target, seed). In each cell:

- block dropping, blocks chosen by PRACTISE (``recoverability``), ``random`` or ``latency-only``,
  recovered by MiR; PRACTISE's blocks also with no recovery, logits KD and BP (labelled sets);
- filter pruning through Torch-Pruning (L1 and Taylor importance, block-internal channels only),
  its ratio searched until the *measured* cut is within 2 points of PRACTISE's measured cut
  (with ``round_to`` 8 first, then unrounded where rounded widths cannot reach it),
  recovered by MiR and by BP: the same tiny set, iterations and seed as the block-drop model;
- one interleaved latency run of the teacher and every pruned network of the cell, so the cuts
  compared in the table come from the same measurement.

Rows are appended to a JSON file one at a time; a rerun skips what is done. Block-drop MiR rows
of real tiny sets are taken from the engine grid (``results/engine.json``) when it holds the same
run (same recipe, size, target, seed and iterations), rather than recomputed.

    python -m benchmarks.side_by_side --tiny-sets real50 --targets 0.4 --seeds 1 2 3
    python -m benchmarks.side_by_side --curve          # filter pruning: measured cut per ratio
    python -m benchmarks.write_benchmarks              # tables and plot from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import sys
import time
from pathlib import Path

import torch

from benchmarks import engine_grid
from benchmarks.side_by_side_report import DEFAULT_ITERATIONS
from dfpractise.augment import normalize, train_augmentation
from dfpractise.baselines.filter_pruning import (
    inner_widths,
    kept_channels,
    latency_measure,
    match_latency,
    prune_filters,
    pseudo_label_loss,
)
from dfpractise.complexity import count_macs, count_params
from dfpractise.errors import ConfigError
from dfpractise.engine import compress, load_teacher, load_tiny_set
from dfpractise.evaluate import evaluate_models, load_labelled_folder
from dfpractise.latency import Timing, compare_latency
from dfpractise.models.blocks import drop_blocks
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.recovery import recover

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = {
    "real50": ("resnet56-real500.yaml", 50),
    "real500": ("resnet56-real500.yaml", 500),
    "synthetic512": ("resnet56-synthetic512.yaml", 512),
    "ood1000": ("resnet56-ood1000.yaml", 1000),
}
"""Tiny set name -> (recipe it is drawn by, number of images)."""

SCORERS = ("recoverability", "random", "latency-only")
BLOCK_RECOVERIES = ("none", "bp", "kd")  # PRACTISE's blocks, besides MiR
FILTER_ROWS = (("l1", "mir"), ("l1", "bp"), ("taylor", "mir"))
TOLERANCE = 0.02  # the filter-pruned cut must be this close to the block-drop cut
RESULTS = ROOT / "benchmarks" / "results" / "side_by_side.json"


def cell_key(tiny_set: str, target: float, seed: int, iterations: int) -> str:
    return f"{tiny_set}-t{int(round(target * 100))}-s{seed}-it{iterations}"


def row_key(family: str, selector: str, recovery: str) -> str:
    return f"{family}/{selector}/{recovery}"


class Cell:
    """One (tiny set, target, seed): its teacher, images, and rows written as they finish."""

    def __init__(self, args, world: "World", tiny_set: str, target: float, seed: int) -> None:
        recipe, num_images = TINY_SETS[tiny_set]
        self.args, self.world = args, world
        self.tiny_set, self.target, self.seed = tiny_set, target, seed
        self.config = resolve_config(ROOT / "recipes" / recipe, {
            "latency_reduction": target,
            "seed": seed,
            "data": {"num_images": num_images},
            "recovery": {"iterations": args.recovery_iterations, "method": "mir"},
        })
        self.key = cell_key(tiny_set, target, seed, args.recovery_iterations)
        self.record = world.results["cells"].setdefault(self.key, {
            "tiny_set": tiny_set, "num_images": num_images, "target": target, "seed": seed,
            "recovery_iterations": args.recovery_iterations, "rows": {}, "filter_search": {},
        })
        self.rows: dict = self.record["rows"]
        self._tiny = None

    # -- inputs shared by the rows ----------------------------------------------------------------

    @property
    def tiny(self):
        if self._tiny is None:
            self._tiny = load_tiny_set(self.config, self.world.teacher, self.world.teacher_sha, self.world.progress)
        return self._tiny

    def save(self) -> None:
        engine_grid.save_results(self.world.results, self.args.results)

    def done(self, name: str) -> bool:
        if name in self.rows:
            print(f"  skip {name} (done)", flush=True)
            return True
        return False

    def add(self, name: str, row: dict, started: float) -> None:
        row.setdefault("wall_seconds", round(time.perf_counter() - started, 1))
        for field, value in (("date", dt.date.today().isoformat()), ("machine", engine_grid.machine()),
                             ("commit", engine_grid.CODE_VERSION)):
            row.setdefault(field, value)  # an imported row keeps when, where and what measured it
        self.rows[name] = row
        self.save()
        cut = row.get("reduction")
        print(f"  {name}: top-1 {row['top1']:.2f}" + (f", cut {100 * cut:.1f}%" if cut is not None else "")
              + f", {row['wall_seconds']:.0f} s", flush=True)

    # -- block dropping ---------------------------------------------------------------------------

    def block_rows(self) -> None:
        for scorer in SCORERS:
            name = row_key("block", scorer, "mir")
            if self.done(name):
                self._fill_size(name)
                continue
            started = time.perf_counter()
            imported = self._from_engine_grid(scorer)
            if imported is not None:
                self.add(name, imported, started)
                continue
            config = self.config.replace(scoring=self.config.scoring.replace(scorer=scorer))
            result = compress(config, self.args.runs_dir / self.key / f"block-{scorer}", progress=self.world.quiet,
                              overwrite=True, reuse=self.world.reuse)
            report = result.report
            self.add(name, {
                "top1": report["pruned"]["top1"], "top5": report["pruned"]["top5"],
                "reduction": report["latency"]["reduction"], "reduction_spread": report["latency"]["reduction_spread"],
                "dropped": report["dropped"], "params": report["pruned"]["params"], "macs": report["pruned"]["macs"],
                "phases": report["phases"],
            }, started)
        practise = self.rows[row_key("block", "recoverability", "mir")]
        for recovery in BLOCK_RECOVERIES:
            name = row_key("block", "recoverability", recovery)
            if self.done(name) or not self._applicable(recovery):
                continue
            started = time.perf_counter()
            pruned = drop_blocks(self.world.teacher, practise["dropped"], self.world.input_size)
            row = self._recover_and_evaluate(pruned, recovery)
            row.update(reduction=practise["reduction"], dropped=practise["dropped"],
                       cut_from=row_key("block", "recoverability", "mir"))
            self.add(name, row, started)

    def _fill_size(self, name: str) -> None:
        """Parameters and MACs of a block-drop row imported before imports carried them."""
        row = self.rows[name]
        if "macs" not in row and "dropped" in row:
            row.update(self._block_size(row["dropped"]))
            self.save()

    def _block_size(self, dropped: list) -> dict:
        pruned = drop_blocks(self.world.teacher, dropped, self.world.input_size)
        return {"params": count_params(pruned), "macs": count_macs(pruned, self.world.input_size)}

    def _from_engine_grid(self, scorer: str) -> dict | None:
        """The engine grid's run of exactly this block-drop setting, if it exists."""
        if not self.tiny_set.startswith("real") or self.args.no_import:
            return None
        key = engine_grid.run_key(self.record["num_images"], self.target, self.seed, scorer,
                                  self.args.recovery_iterations)
        run = self.world.engine_runs.get(key)
        if run is None:
            return None
        return {
            "top1": run["pruned_top1"], "top5": None, "reduction": run["reduction"],
            "reduction_spread": run["reduction_spread"], "dropped": run["dropped"], "phases": run["phases"],
            "wall_seconds": run["wall_seconds"], "from": f"engine.json:{key}",
            "date": run["date"], "machine": run["machine"], "commit": run["commit"],
            **self._block_size(run["dropped"]),
        }

    # -- filter pruning ---------------------------------------------------------------------------

    def filter_rows(self) -> None:
        target_cut = self.rows[row_key("block", "recoverability", "mir")]["reduction"]
        for importance, recovery in FILTER_ROWS:
            name = row_key("filter", importance, recovery)
            if self.done(name) or not self._applicable(recovery):
                continue
            pruned, search = self._filter_model(importance, target_cut)
            started = time.perf_counter()
            row = self._recover_and_evaluate(pruned, recovery)
            row.update(reduction=search["cut"], ratio=search["ratio"], round_to=search["round_to"],
                       inner_channels=sum(inner_widths(pruned).values()))
            self.add(name, row, started)

    def _filter_model(self, importance: str, target_cut: float):
        """The filter-pruned network matched to ``target_cut``: searched once, rebuilt after."""
        search = self.record["filter_search"].get(importance)
        if search is not None and abs(search["target_cut"] - target_cut) < 1e-9:
            return self._prune(importance, search["ratio"], search["round_to"]), search
        started = time.perf_counter()
        attempts = []
        for round_to in self.args.round_to:  # the first setting whose search lands within tolerance wins
            round_to = round_to or None
            highest = max_ratio(self.world.teacher, round_to)
            ratio, pruned, cut, trials = match_latency(
                self.world.teacher, target_cut, lambda r, rt=round_to: self._prune(importance, r, rt),
                measure=latency_measure(Timing(batch_size=self.config.latency.batch_size,
                                               resolution=self.world.input_size, repeats=self.args.search_repeats)),
                tolerance=TOLERANCE, bounds=(0.05, highest), progress=self.world.progress,
            )
            attempts.append({"round_to": round_to, "ratio": ratio, "cut": cut, "trials": trials,
                             "within_tolerance": abs(cut - target_cut) <= TOLERANCE, "model": pruned})
            if attempts[-1]["within_tolerance"]:
                break
        chosen = next((a for a in attempts if a["within_tolerance"]),
                      min(attempts, key=lambda a: abs(a["cut"] - target_cut)))
        search = {"target_cut": target_cut, "ratio": chosen["ratio"], "cut": chosen["cut"],
                  "round_to": chosen["round_to"], "within_tolerance": chosen["within_tolerance"],
                  "trials": [t for a in attempts for t in ({**t, "round_to": a["round_to"]} for t in a["trials"])],
                  "seconds": round(time.perf_counter() - started, 1)}
        self.record["filter_search"][importance] = search
        self.save()
        return chosen["model"], search

    def _prune(self, importance: str, ratio: float, round_to: int | None):
        loss = pseudo_label_loss(self.world.norm(self.tiny.images)) if importance == "taylor" else None
        return prune_filters(self.world.teacher, None, ratio, importance, round_to=round_to, taylor_loss=loss)

    # -- shared -----------------------------------------------------------------------------------

    def _applicable(self, recovery: str) -> bool:
        """BP needs labels. Synthetic images carry the class they were inverted for; out-of-domain images
        have none, so their BP rows do not exist."""
        return recovery != "bp" or self.tiny.labels is not None

    def _recover_and_evaluate(self, student, recovery: str) -> dict:
        config = self.config.recovery.replace(method=recovery)
        result = recover(student, self.world.teacher, self.tiny.images, config, self.world.augment,
                         self.world.norm, labels=self.tiny.labels, seed=self.seed, progress=self.world.progress)
        accuracy = self.world.evaluate(student)
        return {
            "top1": accuracy["top1"], "top5": accuracy["top5"], "recovery_seconds": round(result.seconds, 1),
            "final_loss": result.final_loss, "params": count_params(student),
            "macs": count_macs(student, self.world.input_size),
        }

    def forget_bound_searches(self) -> None:
        """Drop each filter-pruning search that chose the highest ratio allowed, with the rows built
        on it and the cell's latency check, so that they are searched and measured again."""
        for importance, search in list(self.record["filter_search"].items()):
            if search["ratio"] < max_ratio(self.world.teacher, search["round_to"]) - 1e-9:
                continue
            print(f"  redo filter/{importance}: its search ended on the bound ratio {search['ratio']}", flush=True)
            del self.record["filter_search"][importance]
            for name in [n for n in self.rows if n.startswith(f"filter/{importance}/")]:
                del self.rows[name]
            self.record.pop("latency_check", None)
        self.save()

    def latency_check(self) -> None:
        """Teacher, PRACTISE's network and each filter-pruned network timed in one interleaved run."""
        if "latency_check" in self.record:
            return
        practise = self.rows[row_key("block", "recoverability", "mir")]
        models = {"teacher": self.world.teacher,
                  "block": drop_blocks(self.world.teacher, practise["dropped"], self.world.input_size)}
        for importance, search in self.record["filter_search"].items():
            models[f"filter-{importance}"] = self._prune(importance, search["ratio"], search["round_to"])
        timing = Timing(batch_size=self.config.latency.batch_size, resolution=self.world.input_size,
                        repeats=2 * self.config.latency.repeats)
        comparison = compare_latency(models, timing, progress=self.world.progress,
                                     description="Timing the cell's networks")
        self.record["latency_check"] = {
            "ms": {name: round(comparison.median_ms(name), 3) for name in models},
            "reduction": {name: comparison.reduction(name, "teacher") for name in models if name != "teacher"},
            "repeats": 2 * self.config.latency.repeats,
        }
        self.save()
        print("  one-run cuts: " + ", ".join(
            f"{name} {100 * r[0]:.1f}%" for name, r in self.record["latency_check"]["reduction"].items()), flush=True)


class World:
    """What every cell shares: the teacher, the val set in memory, transforms, cached timings."""

    def __init__(self, args) -> None:
        self.args = args
        self.results = engine_grid.load_results(args.results, empty={"cells": {}})
        self.engine_runs = engine_grid.load_results(args.engine_results)["runs"]
        config = resolve_config(ROOT / "recipes" / "resnet56-real500.yaml", {})
        self.teacher, _, self.teacher_sha = load_teacher(config.model, config.weights)
        cfg = self.teacher.model_spec
        self.cfg, self.input_size = cfg, cfg.input_size
        self.augment = train_augmentation(cfg.input_size)
        self.progress = Progress(quiet=not sys.stdout.isatty())
        self.quiet = Progress(quiet=True)
        self.reuse: dict = {}
        self.val = load_labelled_folder(config.data.eval_path, cfg.input_size)  # decoded once, not per row
        if "teacher" not in self.results:
            accuracy = self.evaluate(self.teacher)
            self.results["teacher"] = {"top1": accuracy["top1"], "top5": accuracy["top5"],
                                       "params": count_params(self.teacher),
                                       "macs": count_macs(self.teacher, self.input_size)}
            engine_grid.save_results(self.results, args.results)

    def norm(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.cfg.mean, self.cfg.std)

    def evaluate(self, model) -> dict:
        return evaluate_models({"model": model}, self.val, self.cfg.mean, self.cfg.std, self.input_size,
                               progress=self.quiet)["model"]


def max_ratio(model, round_to: int | None) -> float:
    """The largest pruning ratio (to 0.005) that leaves every block-internal conv a channel."""
    widths = inner_widths(model).values()
    ratio = 0.9
    while ratio > 0.05 and any(kept_channels(w, ratio, round_to) < 1 for w in widths):
        ratio -= 0.005
    return round(ratio, 3)


def ratio_curve(world: World, args) -> None:
    """Measured cut of L1 filter pruning at fixed ratios, with and without ``round_to``.

    Shows why the ratio is searched on measured latency: CPU kernels do not speed up in
    proportion to the channels removed.
    """
    curve = world.results.setdefault("curve", {"points": []})
    measure = latency_measure(Timing(batch_size=64, resolution=world.input_size, repeats=args.search_repeats))
    done = {(p["ratio"], p["round_to"]) for p in curve["points"]}
    for round_to, ratio in itertools.product((None, 8), [round(0.1 * i, 1) for i in range(1, 9)]):
        if (ratio, round_to) in done:
            continue
        try:
            pruned = prune_filters(world.teacher, None, ratio, "l1", round_to=round_to)
        except ConfigError as error:  # e.g. rounding would empty a 16-channel layer
            print(f"ratio {ratio:.1f} round_to {round_to}: {error}", flush=True)
            continue
        cut = measure({"teacher": world.teacher, "pruned": pruned})
        curve["points"].append({"ratio": ratio, "round_to": round_to, "cut": cut,
                                "inner_channels": sum(inner_widths(pruned).values())})
        curve.update(date=dt.date.today().isoformat(), machine=engine_grid.machine(),
                     commit=engine_grid.CODE_VERSION, repeats=args.search_repeats)
        engine_grid.save_results(world.results, args.results)
        print(f"ratio {ratio:.1f} round_to {round_to}: cut {100 * cut:.1f}%", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-sets", nargs="+", choices=sorted(TINY_SETS), default=["real50"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--recovery-iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--round-to", type=int, nargs="+", default=[8, 0],
                        help="Torch-Pruning round_to settings tried in order until the cut matches (0: none)")
    parser.add_argument("--search-repeats", type=int, default=5, help="timing rounds per search trial")
    parser.add_argument("--curve", action="store_true", help="only measure cut against ratio for L1")
    parser.add_argument("--no-import", action="store_true", help="recompute block-drop rows the engine grid has")
    parser.add_argument("--redo-bound-searches", action="store_true",
                        help="search again the filter-pruning ratios that ended on the upper bound (the search "
                             "used to stop at its first match, which could be the bound), and redo their rows and "
                             "the cell's latency check")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--engine-results", type=Path, default=ROOT / "benchmarks" / "results" / "engine.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "side_by_side")
    args = parser.parse_args()

    engine_grid.CODE_VERSION = engine_grid.commit()
    world = World(args)
    if args.curve:
        ratio_curve(world, args)
        return
    for tiny_set, target, seed in itertools.product(args.tiny_sets, args.targets, args.seeds):
        cell = Cell(args, world, tiny_set, target, seed)
        print(f"cell {cell.key}", flush=True)
        if args.redo_bound_searches:
            cell.forget_bound_searches()
        cell.block_rows()
        cell.filter_rows()
        cell.latency_check()


if __name__ == "__main__":
    main()
