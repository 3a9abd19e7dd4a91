"""Image synthesizers: make a tiny set when no real images exist.

One interface (``Synthesizer``), one registry, and one driver (``synthesize``) that adds batching,
per-batch seeds, the PNG cache and resume to any synthesizer. Built in: ``bn-inversion``
(DeepInversion from the teacher's BatchNorm statistics), ``generator`` (a meta-learned generator
fine-tuned a few steps per batch, Fast-Datafree) and ``diffusion`` (any diffusers pipeline).
``dfpractise.sources`` wraps them as the ``synthetic``, ``generator`` and ``diffusion`` sources.
``synthesizers.auto`` chooses a few of a synthesizer's settings per teacher on a short probe, from
synthesis-side signals only (agreement, BN-statistics distance, feature diversity).

The package stands alone: it needs torch, kornia and Pillow (diffusers for ``diffusion``), raises
its own errors (``synthesizers.errors``), reports progress through a plain callback, and imports
nothing from ``dfpractise``, which builds on it. The two mechanisms both packages share, the
plug-in ``Registry`` and atomic file writes, live here for that reason.
"""

from .base import (
    BatchResult,
    Synthesizer,
    balanced_labels,
    create_synthesizer,
    list_synthesizers,
    model_fingerprint,
    register_synthesizer,
)
from .bn_inversion import BNInversion
from .diffusion import DiffusionSynthesizer
from .generator import GeneratorSynthesizer
from .generate import SyntheticSet, synthesize
from .quality import quality_report

__all__ = [
    "BNInversion",
    "BatchResult",
    "DiffusionSynthesizer",
    "GeneratorSynthesizer",
    "Synthesizer",
    "SyntheticSet",
    "balanced_labels",
    "create_synthesizer",
    "list_synthesizers",
    "model_fingerprint",
    "quality_report",
    "register_synthesizer",
    "synthesize",
]
