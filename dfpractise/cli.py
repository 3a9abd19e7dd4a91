"""The ``dfpractise`` command: thin Click wrappers over the library.

Each command parses options, calls one library function, and renders its result as rich tables
(or one JSON object with ``--json``). User mistakes arrive as ``DFPractiseError`` and are printed
as one line with a non-zero exit; a traceback means a bug.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import click
from rich.console import Console

from .config import RegistryRef, setting
from .envinfo import check_device
from .models.adapter import spec_of
from .errors import ConfigError, DFPractiseError
from .export import EXPORT_FORMATS
from .onnx_graph import EXPORTERS
from .sources import SOURCES
from .sweep import BASELINES as SWEEP_BASELINES
from .synthesis import synthesis_sources

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
SHARED_EXIT_DELAY_S = 2.0  # a rank other than 0 waits this long before exiting on an error rank 0 shows
SEP = "__"  # a setting's dotted path as a Python parameter name: data.num_images -> data__num_images
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_FORBIDDEN = (errno.EACCES, errno.EPERM)


def _console() -> Console:
    return Console(stderr=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and an exit code.

    An ``OSError`` naming a file (a full disk, a read-only or forbidden folder, an ``--out`` the
    system will not create) is the machine's answer, not a bug: it gets one line too, here, so no
    command needs its own handling of it.

    Under ``torchrun`` an error every rank raised alike (``distributed.is_shared``) and Ctrl-C,
    which reaches every rank, are said once, by rank 0; each rank exits with the same code, the
    others a moment after rank 0 (torchrun stops every worker as soon as one has exited).
    """
    from . import distributed

    def say(line: str, error: BaseException | None = None) -> None:
        if distributed.is_main() or (error is not None and not distributed.is_shared(error)):
            click.echo(line, err=True)
        elif distributed.from_environment().active:
            time.sleep(SHARED_EXIT_DELAY_S)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DFPractiseError as error:
            say(f"error: {error}", error)
            sys.exit(EXIT_USER_ERROR)
        except OSError as error:
            if error.filename is None:
                raise
            say(f"error: {_os_error_line(error)}", error)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            say("interrupted: finished work is kept (phases in the run folder, batches of synthetic "
                "images in their cache); run the same command with --resume to continue")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def _os_error_line(error: OSError) -> str:
    """What an OSError on ``error.filename`` means for the user, in one line."""
    path, reason = error.filename, error.strerror or type(error).__name__
    if error.errno in _DISK_FULL:
        return (f"cannot write {path}: {reason}; finished work is kept (a run folder's phases, a synthetic "
                "cache's batches): once there is space, the same command continues it (run: with --resume)")
    elsewhere = "choose a folder you can write (--out, --cache-dir, $DFPRACTISE_CACHE)"
    if error.errno == errno.EROFS:
        return f"cannot write {path}: {reason}; {elsewhere}"
    if error.errno in _FORBIDDEN:
        return f"no permission for {path} ({reason}); {elsewhere}"
    return f"cannot use {path}: {reason}"


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _parse_value(text: str) -> Any:
    """A value typed on the command line, read as a recipe reads YAML (2, 0.1, 1e-3, true, [1, 2], text)."""
    from .recipe import read_yaml

    if not text.strip():
        return None
    return read_yaml(text)


def _parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs to a dict, values as ``_parse_value`` reads them."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = _parse_value(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {pair!r}: the value is not a number, word or list") from None
    return options


def setting_option(*flags: str, path: str, declared_default: bool = False, **kwargs: Any) -> Callable:
    """An option that sets the run setting at ``path`` (``dfpractise.config``).

    Its help, type and choices (for settings naming a registered plug-in) come from the setting's
    declaration. Not given, it stays ``None`` and leaves the recipe's value, unless
    ``declared_default`` asks for the declared default (commands without a recipe).
    """
    section, name = setting(path)
    field = section.model_fields[name]
    kinds = [a for a in get_args(field.annotation) if a is not type(None)] or [field.annotation]
    ref = next((m for m in field.metadata if isinstance(m, RegistryRef)), None)
    kwargs.setdefault("help", field.description)
    if declared_default:
        kwargs.update(default=field.get_default(call_default_factory=True), show_default=True)
    else:
        kwargs.setdefault("default", None)
    if ref is not None:
        kwargs.setdefault("type", click.Choice(ref.get().names()))
    elif get_origin(field.annotation) is Literal:
        kwargs.setdefault("type", click.Choice(get_args(field.annotation)))
    elif kinds[0] is bool and "/" not in flags[0]:
        kwargs.setdefault("is_flag", True)
    elif kinds[0] in (int, float):
        kwargs.setdefault("type", kinds[0])
    return click.option(*flags, path.replace(".", SEP), **kwargs)


