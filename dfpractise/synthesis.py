"""Make a synthetic tiny set on its own (``dfpractise synthesize``), without compressing anything.

Useful to look at the images and their quality report before spending a compression run on
them, and to prepare a set once for many runs: ``dfpractise run --source synthetic --cache-dir
DIR`` with the same settings reads the set this wrote instead of making it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .progress import Progress
from .report import save_sample_grid, write_json
from .sources import DiffusionSource, SourceContext, SyntheticSource, TinySet

METHOD_SOURCES = {"bn-inversion": "synthetic", "diffusion": "diffusion"}
QUALITY = "quality.json"
SAMPLES = "samples.png"


@dataclass
class SynthesisResult:
    tiny: TinySet
    report: dict[str, Any]
    folder: Path


def synthesize_for_model(
    method: str,
    model: str,
    weights: str | None,
    num_images: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    pipeline: str | None = None,
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    rebuild: bool = False,
    progress: Progress | None = None,
) -> SynthesisResult:
    """Synthesise ``num_images`` for ``model`` into ``out_dir`` (resumable), with a quality report."""
    from .engine import load_teacher

    if method not in METHOD_SOURCES:
        raise ConfigError(f"unknown synthesis method {method!r}; known: {', '.join(METHOD_SOURCES)}")
    if method == "diffusion" and not pipeline:
        raise ConfigError("--method diffusion needs --pipeline DIR_OR_HUB_ID (a diffusers pipeline)")
    if method != "diffusion" and pipeline:
        raise ConfigError(f"--pipeline is only used by --method diffusion, not {method}")
    teacher, _, sha = load_teacher(model, weights)
    options = dict(options or {})
    if method == "diffusion":
        source = DiffusionSource(pipeline, cache_dir=out_dir, rebuild_cache=rebuild, **options)
    else:
        source = SyntheticSource(cache_dir=out_dir, rebuild_cache=rebuild, **options)
    context = SourceContext.for_teacher(teacher.to(device), teacher_id=sha, device=device, progress=progress)
    tiny = source.load(num_images, teacher.model_spec.input_size, seed, context)
    folder = Path(out_dir)
    report = {"model": model, "weights": weights, **(tiny.report or {})}
    write_json(report, folder / QUALITY)
    save_sample_grid(tiny.images, tiny.labels, folder / SAMPLES)
    return SynthesisResult(tiny, report, folder)
