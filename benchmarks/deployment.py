"""Deployment benchmark: does the measured cut hold on the runtime the model is deployed on?

Part 1, for a finished run folder (default: the sources benchmark's 500-real-image ResNet-56 run,
30% target, selected on eager PyTorch): teacher and pruned model timed on eager PyTorch and on
onnxruntime (CPU), at batch 64 and batch 1, interleaved and paired (median of ratios), all in this
process; and the top-1 of the ONNX files against PyTorch's on ``cifar10-jpeg/val``, with the
share of images on which both give the same class.

Part 2: the same recipe run again with ``latency.backend: onnxruntime``, so that its blocks are
timed and its cut confirmed on onnxruntime, beside the PyTorch-selected model, both timed on both
runtimes in the same rounds.

    python -m benchmarks.deployment                       # the full benchmark (about 15 min on 2 cores)
    python -m benchmarks.deployment --limit 500 --repeats 3 --repeats-batch1 20 --recovery-iterations 20 \\
        --score-iterations 5 --runs-dir /tmp/deploy-runs --results /tmp/deployment.json     # a smoke run
    python -m benchmarks.write_benchmarks

Results go to ``benchmarks/results/deployment.json`` (written atomically, once at the end of each
part); the onnxruntime-selected run folder is kept beside the source run and reused when finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import engine_grid
from dfpractise.engine import compress
from dfpractise.latency import Timing, compare_latency
from dfpractise.models.adapter import spec_of
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "deployment.json"
SOURCE_RUN = ROOT / "runs" / "bench-sources" / "real-s1-it2000"
BACKENDS = ("torch", "onnxruntime")


def _shown(path: Path) -> str:
    """A path as the results show it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def timing(batch_size: int, repeats: int, resolution: int, backend: str, threads: int | None) -> Timing:
    return Timing(batch_size=batch_size, resolution=resolution, repeats=repeats, warmup=3, threads=threads,
                  backend=backend)


def latencies(models: dict[str, nn.Module], batches: dict[int, int], resolution: int, threads: int | None,
              progress: Progress) -> dict:
    """Per batch size and backend: each model's median ms and its cut against the teacher."""
    out: dict = {}
    for batch, repeats in batches.items():
        for backend in BACKENDS:
            comparison = compare_latency(models, timing(batch, repeats, resolution, backend, threads),
                                         progress=progress, description=f"{backend}, batch {batch}")
            cell = {"threads": comparison.threads, "repeats": repeats,
                    "ms": {name: comparison.median_ms(name) for name in models}, "cut": {}}
            for name in models:
                if name != "teacher":
                    median, q25, q75 = comparison.reduction(name, "teacher")
                    cell["cut"][name] = [median, q25, q75]
            out.setdefault(str(batch), {})[backend] = cell
            print(f"  batch {batch:>2} {backend:<11} " + ", ".join(
                f"{name} {100 * c[0]:.1f}%" for name, c in cell["cut"].items()), flush=True)
    return out


def onnx_accuracy(models: dict[str, nn.Module], val: Path, limit: int | None, batch_size: int = 500) -> dict:
    """Top-1 of each model in PyTorch and as an ONNX file in onnxruntime, on the same images."""
    from dfpractise.evaluate import load_labelled_folder
    from dfpractise.onnx_graph import onnx_bytes, onnx_session

    spec = spec_of(models["teacher"])
    data = load_labelled_folder(val, spec.input_size, limit)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    result: dict = {"count": len(data)}
    for name, model in models.items():
        model.eval()
        session = onnx_session(onnx_bytes(model, ((data.images[:2] - mean) / std), dynamic_batch=True))
        hits = {"pytorch": 0, "onnx": 0}
        same, max_diff = 0, 0.0
        for start in range(0, len(data), batch_size):
            x = (data.images[start:start + batch_size] - mean) / std
            labels = data.labels[start:start + batch_size]
            with torch.no_grad():
                want = model(x)
            got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
            hits["pytorch"] += int((want.argmax(1) == labels).sum())
            hits["onnx"] += int((got.argmax(1) == labels).sum())
            same += int((want.argmax(1) == got.argmax(1)).sum())
            max_diff = max(max_diff, float((want - got).abs().max()))
        result[name] = {"pytorch_top1": 100.0 * hits["pytorch"] / len(data),
                        "onnx_top1": 100.0 * hits["onnx"] / len(data),
                        "same_class": 100.0 * same / len(data), "max_abs_diff": max_diff}
        print(f"  {name}: top-1 PyTorch {result[name]['pytorch_top1']:.2f}, ONNX {result[name]['onnx_top1']:.2f}, "
              f"same class {result[name]['same_class']:.2f}%, max |diff| {max_diff:.1e}", flush=True)
    return result