def settings_from_options(options: dict[str, Any], pairs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides of the ``setting_option`` options given, then of ``--set KEY=VALUE`` pairs.

    A nested dict in the shape of a recipe; both target forms given is left for validation to
    refuse, not settled here.
    """
    given = {key.replace(SEP, "."): value for key, value in options.items() if value is not None}
    for key, value in _parse_options(pairs, "--set").items():
        try:
            setting(key)
        except ConfigError as err:
            raise ConfigError(f"--set {key}: {err}") from None
        given[key] = value
    tree: dict[str, Any] = {}
    for key, value in given.items():
        *parents, name = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return tree


def model_options(command: Callable) -> Callable:
    """The options that name a model and say what it does not: reference, weights, builder keywords,
    input size and statistics (``run`` and ``blocks``)."""
    for option in reversed([
        setting_option("--model", path="model", required=command.__name__ != "run"),
        setting_option("--weights", path="weights"),
        click.option("--model-option", "model_option_pairs", multiple=True, metavar="KEY=VALUE",
                     help="Keyword for the model's builder, e.g. image_size=32 (repeatable)."),
        setting_option("--input-size", path="input_size", type=str, metavar="N|3xNxN"),
        setting_option("--mean", path="mean", type=str, metavar="R,G,B"),
        setting_option("--std", path="std", type=str, metavar="R,G,B"),
    ]):
        command = option(command)
    return command


def training_options(command: Callable) -> Callable:
    """The options of how the pruned model is recovered and where (``run`` and ``sweep``)."""
    for option in reversed([
        setting_option("--recovery", path="recovery.method"),
        setting_option("--recovery-iterations", path="recovery.iterations"),
        setting_option("--teacher-views", path="recovery.teacher_views"),
        setting_option("--device", path="device"),
        setting_option("--precision", path="precision"),
        setting_option("--seed", path="seed"),
    ]):
        command = option(command)
    return command


def _with_model_options(overrides: dict[str, Any], pairs: tuple[str, ...]) -> dict[str, Any]:
    options = _parse_options(pairs, "--model-option")
    return {**overrides, "model_options": options} if options else overrides


def _progress(quiet: bool):
    from .progress import Progress

    return Progress(quiet=quiet, console=_console())


class UsageLine(click.ClickException):
    """A usage error (an option out of its range, a path of the wrong kind) shown as every other
    error is: one line, ``error: ...``, exit code 2."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, error: click.UsageError):
        command = error.ctx.command_path if error.ctx is not None else "dfpractise"
        super().__init__(f"{error.format_message()} (see {command} --help)")

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class OneLineGroup(click.Group):
    """The command group; its commands' usage errors are ``UsageLine`` errors."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            raise UsageLine(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise UsageLine(error) from None


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfpractise")
def main() -> None:
    """Make a pretrained classifier faster by dropping residual blocks, with few or no images."""


@main.command()
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe; options below override it.")
@model_options
@setting_option("--source", path="data.source", type=click.Choice(SOURCES.names()))
@setting_option("--data", path="data.path")
@setting_option("--num-images", path="data.num_images")
@setting_option("--class-balanced/--no-class-balanced", path="data.class_balanced")
@click.option("--synthesis-option", "synthesis_options", multiple=True, metavar="KEY=VALUE",
              help="Synthesizer setting for synthetic/diffusion sources, e.g. steps=200 (repeatable).")
@setting_option("--cache-dir", path="data.cache_dir")
@setting_option("--rebuild-cache", path="data.rebuild_cache")
@setting_option("--auto-synthesis", path="data.auto_synthesis")
@setting_option("--save-samples", path="data.save_samples")
@setting_option("--ood-data", path="data.ood_path")
@setting_option("--ood-images", path="data.ood_images")
@setting_option("--eval-data", path="data.eval_path")
@setting_option("--latency-reduction", path="latency_reduction")
@setting_option("--drop", path="drop")
@setting_option("--scorer", path="scoring.scorer")
@setting_option("--selection", path="selection")
@setting_option("--trials", path="trials.sets", metavar="N")
@training_options
@setting_option("--score-iterations", path="scoring.iterations")
@setting_option("--batch-size", path="latency.batch_size")
@setting_option("--resolution", path="latency.resolution")
@setting_option("--latency-repeats", path="latency.repeats")
@setting_option("--threads", path="latency.threads")
@setting_option("--latency-backend", path="latency.backend")
@setting_option("--latency-table", path="latency.table")
@setting_option("--remeasure-latency", path="latency.remeasure")
@click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE",
              help="Any setting by its recipe key, e.g. recovery.lr=0.01 or data.synthesis.steps=50 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out where it stopped (a finished run is only reported).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@handle_errors
def run(recipe, model_option_pairs, synthesis_options, set_pairs, out_dir, resume, overwrite, quiet, as_json,
        **settings) -> None:
    """Compress a model: time blocks, score them, drop the best, recover, evaluate, save.

    Under torchrun (torchrun --nproc_per_node N -m dfpractise run ...) the ranks share synthesis,
    scoring and recovery; rank 0 times latency, evaluates and writes the run folder.
    """
    from . import distributed
    from .engine import compress
    from .recipe import overlay, resolve_config
    from .report import print_report

    if resume and not out_dir:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    if resume and recipe is None and (Path(out_dir) / "recipe.yaml").exists():
        recipe = str(Path(out_dir) / "recipe.yaml")
    overrides = _with_model_options(settings_from_options(settings, set_pairs), model_option_pairs)
    synthesis = _parse_options(synthesis_options, "--synthesis-option")
    if synthesis:
        overrides = overlay({"data": {"synthesis": synthesis}}, overrides, keep_none=True)
    config = resolve_config(recipe, overrides)
    quiet = quiet or as_json
    check_device(config.device)  # before a rank asks for cuda:LOCAL_RANK
    with distributed.launched(config.device):
        result = compress(config, out_dir, progress=_progress(quiet), resume=resume, overwrite=overwrite)
    if not distributed.is_main():
        return
    if as_json:
        _emit_json(result.report)
    elif not quiet:
        print_report(result.report, Console())
        if out_dir:
            Console().print(f"run folder: [bold]{out_dir}[/bold]")


class ListOptionCommand(click.Command):
    """A command whose ``list_options`` take every value that follows them, up to the next option:
    ``--targets 0.1 0.2 0.3`` (Click's own options take a fixed number of values)."""

    list_options: tuple[str, ...] = ("--targets",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_list_options(args, self.list_options))


def spread_list_options(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """``--targets a b`` as ``--targets a --targets b``. A value may be negative (``-0.1``): it is
    then refused by the command as out of range, not taken for an unknown option."""
    spread: list[str] = []
    current, given = None, False
    for index, arg in enumerate(args):
        if current is not None and not (arg.startswith("-") and not _is_number(arg)):
            spread += [current, arg]
            given = True
            continue
        if current is not None and not given:
            spread.append(current)  # no value: Click says so
        current, given = None, False
        if arg == "--":
            return spread + args[index:]
        if arg in flags:
            current = arg
        elif any(arg.startswith(f"{flag}=") for flag in flags):
            current, given = arg.partition("=")[0], True
            spread.append(arg)
        else:
            spread.append(arg)
    if current is not None and not given:
        spread.append(current)
    return spread


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@main.command("sweep", cls=ListOptionCommand)
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe; options below override it.")
@click.option("--targets", multiple=True, type=float, required=True, metavar="CUT...",
              help="Latency cuts to make a model for, e.g. --targets 0.1 0.2 0.3 0.4.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Sweep folder: one run folder per target, sweep.json, sweep.png. An unfinished sweep "
              "there is resumed, finished targets are reused.")
@click.option("--baseline", type=click.Choice(SWEEP_BASELINES),
              help="Also filter-prune (Torch-Pruning, L1) at each PRACTISE model's measured cut, same recovery.")
@setting_option("--model", path="model")
@setting_option("--weights", path="weights")
@setting_option("--source", path="data.source", type=click.Choice(SOURCES.names()))
@setting_option("--data", path="data.path")
@setting_option("--num-images", path="data.num_images")
@setting_option("--ood-data", path="data.ood_path")
@setting_option("--ood-images", path="data.ood_images")
@setting_option("--eval-data", path="data.eval_path")
@training_options
@setting_option("--latency-repeats", path="latency.repeats")
@click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE",
              help="Any setting by its recipe key, e.g. recovery.lr=0.01 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json on stdout.")
@handle_errors
def sweep_command(recipe, targets, out_dir, baseline, set_pairs, quiet, as_json, **settings) -> None:
    """Time and score the blocks once, then make, recover and evaluate one model per latency target.

    Writes a table and sweep.png (measured latency cut against top-1, with the teacher; with
    --baseline the filter-pruning curve beside PRACTISE's): the picture to choose a target from. A
    target the model cannot reach is a row marked unreachable, not a failed sweep.
    """
    from .recipe import resolve_config
    from .report import sweep_table
    from .sweep import check_targets, sweep

    targets = check_targets(targets)
    overrides = settings_from_options(settings, set_pairs)
    config = resolve_config(recipe, {**overrides, "latency_reduction": targets[0]})  # clears a drop count
    quiet = quiet or as_json
    try:
        result = sweep(config, targets, out_dir, baseline=baseline, progress=_progress(quiet))
    except KeyboardInterrupt:
        click.echo("interrupted: finished targets are kept, an unfinished one in its run folder; run the same "
                   "command again to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    record = result.to_json()
    if as_json:
        _emit_json(record)
    elif not quiet:
        Console().print(sweep_table(record))
        Console().print(f"sweep folder: [bold]{out_dir}[/bold]"
                        + (f", plot: [bold]{result.plot}[/bold]" if result.plot else ""))


@main.command()
@model_options
@setting_option("--batch-size", path="latency.batch_size", declared_default=True)
@setting_option("--resolution", path="latency.resolution")
@setting_option("--repeats", path="latency.repeats", declared_default=True)
@setting_option("--threads", path="latency.threads")
@setting_option("--device", path="device", declared_default=True)
@setting_option("--latency-table", path="latency.table")
@setting_option("--remeasure-latency", path="latency.remeasure")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def blocks(model_option_pairs, quiet, as_json, **settings) -> None:
    """List droppable blocks in network order with their measured ΔLat (weights: random unless given).

    The ΔLat table is the one ``run`` uses with the same settings (cached per machine); with
    ``--latency-table FILE`` it is also written there, to carry to ``run`` on another machine.
    """
    from .config import RunConfig
    from .engine import load_teacher
    from .latency import Timing, profile_blocks
    from .latency_table import cached_profile
    from .models.adapter import adapter_for
    from .report import blocks_table

    config = RunConfig.from_dict(_with_model_options(settings_from_options(settings), model_option_pairs))
    check_device(config.device)
    model = config.model
    network, _, _ = load_teacher(model, config.weights or "none", config)
    size = spec_of(network).input_size
    candidates = adapter_for(network, keep_stage_first=config.blocks.keep_stage_first,
                             halves=config.blocks.halves).blocks
    timing = Timing.from_config(config.latency, size, config.device)
    progress = _progress(quiet or as_json)
    pool = config.latency.pool_identical
    profile = cached_profile(
        network, candidates, timing, pool,
        lambda: profile_blocks(network, candidates, timing, pool_identical=pool, progress=progress,
                               method=config.latency.profile),
        table=config.latency.table, remeasure=config.latency.remeasure, profile=config.latency.profile,
        log=progress.log,
    )
    rows = [
        {"name": b.name, "stage": b.stage, "unit": "block" if unit.part is None else "branch", "of": unit.module,
         "delta_lat": round(b.delta_lat, 3), "delta_lat_raw": round(b.delta_lat_raw, 3),
         "spread": [round(v, 3) for v in b.spread], "clamped": b.clamped}
        for unit, b in zip(candidates, profile.blocks, strict=True)
    ]
    if as_json:
        _emit_json({"model": model, "teacher_ms": profile.teacher_ms, "batch_size": timing.batch_size,
                    "resolution": timing.resolution, "all_dropped_cut_percent": profile.all_dropped_cut_percent,
                    "blocks": rows})
    else:
        Console().print(blocks_table(rows, title=f"{model}: droppable blocks "
                                     f"(teacher {profile.teacher_ms:.1f} ms at batch {timing.batch_size})"))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--repeats", type=click.IntRange(min=1), help="Rounds of timing (default: twice the run's).")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--device", help="Default: the run's device.")
@setting_option("--backend", path="latency.backend", help="Runtime to time on: torch (eager PyTorch) or "
                "onnxruntime (both models exported to ONNX, CPU). Default: the run's (latency.backend).")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def latency(run_dir, repeats, threads, device, latency__backend, quiet, as_json) -> None:
    """Time the teacher and the compressed model of RUN_DIR, interleaved, in this process."""
    from dataclasses import replace

    from .backends import check_backend
    from .latency import Timing, compare_latency
    from .runs import load_run

    loaded = load_run(run_dir)
    config = loaded.config
    check_device(device or config.device)
    timing = Timing.from_config(config.latency, spec_of(loaded.teacher).input_size, device or config.device)
    timing = replace(timing, repeats=repeats or 2 * timing.repeats, threads=threads or timing.threads,
                     backend=latency__backend or timing.backend)
    check_backend(timing)
    comparison = compare_latency({"teacher": loaded.teacher, "pruned": loaded.pruned}, timing,
                                 progress=_progress(quiet or as_json))
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
        "backend": comparison.backend,
        "memory_format": comparison.memory_format,
    }
    if as_json:
        _emit_json(result)
    else:
        Console().print(
            f"{result['backend']} ({result['memory_format']}): teacher {result['teacher_ms']:.2f} ms, pruned {result['pruned_ms']:.2f} ms at batch "
            f"{result['batch_size']}: {100 * median:.1f}% faster (IQR {100 * q25:.1f}-{100 * q75:.1f}%), "
            f"speed-up {result['speedup']:.2f}x"
        )


@main.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "format_", required=True, type=click.Choice(EXPORT_FORMATS.names()),
              help="onnx (checked in onnxruntime), torchscript (traced; checked with torch.jit.load) or "
              "safetensors (weights plus the manifest that rebuilds the model: dfpractise.load(FILE)).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset (default: the exporter's).")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True,
              help="Leave the batch axis free (checked at two batch sizes), or fix it to --batch-size.")
@click.option("--batch-size", type=click.IntRange(min=1), help="The batch of a --static-batch file (default 1).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default=EXPORTERS[0], show_default=True,
              help="ONNX exporter: torch's TorchScript-based one or torch.export's (dynamo, needs onnxscript).")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def export_command(run_dir, format_, out_path, opset, dynamic_batch, batch_size, exporter, quiet, as_json) -> None:
    """Write the compressed model of RUN_DIR to a file a runtime loads, and check it there.

    Input: float32 N x 3 x H x W, normalised with the run's mean and std (recorded in the file);
    output: logits. The file is kept only if its logits match PyTorch's on the run's tiny-set images
    (random inputs when they cannot be read) within 1e-4 x max(1, max |logit|).
    """
    from .export import export_run

    result = export_run(run_dir, out_path, format_, dynamic_batch=dynamic_batch, batch_size=batch_size,
                        opset=opset, exporter=exporter)
    if as_json:
        _emit_json(result.to_json())
    elif not quiet:
        Console().print(
            f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.1f} MB): max |diff| "
            f"{result.max_abs_diff:.2e} <= {result.allowed:.2e} vs PyTorch in {result.runtime}, batch "
            f"{' and '.join(map(str, result.batch_sizes))}, on {result.inputs}"
        )


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--data", "data_path", required=True, help="Labelled ImageFolder-style folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def evaluate(run_dir, data_path, batch_size, device, quiet, as_json) -> None:
    """Top-1/top-5 of the teacher and the compressed model of RUN_DIR on a labelled folder."""
    from .evaluate import evaluate_models
    from .runs import load_run

    check_device(device)
    loaded = load_run(run_dir)
    cfg = spec_of(loaded.teacher)
    scores = evaluate_models({"teacher": loaded.teacher, "pruned": loaded.pruned}, data_path, cfg.mean,
                             cfg.std, cfg.input_size, batch_size=batch_size, device=device,
                             progress=_progress(quiet or as_json), spec=cfg)
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
@click.option("--method", type=click.Choice(sorted(synthesis_sources())), default="bn-inversion",
              show_default=True,
              help="BN-statistics inversion of the teacher, a generator meta-learned on it, or a diffusion pipeline.")
