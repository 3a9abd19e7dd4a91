"""Synthetic images of the teacher's classes from a pretrained diffusion model (diffusers).

Inverting the teacher (BN-statistics inversion) makes images that only the teacher finds
convincing. A diffusion model trained on natural images makes natural-looking images, which
transfer better to the student when the teacher's classes are ones the model knows: a
class-conditional model (DiT on ImageNet) is asked for class ids, a text-to-image model
(Stable Diffusion) for "a photo of a <class name>". Any pipeline saved with ``save_pretrained``
works. It is loaded on first use (its kind and class mapping are part of the cache key, so a
cached set still loads it once); diffusers is an optional dependency
(``pip install 'dfpractise[diffusion]'``).
"""

from __future__ import annotations

import inspect
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .base import BatchResult, StepReporter, Synthesizer, register_synthesizer
from .errors import ConfigError, DataError, SynthesisError

CLASS_CONDITIONAL = "class-conditional"
TEXT_TO_IMAGE = "text-to-image"
INSTALL_HINT = "pip install 'dfpractise[diffusion]'"
MODEL_INDEX = "model_index.json"
# What a Hugging Face hub id looks like ("owner/name"); anything else must be a local folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# diffusers' DiTPipeline hard-codes 1000 as the "no class" label used for classifier-free guidance.
_DIT_NULL_CLASS = 1000


