"""Sources that make their images: ``synthetic`` (BN-statistics inversion), ``generator`` (a
meta-learned generator, Fast-Datafree) and ``diffusion``.

Each wraps a synthesizer from the ``synthesizers`` package in the one source interface, so scoring
and recovery never know the images were made rather than found. The images live in a cache
folder (default: one per settings under ``$DFPRACTISE_CACHE/synthetic``) that a second run with
the same settings reuses and an interrupted run finishes; the set carries its intended classes as
labels and a quality report (teacher agreement, BN-statistics distance, feature diversity, class
histogram). With ``auto_synthesis`` the ``synthetic`` and ``generator`` sources first choose a few
settings for the teacher (``synthesizers.auto``: a short probe of a few declared candidates,
scored by synthesis-side signals only) and record the choice and the probe table in the report.
Under ``torchrun`` the ranks share the batches (``synthesizers.generate.Workers``); the cache
folder must then be one they all see (one machine, or a shared file system).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, synthesizer_errors
from ..models.adapter import spec_of
from ..progress import Progress
from .base import ImageSource, SourceContext, TinySet, register_source
from .real import check_request


class SynthesizedSource(ImageSource):
    """Shared plumbing: build the synthesizer from the context, run it through the cache.

    ``method`` names the registered synthesizer the source drives (``dfpractise synthesize
    --method``); ``takes_pipeline`` says whether its folder (``root``) is a generative pipeline.
    ``auto_synthesis``: choose the settings ``synthesizers.auto`` declares for ``method`` on a
    probe first; ``options`` given explicitly win over the choice.
    """

    method = ""
    takes_pipeline = False

    def __init__(self, cache_dir: str | Path | None = None, rebuild_cache: bool = False,
                 auto_synthesis: bool = False, **options: Any):
        if not isinstance(auto_synthesis, bool):
            raise ConfigError(f"auto_synthesis must be true or false, got {auto_synthesis!r}")
        if auto_synthesis:
            from synthesizers.auto import PLANS

            if self.method not in PLANS:
                raise ConfigError(f"the '{self.name}' source has no automatic settings (data.auto_synthesis); "
                                  f"they exist for {', '.join(sorted(PLANS))}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.rebuild_cache = rebuild_cache
        self.auto_synthesis = auto_synthesis
        self.options = options

    def config(self) -> dict[str, Any]:
        folder = str(self.cache_dir) if self.cache_dir is not None else None
        return {"name": self.name, "cache_dir": folder, "rebuild_cache": self.rebuild_cache,
                "auto_synthesis": self.auto_synthesis, **self.options}

    def build(self, context: SourceContext, **chosen: Any):  # -> synthesizers.Synthesizer
        """The synthesizer, from ``chosen`` settings (automatic ones) under the source's ``options``."""
        raise NotImplementedError

    def load(self, num_images: int, image_size: int, seed: int, context: SourceContext | None = None) -> TinySet:
        from synthesizers import quality_report, synthesize
        from synthesizers.cache import IMAGES, image_name
        from synthesizers.generate import Workers, set_settings

        from .. import distributed

        check_request(num_images, image_size)
        if context is None or context.teacher is None:
            raise ConfigError(f"the '{self.name}' source makes images for a teacher; it needs one in its context")
        progress = context.progress or Progress()
        with synthesizer_errors():
            num_classes = context.num_classes or spec_of(context.teacher).num_classes
            auto = self._choose(context, image_size, num_classes, seed, progress) if self.auto_synthesis else None
            synthesizer = self.build(context, **(auto["chosen"] if auto else {}))
            folder = self.cache_dir or default_cache_folder(
                set_settings(synthesizer, num_images, image_size, num_classes, seed)
            )
            with progress.steps(f"Synthesising ({synthesizer.name})") as on_step:
                made = synthesize(
                    synthesizer, num_images, image_size, num_classes, seed, folder,
                    on_step=on_step, log=progress.log, rebuild=self.rebuild_cache,
                    workers=Workers(distributed.rank(), distributed.world_size(), distributed.all_gather_object)
                    if distributed.active() else None,
                )
            report = quality_report(context.teacher, made.images, made.labels, context.mean, context.std,
                                    context.class_names)
        report.update(method=synthesizer.name, cache=str(made.folder), generated_batches=made.generated_batches,
                      synthesis_seconds=round(made.seconds, 2), settings=made.settings)
        if auto is not None:
            report["auto_settings"] = auto
        files = [str(made.folder / IMAGES / image_name(i)) for i in range(len(made.images))]
        info = {"source": self.name, "method": synthesizer.name, "cache": str(made.folder), "seed": seed}
        names = list(context.class_names) if context.class_names else None
        return TinySet(made.images, made.labels, files, names, info=info, report=report)

    def _choose(self, context: SourceContext, image_size: int, num_classes: int, seed: int,
                progress: Progress) -> dict[str, Any]:
        """``synthesizers.auto.choose_settings`` for this teacher, or its record from an earlier run.

        The choice is a pure function of what the record is keyed by (teacher, method, explicit
        options, image size, classes, seed, input normalisation, device, the declared plan), so
        a rerun or a resumed run reads it instead of probing again.
        """
        from synthesizers import model_fingerprint
        from synthesizers.auto import PLANS, choose_settings

        from .. import distributed
        from ..report import write_json

        teacher_id = context.teacher_id or model_fingerprint(context.teacher)
        plan = PLANS[self.method]
        key = {
            "format": AUTO_FORMAT, "method": self.method, "teacher": teacher_id, "options": self.options,
            "image_size": image_size, "num_classes": num_classes, "seed": seed, "mean": list(context.mean),
            "std": list(context.std), "device": str(context.device).split(":")[0],
            "candidates": list(plan.candidates), "shrink": plan.shrink,
        }
        path = auto_record(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("key") == json.loads(json.dumps(key)):
                progress.log(f"automatic {self.method} settings: read from {path}")
                return {**record["choice"], "record": str(path), "reused": True}
        except (OSError, ValueError, AttributeError):
            pass  # no record (or an unreadable one): probe
        with progress.steps(f"Choosing {self.method} settings") as on_step:
            choice = choose_settings(
                context.teacher, self.method, self.options, image_size, num_classes, seed, mean=context.mean,
                std=context.std, teacher_id=teacher_id, device=context.device, on_step=on_step, log=progress.log,
            ).to_report()

        def keep() -> None:
            try:
                write_json({"key": key, "choice": choice}, path)
            except OSError as err:  # only a rerun's shortcut: the run goes on without it
                progress.log(f"automatic settings not recorded in {path} ({err})")

        distributed.on_main(keep)
        return {**choice, "record": str(path), "reused": False}


AUTO_FORMAT = 1  # of the records of automatic settings: a new format never reads an old record


def auto_record(key: dict[str, Any]) -> Path:
    """``$DFPRACTISE_CACHE/auto-settings/<method>-<hash of key>.json``: one record per probe."""
    from ..models.weights import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "auto-settings" / f"{key['method']}-{digest}.json"


def default_cache_folder(settings: dict[str, Any]) -> Path:
    """``$DFPRACTISE_CACHE/synthetic/<method>-<hash of settings>``: same settings, same folder."""
    from ..models.weights import cache_dir

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "synthetic" / f"{settings['method']}-{key}"


@register_source("synthetic")
class SyntheticSource(SynthesizedSource):
    """Data-free images inverted from the teacher's BatchNorm statistics (DeepInversion).

    ``options`` are ``synthesizers.BNInversion`` settings (steps, lr, batch_size, loss weights...).
    """

    method = "bn-inversion"

    def build(self, context: SourceContext, **chosen: Any):
        from synthesizers import create_synthesizer

        return create_synthesizer(
            "bn-inversion", teacher=context.teacher, mean=context.mean, std=context.std,
            teacher_id=context.teacher_id, device=context.device, **{**chosen, **self.options},
        )


@register_source("generator")
class GeneratorSource(SynthesizedSource):
    """Data-free images from a generator meta-learned on the teacher (Fast-Datafree): the same
    losses as ``synthetic``, a few steps per batch instead of hundreds.

    ``options`` are ``synthesizers.GeneratorSynthesizer`` settings (steps, meta_steps, lr,
    batch_size, loss weights...).
    """

    method = "generator"

    def build(self, context: SourceContext, **chosen: Any):
        from synthesizers import create_synthesizer

        return create_synthesizer(
            "generator", teacher=context.teacher, mean=context.mean, std=context.std,
            teacher_id=context.teacher_id, device=context.device, **{**chosen, **self.options},
        )


@register_source("diffusion")
class DiffusionSource(SynthesizedSource):
    """Images from a diffusers pipeline (local folder or hub id), one per intended teacher class.

    ``options`` are ``synthesizers.diffusion.DiffusionSynthesizer`` settings (prompt_template,
    guidance_scale, steps, batch_size, class_ids...). Class names come from the teacher.
    """

    method = "diffusion"
    takes_pipeline = True

    def __init__(self, root: str | None = None, cache_dir: str | Path | None = None,
                 rebuild_cache: bool = False, auto_synthesis: bool = False, **options: Any):
        if not root:
            raise ConfigError("the 'diffusion' source needs a pipeline: pass --data PIPELINE_DIR_OR_HUB_ID")
        super().__init__(cache_dir, rebuild_cache, auto_synthesis, **options)
        self.root = str(root)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "root": self.root}

    def build(self, context: SourceContext, **chosen: Any):
        from synthesizers import create_synthesizer

        names = list(context.class_names) if context.class_names else None
        return create_synthesizer(
            "diffusion", pipeline=self.root, class_names=names, num_classes=context.num_classes,
            device=context.device, **{**chosen, **self.options},
        )