@model_options
@click.option("--num-images", type=int, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the images (PNG + index.json); an unfinished one is resumed.")
@click.option("--pipeline", help="diffusers pipeline folder or hub id (--method diffusion).")
@click.option("--steps", type=int,
              help="Optimisation steps per batch (bn-inversion, generator) or denoising steps (diffusion).")
@click.option("--batch-size", type=int, help="Images made together.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Any other synthesizer setting, e.g. lr=0.1 or guidance_scale=3 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--rebuild-cache", "rebuild", is_flag=True, help="Replace images in --out made with other settings.")
@click.option("--auto-synthesis", "auto", is_flag=True,
              help="Choose a few settings for this teacher on a short probe first (bn-inversion, generator); "
                   "settings given win. The choice and the probe table go into the quality report.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the quality report as JSON.")
@handle_errors
def synthesize(method, model, weights, model_option_pairs, input_size, mean, std, num_images, out_dir, pipeline,
               steps, batch_size, options, seed, device, rebuild, auto, quiet, as_json) -> None:
    """Make a synthetic tiny set for a teacher, with a quality report and a sample grid.

    Under torchrun (torchrun --nproc_per_node N -m dfpractise synthesize ...) the ranks share the
    batches; the images are the bytes one process would make.
    """
    from . import distributed
    from .synthesis import synthesize_for_model

    check_device(device)
    settings = _parse_options(options, "--option")
    settings.update({k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None})
    described = _with_model_options(settings_from_options({"input_size": input_size, "mean": mean, "std": std}),
                                    model_option_pairs)
    with distributed.launched(device):
        result = synthesize_for_model(
            method, model, weights, num_images, out_dir, seed=seed, pipeline=pipeline, options=settings,
            device=device, rebuild=rebuild, auto=auto, progress=_progress(quiet or as_json),
            model_settings=described,
        )
    if not distributed.is_main():
        return
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
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--data", "data_path", required=True, help="Labelled ImageFolder-style folder, e.g. cifar10-jpeg/val.")
@click.option("--corruptions", help="Comma-separated corruption names (default: every registered one).")
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Comma-separated, 1 (mild) to 5.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the corruptions' randomness.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Score this many images, evenly spread over the folder.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for robustness.json and robustness.png (default: robustness/ in the first run folder).")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def robustness(run_dirs, data_path, corruptions, severities, seed, batch_size, limit, device, out_dir, quiet,
               as_json) -> None:
    """Teacher and compressed models of RUN_DIR... under common corruptions (CIFAR-10-C style)."""
    from .report import robustness_table
    from .robustness import robustness_of_runs

    check_device(device)
    names = [c.strip() for c in corruptions.split(",") if c.strip()] if corruptions else None
    try:
        levels = [int(s) for s in severities.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--severities expects numbers from 1 to 5 separated by commas, got {severities!r}") from None
    result, out = robustness_of_runs(run_dirs, data_path, out_dir, corruptions=names, severities=levels, seed=seed,
                                     batch_size=batch_size, device=device, limit=limit,
                                     progress=_progress(quiet or as_json))
    if as_json:
        _emit_json({**result.to_json(), "out": str(out)})
    elif not quiet:
        Console().print(robustness_table(result))
        Console().print(f"written: {out}")


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
