"""Make a synthetic tiny set on its own (``dfpractise synthesize``), without compressing anything.

Useful to look at the images and their quality report before spending a compression run on
them (under ``torchrun`` the ranks share the batches; rank 0 writes the report), and to
prepare a set once for many runs: ``dfpractise run --source synthetic --cache-dir
DIR`` with the same settings reads the set this wrote instead of making it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import distributed
from .errors import ConfigError
from .progress import Progress
from .report import save_sample_grid, write_json
from .sources import SOURCES, SourceContext, TinySet
from .sources.synthetic import SynthesizedSource
QUALITY = "quality.json"
SAMPLES = "samples.png"


@dataclass
class SynthesisResult:
    tiny: TinySet
    report: dict[str, Any]
    folder: Path


def synthesis_sources() -> dict[str, type[SynthesizedSource]]:
    """The registered sources that make their images, by the synthesizer each drives."""
    found = (SOURCES.get(name) for name in SOURCES.names())
    return {kind.method: kind for kind in found if isinstance(kind, type) and issubclass(kind, SynthesizedSource)}


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
    auto: bool = False,
    progress: Progress | None = None,
    model_settings: dict[str, Any] | None = None,
) -> SynthesisResult:
    """Synthesise ``num_images`` for ``model`` into ``out_dir`` (resumable), with a quality report.

    ``model_settings``: the run settings that describe the model beyond its name and weights
    (``model_options``, ``input_size``, ``mean``, ``std``). ``auto``: choose the synthesizer's
    automatic settings on a probe first (``synthesizers.auto``; ``options`` win).
    """
    from .config import RunConfig
    from .engine import load_teacher

    sources = synthesis_sources()
    if method not in sources:
        raise ConfigError(f"unknown synthesis method {method!r}; known: {', '.join(sources)}")
    kind = sources[method]
    if kind.takes_pipeline and not pipeline:
        raise ConfigError(f"--method {method} needs --pipeline DIR_OR_HUB_ID (a diffusers pipeline)")
    if not kind.takes_pipeline and pipeline:
        users = ", ".join(m for m, k in sources.items() if k.takes_pipeline)
        raise ConfigError(f"--pipeline is only used by --method {users}, not {method}")
    described = RunConfig.from_dict({"model": model, "weights": weights, **(model_settings or {})})
    teacher, _, sha = load_teacher(model, weights, described)
    settings = {"cache_dir": out_dir, "rebuild_cache": rebuild, "auto_synthesis": auto, **(options or {})}
    source = kind(pipeline, **settings) if kind.takes_pipeline else kind(**settings)
    context = SourceContext.for_teacher(teacher.to(device), teacher_id=sha, device=device, progress=progress)
    tiny = source.load(num_images, context.input_size, seed, context)
    folder = Path(out_dir)
    report = {"model": model, "weights": weights, **(tiny.report or {})}
    distributed.on_main(lambda: (write_json(report, folder / QUALITY),
                                 save_sample_grid(tiny.images, tiny.labels, folder / SAMPLES)) and None)
    return SynthesisResult(tiny, report, folder)