def export_checks(run_dir: Path) -> dict:
    """``dfpractise export`` of the run in each format: the check's numbers."""
    from dfpractise.export import export_run

    checks = {}
    with tempfile.TemporaryDirectory() as folder:
        for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt"), ("safetensors", "safetensors")):
            result = export_run(run_dir, Path(folder) / f"model.{suffix}", fmt).to_json()
            checks[fmt] = {k: result[k] for k in ("max_abs_diff", "allowed", "logit_scale", "inputs", "batch_sizes",
                                                  "runtime", "bytes", "seconds", "opset", "exporter")}
    return checks


def onnxruntime_run(source: Path, runs_dir: Path, iterations: int | None, score_iterations: int | None,
                    progress: Progress) -> Path:
    """The source run's recipe, selected on onnxruntime (made, or finished, if needed)."""
    overrides: dict = {"latency": {"backend": "onnxruntime"}}
    if iterations is not None:
        overrides["recovery"] = {"iterations": iterations}
    if score_iterations is not None:
        overrides["scoring"] = {"iterations": score_iterations}
    config = resolve_config(source / "recipe.yaml", overrides)
    scoring = "" if score_iterations is None else f"-score{score_iterations}"
    out = runs_dir / f"{source.name.rsplit('-it', 1)[0]}-it{config.recovery.iterations}{scoring}-onnxruntime"
    print(f"run {out}", flush=True)
    compress(config, out, progress=progress, resume=(out / "recipe.yaml").exists())
    return out


def stamp() -> dict:
    import onnxruntime

    return {"date": dt.date.today().isoformat(), "machine": engine_grid.machine(), "commit": engine_grid.commit(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=SOURCE_RUN, help="finished run folder (selected on torch)")
    parser.add_argument("--runs-dir", type=Path, help="where the onnxruntime-selected run goes (default: beside --run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=30, help="paired rounds at batch 64")
    parser.add_argument("--repeats-batch1", type=int, default=300, help="paired rounds at batch 1")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument("--limit", type=int, help="validation images for the ONNX top-1 (default: all)")
    parser.add_argument("--recovery-iterations", type=int,
                        help="recovery of the onnxruntime-selected run (default: the recipe's)")
    parser.add_argument("--score-iterations", type=int,
                        help="scoring of the onnxruntime-selected run (default: the recipe's)")
    parser.add_argument("--skip-run", action="store_true", help="part 1 only")
    args = parser.parse_args()
    assets = Path(os.environ.setdefault("DFPRACTISE_ASSETS", str(ROOT.parent / "shared" / "assets")))
    progress = Progress(quiet=True)
    started = time.perf_counter()

    loaded = load_run(args.run)
    config = loaded.config
    resolution = spec_of(loaded.teacher).input_size
    models = {"teacher": loaded.teacher, "pruned": loaded.pruned}
    record: dict = {**stamp(), "run": _shown(args.run),
                    "model": config.model, "target": config.latency_reduction, "selected_on": config.latency.backend,
                    "dropped": loaded.manifest["dropped"], "run_report": {
                        k: (loaded.report or {}).get("latency", {}).get(k) for k in ("reduction", "batch_size")}}
    print(f"part 1: {args.run}", flush=True)
    record["latency"] = latencies(models, {64: args.repeats, 1: args.repeats_batch1}, resolution, args.threads,
                                  progress)
    record["accuracy"] = onnx_accuracy(models, assets / "cifar10-jpeg" / "val", args.limit)
    record["export"] = export_checks(args.run)
    record["limit"] = args.limit
    record["seconds"] = {"part1": round(time.perf_counter() - started, 1)}
    engine_grid.save_results(record, args.results)

    if not args.skip_run:
        print("part 2: the same recipe selected on onnxruntime", flush=True)
        part2 = time.perf_counter()
        ort_dir = onnxruntime_run(args.run, args.runs_dir or args.run.parent, args.recovery_iterations,
                                  args.score_iterations, progress)
        ort_run = load_run(ort_dir)
        both = {"teacher": loaded.teacher, "torch-selected": loaded.pruned, "onnxruntime-selected": ort_run.pruned}
        record["selection"] = {
            "run": _shown(ort_dir),
            "recovery_iterations": ort_run.config.recovery.iterations,
            "score_iterations": ort_run.config.scoring.iterations,
            "dropped": {"torch-selected": loaded.manifest["dropped"],
                        "onnxruntime-selected": ort_run.manifest["dropped"]},
            "top1": {"teacher": (loaded.report or {}).get("teacher", {}).get("top1"),
                     "torch-selected": (loaded.report or {}).get("pruned", {}).get("top1"),
                     "onnxruntime-selected": (ort_run.report or {}).get("pruned", {}).get("top1")},
            "run_reports": {"torch-selected": (loaded.report or {}).get("latency"),
                            "onnxruntime-selected": (ort_run.report or {}).get("latency")},
            "latency": latencies(both, {config.latency.batch_size: args.repeats}, resolution, args.threads,
                                 progress),
        }
        record["seconds"]["part2"] = round(time.perf_counter() - part2, 1)
        engine_grid.save_results(record, args.results)
    print(f"wrote {args.results}", flush=True)


if __name__ == "__main__":
    main()
