"""The one interface every image synthesizer implements, and the registry that names them.

A synthesizer only turns a batch of intended class ids into images in [0, 1] at the requested
size; ``synthesizers.generate.synthesize`` does everything around it (class-balanced labels,
batching, a seed per batch, the on-disk cache and resume, progress). Keeping that loop in one
place is what makes every synthesizer resumable and reproducible without writing it again.
A user adds a synthesizer by subclassing ``Synthesizer`` and decorating it with
``@register_synthesizer("name")``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry


class StepReporter(Protocol):
    """Called once per inner step (optimiser or denoising step) with live values to display."""

    def __call__(self, **fields: float | str) -> None: ...


@dataclass
class BatchResult:
    """One generated batch: images (B x 3 x H x W, float in [0, 1]) and numbers worth keeping."""

    images: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class Synthesizer(ABC):
    """Makes images of given classes; stateless between batches so any batch can be redone alone.

    ``batch_size`` belongs to the synthesizer because it can change the images (BN-statistics
    inversion matches statistics over the batch). ``steps_per_batch`` sizes the progress bar.
    """

    name: str = ""
    batch_size: int = 64
    steps_per_batch: int = 1

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the images, JSON-able: the cache refuses to mix others."""

    @abstractmethod
    def generate(self, labels: torch.Tensor, image_size: int, seed: int, report: StepReporter) -> BatchResult:
        """Images of classes ``labels`` at ``image_size``, a pure function of (settings, labels, seed)."""

    def setup_steps(self, image_size: int) -> int:
        """Steps of a one-off preparation the next ``generate`` at ``image_size`` reports before its
        own (a generator's warm-up, say), so the progress bar counts them too; 0 for most."""
        return 0


S = TypeVar("S", bound=type[Synthesizer])
SYNTHESIZERS: Registry[type[Synthesizer]] = Registry("synthesizer", "synthesizers", unknown=ConfigError,
                                                     invalid=ConfigError)


def register_synthesizer(name: str) -> Callable[[S], S]:
    """Class decorator: make a synthesizer available to ``create_synthesizer`` and the CLI."""
    return SYNTHESIZERS.register(name)


def list_synthesizers() -> list[str]:
    """Names of the registered synthesizers, sorted."""
    return SYNTHESIZERS.names()


def create_synthesizer(name: str, **kwargs: Any) -> Synthesizer:
    """Build a registered synthesizer; unknown names and settings are one-line ConfigErrors."""
    return SYNTHESIZERS.create(name, internal=("teacher", "student", "teacher_id", "mean", "std", "device"), **kwargs)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's class and state (parameters and buffers), to key caches by teacher.

    Two teachers with different weights must never share synthesised images, and a model passed
    from Python has no file name to go by.
    """
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def balanced_labels(num_images: int, num_classes: int, seed: int) -> torch.Tensor:
    """Class ids spread as evenly as possible over ``num_classes``, in a seeded random order."""
    if num_images < 1 or num_classes < 1:
        raise ConfigError(f"need at least one image and one class, got {num_images} and {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    return labels[torch.randperm(num_images, generator=generator)]