@register_synthesizer("diffusion")
class DiffusionSynthesizer(Synthesizer):
    """Images from a diffusers pipeline: class-conditional (``class_labels``) or text-to-image (``prompt``).

    ``pipeline`` is a folder written by ``DiffusionPipeline.save_pretrained`` or a hub id (which
    needs a network). Teacher class ``i`` becomes pipeline class ``class_ids[i]`` (class-conditional;
    by default the ids the pipeline gives ``class_names``, else ``i`` itself) or the prompt
    ``prompt_template`` with ``{class}`` replaced by ``class_names[i]`` (text-to-image).
    ``num_classes`` (the teacher's, optional) lets the mapping be checked before any image is made.
    """

    def __init__(
        self,
        pipeline: str,
        class_names: list[str] | None = None,
        *,
        num_classes: int | None = None,
        class_ids: list[int] | None = None,
        prompt_template: str = "a photo of a {class}",
        negative_prompt: str | None = None,
        guidance_scale: float = 4.0,
        steps: int = 25,
        batch_size: int = 8,
        device: str = "cpu",
        half: bool | None = None,
    ):
        self.steps = _positive_int("steps", steps)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.steps_per_batch = self.steps
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ConfigError(f"diffusion guidance_scale must be a number >= 0, got {guidance_scale!r}")
        self.guidance_scale = float(guidance_scale)
        self.num_classes = None if num_classes is None else _positive_int("num_classes", num_classes)
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        if self.class_names is not None and not self.class_names:
            raise ConfigError("diffusion class_names is empty; give one name per teacher class")
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"diffusion class_names has {len(self.class_names)} names but the teacher has "
                f"{self.num_classes} classes; give one name per teacher class"
            )
        self.class_ids = None if class_ids is None else _class_id_list(class_ids)
        if self.class_ids is not None and self.num_classes is not None and len(self.class_ids) != self.num_classes:
            raise ConfigError(
                f"diffusion class_ids has {len(self.class_ids)} ids but the teacher has "
                f"{self.num_classes} classes; give one pipeline class id per teacher class"
            )
        if "{class}" not in prompt_template:
            raise ConfigError(
                f"diffusion prompt_template {prompt_template!r} has no '{{class}}' placeholder, so every "
                "class would get the same prompt; write it like 'a photo of a {class}'"
            )
        self.prompt_template = prompt_template
        self.negative_prompt = negative_prompt or None
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"diffusion device {device!r} is not a torch device ({exc})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"diffusion device {device!r} asked for, but torch sees no CUDA GPU; use device 'cpu'")
        self.half = self.device.type == "cuda" if half is None else bool(half)
        self.dtype = torch.float16 if self.half else torch.float32
        self.source, self.is_local = _locate(pipeline)

        self._pipe: Any = None
        self.kind: str | None = None
        self._accepts: set[str] = set()
        self._pipeline_class_ids: list[int] | None = None  # None: teacher class i is pipeline class i
        self._pipeline_classes: int | None = None
        self._prompts: list[str] | None = None

    # ------------------------------------------------------------------ loading

    def load(self) -> Any:
        """Load the pipeline (once), move it to the device, and work out how classes map onto it."""
        if self._pipe is not None:
            return self._pipe
        diffusers = _import_diffusers()
        where = f"folder {self.source}" if self.is_local else f"hub id {self.source!r}"
        try:
            with _quiet_loading(diffusers):
                pipe = diffusers.DiffusionPipeline.from_pretrained(self.source, dtype=self.dtype)
        except ImportError as exc:
            raise ConfigError(f"the diffusion pipeline in {where} needs a missing package ({_one_line(exc)}); "
                              f"{INSTALL_HINT}") from exc
        except Exception as exc:  # diffusers raises many types (OSError, ValueError, safetensors errors)
            hint = ("" if self.is_local else
                    "; hub ids need a network, offline pass the folder written by save_pretrained")
            raise DataError(f"cannot load a diffusion pipeline from {where}: {_one_line(exc)}{hint}") from exc
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device)
        params = inspect.signature(pipe.__call__).parameters
        self._accepts = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if "class_labels" in self._accepts:
            self.kind = CLASS_CONDITIONAL
            self._setup_class_conditional(pipe)
        elif "prompt" in self._accepts:
            self.kind = TEXT_TO_IMAGE
            self._setup_text_to_image()
        else:
            raise ConfigError(
                f"{type(pipe).__name__} from {where} takes neither class labels nor prompts; the diffusion "
                "synthesizer needs a class-conditional (e.g. DiT) or text-to-image (e.g. Stable Diffusion) pipeline"
            )
        self._pipe = pipe
        return pipe

    def _setup_class_conditional(self, pipe: Any) -> None:
        if self.negative_prompt is not None:
            raise ConfigError(f"diffusion negative_prompt only applies to text-to-image pipelines, "
                              f"not the class-conditional {type(pipe).__name__}; drop it")
        self._pipeline_classes = _count_pipeline_classes(pipe)
        known = self._pipeline_classes
        if self.class_ids is not None:
            ids = self.class_ids
        elif self.class_names is not None and getattr(pipe, "labels", None) and hasattr(pipe, "get_label_ids"):
            ids = _ids_from_names(pipe, self.class_names, self.source)
        else:
            ids = None
            if known is not None and self.num_classes is not None and self.num_classes > known:
                raise ConfigError(
                    f"the teacher has {self.num_classes} classes but {type(pipe).__name__} knows only {known}; "
                    "pass class_ids (one pipeline class id per teacher class)"
                )
        if ids is not None and known is not None and max(ids) >= known:
            raise ConfigError(f"diffusion class_ids go up to {max(ids)} but {type(pipe).__name__} has "
                              f"classes 0 to {known - 1}; pass ids in that range")
        if self.guidance_scale > 1 and _is_dit(pipe) and known is not None and known != _DIT_NULL_CLASS:
            raise ConfigError(
                f"this DiT pipeline has {known} classes, but diffusers' DiTPipeline uses class {_DIT_NULL_CLASS} as "
                "the unconditional label for guidance; set guidance_scale to 1 or less to turn guidance off"
            )
        self._pipeline_class_ids = ids

    def _setup_text_to_image(self) -> None:
        if self.class_names is None:
            raise ConfigError("a text-to-image diffusion pipeline needs class_names to write its prompts; "
                              "give one name per teacher class")
        if self.class_ids is not None:
            raise ConfigError("diffusion class_ids only apply to class-conditional pipelines; "
                              "a text-to-image pipeline is driven by class_names, drop class_ids")
        self._prompts = [self.prompt_for(name) for name in self.class_names]

    def prompt_for(self, class_name: str) -> str:
        """The prompt for one class: the template with ``{class}`` replaced (underscores become spaces)."""
        return self.prompt_template.replace("{class}", class_name.replace("_", " ").strip())

    # ------------------------------------------------------------------ Synthesizer interface

    def settings(self) -> dict[str, Any]:
        """Everything that changes the images (loads the pipeline to resolve the class mapping)."""
        pipe = self.load()
        settings: dict[str, Any] = {
            "pipeline": self.source,
            "pipeline_class": type(pipe).__name__,
            "kind": self.kind,
            "guidance_scale": self.guidance_scale,
            "steps": self.steps,
            "dtype": "float16" if self.half else "float32",
            "device": self.device.type,
        }
        if self.kind == CLASS_CONDITIONAL:
            settings["class_ids"] = self._pipeline_class_ids if self._pipeline_class_ids is not None else "identity"
        else:
            settings["prompts"] = self._prompts
            settings["negative_prompt"] = self.negative_prompt
        return settings

    def generate(self, labels: torch.Tensor, image_size: int, seed: int, report: StepReporter) -> BatchResult:
        """One batch: the pipeline run with a generator seeded by ``seed``, resized to ``image_size``."""
        pipe = self.load()
        classes = [int(label) for label in labels.reshape(-1).tolist()]
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        kwargs: dict[str, Any] = {"generator": generator, "num_inference_steps": self.steps, "output_type": "pt"}
        if "guidance_scale" in self._accepts:
            kwargs["guidance_scale"] = self.guidance_scale
        if self.kind == CLASS_CONDITIONAL:
            kwargs["class_labels"] = [self._pipeline_class(c) for c in classes]
        else:
            kwargs["prompt"] = [self._prompt(c) for c in classes]
            if self.negative_prompt is not None:
                kwargs["negative_prompt"] = [self.negative_prompt] * len(classes)

        reported = 0

        def step_done(*_args: Any) -> None:
            nonlocal reported
            if reported < self.steps:  # schedulers of order 2 may call back more often than `steps`
                reported += 1
                report(step=f"{reported}/{self.steps}")

        if "callback_on_step_end" in self._accepts:
            def on_step_end(_pipe: Any, _index: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
                step_done()
                return callback_kwargs  # the pipeline reads tensors back from the returned dict

            kwargs["callback_on_step_end"] = on_step_end
        output = pipe(**kwargs)
        while reported < self.steps:  # no callback (or fewer calls than steps): keep the progress total right
            step_done()

        images = _as_tensor(output.images if hasattr(output, "images") else output[0])
        images = images.to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(images).all():
            hint = "; half precision can overflow, try half=False" if self.half else ""
            raise SynthesisError(f"the diffusion pipeline produced non-finite pixel values{hint}")
        images = fit_to_size(images, image_size)
        stats: dict[str, float] = {"mean_pixel": round(float(images.mean()), 4)}
        flagged = getattr(output, "nsfw_content_detected", None)
        if flagged:
            stats["nsfw_flagged"] = float(sum(bool(f) for f in flagged))  # blacked out by the safety checker
        return BatchResult(images, stats)

    def _pipeline_class(self, label: int) -> int:
        ids = self._pipeline_class_ids
        if ids is not None:
            if not 0 <= label < len(ids):
                raise ConfigError(f"teacher class {label} has no entry in diffusion class_ids ({len(ids)} given); "
                                  "give one pipeline class id per teacher class")
            return ids[label]
        if self._pipeline_classes is not None and not 0 <= label < self._pipeline_classes:
            raise ConfigError(f"teacher class {label} is beyond the {self._pipeline_classes} classes of the "
                              "diffusion pipeline; pass class_ids (one pipeline class id per teacher class)")
        return label

    def _prompt(self, label: int) -> str:
        prompts = self._prompts or []
        if not 0 <= label < len(prompts):
            raise ConfigError(f"teacher class {label} has no name in diffusion class_names ({len(prompts)} given); "
                              "give one name per teacher class")
        return prompts[label]


# ---------------------------------------------------------------------- helpers


def fit_to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (antialiased) so the short side is ``size``, centre-crop to ``size`` x ``size``, clamp to [0, 1]."""
    from torchvision.transforms.v2 import functional as F

    if tuple(images.shape[-2:]) != (size, size):
        images = F.resize(images, [size], antialias=True)
        images = F.center_crop(images, [size, size])
    return images.clamp(0.0, 1.0)


def _as_tensor(images: Any) -> torch.Tensor:
    """Pipeline output (tensor B x C x H x W, array B x H x W x C, or PIL list) as a float tensor B x C x H x W."""
    if isinstance(images, torch.Tensor):
        return images.float()
    if isinstance(images, (list, tuple)):  # PIL images, from pipelines that ignore output_type
        images = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4:
        raise SynthesisError(f"the diffusion pipeline returned images of shape {array.shape}, expected a batch")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:
        raise ConfigError(f"the diffusion synthesizer needs diffusers ({_one_line(exc)}); {INSTALL_HINT}") from None
    return diffusers


@contextmanager
def _quiet_loading(diffusers: Any) -> Iterator[None]:
    """Hide diffusers' "Loading pipeline components" bar, which would break our own progress display."""
    logging = getattr(getattr(diffusers, "utils", None), "logging", None)
    was_enabled = getattr(logging, "is_progress_bar_enabled", lambda: False)()
    if was_enabled:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _locate(pipeline: str) -> tuple[str, bool]:
    """(absolute folder, True) for a local pipeline folder, (hub id, False) for a hub id; DataError otherwise."""
    if not isinstance(pipeline, (str, Path)) or not str(pipeline).strip():
        raise ConfigError("diffusion pipeline is empty; give a folder written by save_pretrained or a hub id")
    path = Path(pipeline).expanduser()
    if path.exists():
        path = path.resolve()
        if not path.is_dir():
            raise DataError(f"diffusion pipeline {path} is a file; give the folder written by save_pretrained")
        if not (path / MODEL_INDEX).is_file():
            raise DataError(f"{path} is not a diffusers pipeline folder (no {MODEL_INDEX}); "
                            "give the folder written by DiffusionPipeline.save_pretrained")
        return str(path), True
    if _HUB_ID.match(str(pipeline)):
        return str(pipeline), False
    raise DataError(f"diffusion pipeline {pipeline} does not exist; give the folder written by save_pretrained "
                    "or a hub id like owner/name")


def _count_pipeline_classes(pipe: Any) -> int | None:
    """How many classes the denoiser embeds, where its config says so."""
    for component in ("transformer", "unet"):
        config = getattr(getattr(pipe, component, None), "config", None)
        if config is None:
            continue
        for key in ("num_embeds_ada_norm", "num_class_embeds", "num_classes"):
            value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _ids_from_names(pipe: Any, names: list[str], source: str) -> list[int]:
    """Pipeline class ids of the teacher's class names, from the pipeline's label table.

    Names are matched without case, with underscores as spaces. A name some labels share (ImageNet
    has two "crane" and two "maillot" classes) goes to the teacher's own index when that is one of
    them: DiTPipeline.get_label_ids would give every such class the last id.
    """
    table = _label_table(pipe, source)
    ids, unknown = [], []
    for index, name in enumerate(names):
        spaced = " ".join(name.replace("_", " ").split())
        key = spaced.lower()
        if table is not None:
            found = table.get(key, [])
            if found:
                ids.append(index if index in found else found[0])
                continue
        else:
            found_id = _label_id(pipe, [spaced, key])
            if found_id is not None:
                ids.append(found_id)
                continue
        unknown.append(name)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConfigError(f"{type(pipe).__name__} has no label named {shown}; pass class_ids "
                          "(one pipeline class id per teacher class) instead")
    return ids


def _label_id(pipe: Any, candidates: list[str]) -> int | None:
    for candidate in dict.fromkeys(candidates):
        try:
            return int(pipe.get_label_ids([candidate])[0])
        except (ValueError, KeyError, IndexError):
            continue
    return None


def _label_table(pipe: Any, source: str) -> dict[str, list[int]] | None:
    """Lower-cased label -> every pipeline class id carrying it, from ``id2label`` in model_index.json.

    The loaded pipeline keeps only ``labels`` (one id per label), so the table is read from the saved
    configuration; None when it cannot be, and the caller falls back to ``get_label_ids``.
    """
    try:
        id2label = type(pipe).load_config(source).get("id2label")
        table: dict[str, list[int]] = {}
        for class_id, text in sorted(id2label.items(), key=lambda item: int(item[0])):
            for label in str(text).split(","):
                key = " ".join(label.split()).lower()
                if key and int(class_id) not in table.setdefault(key, []):
                    table[key].append(int(class_id))
    except Exception:  # no id2label saved, or a shape we do not know: use the pipeline's own lookup
        return None
    return table or None


def _is_dit(pipe: Any) -> bool:
    try:
        from diffusers import DiTPipeline
    except ImportError:
        return False
    return isinstance(pipe, DiTPipeline)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"diffusion {name} must be a whole number >= 1, got {value!r}")
    return value


def _class_id_list(values: Any) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"diffusion class_ids must be a list of class ids, got {values!r}")
    ids = list(values)
    if not ids or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ids):
        raise ConfigError(f"diffusion class_ids must be a non-empty list of whole numbers >= 0, got {values!r}")
    return ids


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
