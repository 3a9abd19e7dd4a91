"""The ``dfpractise`` command: thin Click wrappers over the library.

Each command parses options, calls one library function, and renders its result as rich tables
(or one JSON object with ``--json``). User mistakes arrive as ``DFPractiseError`` and are printed
as one line with a non-zero exit; a traceback means a bug.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from .errors import DFPractiseError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _console() -> Console:
    return Console(stderr=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DFPractiseError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is kept (phases in the run folder, batches of synthetic "
                       "images in their cache); run the same command with --resume to continue", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs to a dict; values are read as YAML scalars (2, 0.1, true, [1, 2], text)."""
    import yaml

    from .errors import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {pair!r}: the value is not a number, word or list") from None
    return options


def _progress(quiet: bool):
    from .progress import Progress

    return Progress(quiet=quiet, console=_console())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfpractise")
def main() -> None:
    """Make a pretrained classifier faster by dropping residual blocks, with few or no images."""


@main.command()
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe; options below override it.")
@click.option("--model", help="Architecture name (see `dfpractise models`).")
@click.option("--weights", help="Weights file or known weights name.")
@click.option("--source", help="Tiny-set source: real, ood (unlabelled folder), synthetic (BN inversion, "
              "no data), diffusion (--data is the pipeline).")
@click.option("--data", "data_path", help="Tiny-set images: ImageFolder layout for real, any folder for ood, "
              "a diffusers pipeline for diffusion.")
@click.option("--num-images", type=int, help="Images in the tiny set.")
@click.option("--class-balanced/--no-class-balanced", default=None, help="Draw equally per class.")
@click.option("--synthesis-option", "synthesis_options", multiple=True, metavar="KEY=VALUE",
              help="Synthesizer setting for synthetic/diffusion sources, e.g. steps=200 (repeatable).")
@click.option("--cache-dir", help="Folder of the synthetic images (default: one per settings in the cache).")
@click.option("--rebuild-cache", is_flag=True, default=None,
              help="Replace a synthetic cache made with other settings instead of refusing it.")
@click.option("--eval-data", help="Labelled folder to measure top-1/top-5 on after compression.")
@click.option("--latency-reduction", type=float, help="Target cut of measured latency, e.g. 0.3.")
@click.option("--drop", type=int, help="Drop this many blocks instead of a latency target.")
@click.option("--scorer", help="Block scorer: recoverability, random, latency-only.")
@click.option("--selection", type=click.Choice(["min-recoverability", "greedy"]), default=None)
@click.option("--recovery", "recovery_method", type=click.Choice(["mir", "bp", "kd", "none"]), default=None)
@click.option("--recovery-iterations", type=int)
@click.option("--score-iterations", type=int)
@click.option("--batch-size", "latency_batch", type=int, help="Batch size for latency measurements.")
@click.option("--resolution", type=int, help="Input size for latency measurements (default: the model's).")
@click.option("--latency-repeats", type=int)
@click.option("--threads", type=int, help="CPU threads for latency measurements.")
@click.option("--device", help="cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out where it stopped (a finished run is only reported).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@handle_errors
def run(recipe, model, weights, source, data_path, num_images, class_balanced, synthesis_options, cache_dir,
        rebuild_cache, eval_data,
        latency_reduction, drop, scorer, selection, recovery_method, recovery_iterations,
        score_iterations, latency_batch, resolution, latency_repeats, threads, device, seed, out_dir,
        resume, overwrite, quiet, as_json) -> None:
    """Compress a model: time blocks, score them, drop the best, recover, evaluate, save."""
    from .engine import compress
    from .errors import ConfigError
    from .recipe import resolve_config
    from .report import print_report

    if resume and not out_dir:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    if resume and recipe is None and (Path(out_dir) / "recipe.yaml").exists():
        recipe = str(Path(out_dir) / "recipe.yaml")
    overrides = {
        "model": model,
        "weights": weights,
        "latency_reduction": latency_reduction,
        "drop": drop,
        "selection": selection,
        "seed": seed,
        "device": device,
        "data": {"source": source, "path": data_path, "num_images": num_images,
                 "class_balanced": class_balanced, "eval_path": eval_data,
                 "synthesis": _parse_options(synthesis_options, "--synthesis-option") or None,
                 "cache_dir": cache_dir, "rebuild_cache": rebuild_cache},
        "latency": {"batch_size": latency_batch, "resolution": resolution, "repeats": latency_repeats,
                    "threads": threads},
        "scoring": {"scorer": scorer, "iterations": score_iterations},
        "recovery": {"method": recovery_method, "iterations": recovery_iterations},
    }
    config = resolve_config(recipe, overrides)
    quiet = quiet or as_json
    result = compress(config, out_dir, progress=_progress(quiet), resume=resume, overwrite=overwrite)
    if as_json:
        _emit_json(result.report)
    elif not quiet:
        print_report(result.report, Console())
        if out_dir:
            Console().print(f"run folder: [bold]{out_dir}[/bold]")


@main.command()
@click.option("--model", required=True, help="Architecture name.")
@click.option("--weights", help="Weights file or name (latency does not depend on them).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--resolution", type=int, help="Input size; default the model's.")
@click.option("--repeats", type=int, default=10, show_default=True)
@click.option("--threads", type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def blocks(model, weights, batch_size, resolution, repeats, threads, device, quiet, as_json) -> None:
    """List droppable blocks in network order with their measured ΔLat."""
    from .latency import profile_blocks
    from .models import create_model
    from .models.blocks import find_blocks
    from .report import blocks_table

    network = create_model(model, weights=weights)
    size = network.model_spec.input_size
    candidates = find_blocks(network, size)
    profile = profile_blocks(network, candidates, batch_size, resolution or size, repeats,
                             threads=threads, device=device, progress=_progress(quiet or as_json))
    rows = [
        {"name": b.name, "stage": b.stage, "delta_lat": round(b.delta_lat, 3),
         "delta_lat_raw": round(b.delta_lat_raw, 3), "spread": [round(v, 3) for v in b.spread],
         "clamped": b.clamped}
        for b in profile.blocks
    ]
    if as_json:
        _emit_json({"model": model, "teacher_ms": profile.teacher_ms, "batch_size": batch_size,
                    "resolution": resolution or size, "all_dropped": profile.all_dropped, "blocks": rows})
    else:
        Console().print(blocks_table(rows, title=f"{model}: droppable blocks "
                                     f"(teacher {profile.teacher_ms:.1f} ms at batch {batch_size})"))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--repeats", type=int, help="Rounds of timing (default: twice the run's).")
@click.option("--threads", type=int)
@click.option("--device", help="Default: the run's device.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def latency(run_dir, repeats, threads, device, quiet, as_json) -> None:
    """Time the teacher and the compressed model of RUN_DIR, interleaved, in this process."""
    from .latency import compare_latency
    from .runs import load_run

    loaded = load_run(run_dir)
    config = loaded.config
    resolution = config.latency.resolution or loaded.teacher.model_spec.input_size
    comparison = compare_latency(
        {"teacher": loaded.teacher, "pruned": loaded.pruned}, config.latency.batch_size, resolution,
        repeats or 2 * config.latency.repeats, config.latency.warmup, threads or config.latency.threads,
        device or config.device, progress=_progress(quiet or as_json),
    )
    median, q25, q75 = comparison.reduction("pruned", "teacher")
    result = {
        "teacher_ms": comparison.median_ms("teacher"),
        "pruned_ms": comparison.median_ms("pruned"),
        "reduction": median,
        "reduction_spread": [q25, q75],
        "speedup": comparison.median_ms("teacher") / comparison.median_ms("pruned"),
        "batch_size": comparison.batch_size,
        "resolution": comparison.resolution,
        "threads": comparison.threads,
        "device": comparison.device,
    }
    if as_json:
        _emit_json(result)
    else:
        Console().print(
            f"teacher {result['teacher_ms']:.2f} ms, pruned {result['pruned_ms']:.2f} ms at batch "
            f"{result['batch_size']}: {100 * median:.1f}% faster (IQR {100 * q25:.1f}-{100 * q75:.1f}%), "
            f"speed-up {result['speedup']:.2f}x"
        )


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--data", "data_path", required=True, help="Labelled ImageFolder-style folder.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def evaluate(run_dir, data_path, batch_size, device, quiet, as_json) -> None:
    """Top-1/top-5 of the teacher and the compressed model of RUN_DIR on a labelled folder."""
    from .evaluate import evaluate_models
    from .runs import load_run

    loaded = load_run(run_dir)
    cfg = loaded.teacher.model_spec
    scores = evaluate_models({"teacher": loaded.teacher, "pruned": loaded.pruned}, data_path, cfg.mean,
                             cfg.std, cfg.input_size, batch_size=batch_size, device=device,
                             progress=_progress(quiet or as_json))
    result = {
        "teacher_top1": scores["teacher"]["top1"],
        "teacher_top5": scores["teacher"]["top5"],
        "pruned_top1": scores["pruned"]["top1"],
        "pruned_top5": scores["pruned"]["top5"],
        "count": scores["teacher"]["count"],
        "data": str(data_path),
    }
    if as_json:
        _emit_json(result)
    else:
        Console().print(
            f"{result['count']} images: teacher top-1 {result['teacher_top1']:.2f}%, "
            f"pruned top-1 {result['pruned_top1']:.2f}% "
            f"({result['pruned_top1'] - result['teacher_top1']:+.2f} points)"
        )


@main.command()
@click.option("--method", type=click.Choice(["bn-inversion", "diffusion"]), default="bn-inversion",
              show_default=True, help="BN-statistics inversion of the teacher, or a diffusion pipeline.")
@click.option("--model", required=True, help="Teacher architecture (see `dfpractise models`).")
@click.option("--weights", help="Teacher weights file or known weights name.")
@click.option("--num-images", type=int, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the images (PNG + index.json); an unfinished one is resumed.")
@click.option("--pipeline", help="diffusers pipeline folder or hub id (--method diffusion).")
@click.option("--steps", type=int, help="Optimisation (bn-inversion) or denoising (diffusion) steps.")
@click.option("--batch-size", type=int, help="Images made together.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Any other synthesizer setting, e.g. lr=0.1 or guidance_scale=3 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--rebuild-cache", "rebuild", is_flag=True, help="Replace images in --out made with other settings.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the quality report as JSON.")
@handle_errors
def synthesize(method, model, weights, num_images, out_dir, pipeline, steps, batch_size, options, seed, device,
               rebuild, quiet, as_json) -> None:
    """Make a synthetic tiny set for a teacher, with a quality report and a sample grid."""
    from .synthesis import synthesize_for_model

    settings = _parse_options(options, "--option")
    settings.update({k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None})
    result = synthesize_for_model(
        method, model, weights, num_images, out_dir, seed=seed, pipeline=pipeline, options=settings,
        device=device, rebuild=rebuild, progress=_progress(quiet or as_json),
    )
    if as_json:
        _emit_json(result.report)
    elif not quiet:
        report = result.report
        agreement = report.get("agreement")
        bn = report.get("bn_distance")
        Console().print(
            f"{len(result.tiny)} images in {result.folder}: teacher agrees with the intended class on "
            f"{100 * agreement:.1f}%" + (f", BN-statistics distance {bn:.1f}" if bn is not None else "")
            + f"; samples in {result.folder / 'samples.png'}"
        )


@main.command()
@click.option("--json", "as_json", is_flag=True)
def env(as_json) -> None:
    """Versions and devices, ready to paste into a bug report."""
    from .envinfo import env_table, environment_info

    info = environment_info()
    if as_json:
        _emit_json(info)
    else:
        Console().print(env_table(info))


@main.command("models")
@click.argument("pattern", required=False)
def models_command(pattern) -> None:
    """List registered architectures (optionally matching PATTERN, e.g. 'cifar*')."""
    from .models import list_models

    for name in list_models(pattern):
        click.echo(name)
