"""Fast generator-based synthesis: a meta-learned generator, fine-tuned for a few steps per batch.

Written from the paper (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI
2022). BN-statistics inversion (``bn-inversion``) starts every batch's pixels from noise and needs
hundreds of steps. Here a small convolutional generator G(z) makes the images; its losses are
those of BN inversion (every teacher BatchNorm layer's batch statistics against its running
statistics, the first layer weighted up; cross-entropy of the teacher's prediction against the
intended class; total variation). The generator is meta-learned so that a copy of it, with a
fresh z, reaches those losses in a few steps: Reptile (Nichol et al. 2018), which moves a shared
initialisation towards what each short fine-tuning ended with.

The ``Synthesizer`` interface wants every batch to be a pure function of (settings, labels,
seed), so the meta-learning is a phase of its own rather than a side effect of the batches
(the paper updates the shared generator after each batch, which would make batch k depend on
batches 0..k-1): ``prepare(image_size)`` runs ``meta_steps`` Reptile iterations seeded by
``generator_seed`` alone and keeps the shared generator in memory. It runs once, on the first
``generate`` at that size, and gives the same generator whenever it is run again, so a batch
redone after an interruption, in another process, is the batch an uninterrupted run made. Each
batch then copies the shared generator, draws z from its own seed, and takes ``steps`` Adam
steps on the copy and on z; the images are what the fine-tuned copy makes of that z.

The generator can be conditional on the class (``conditional``): a learned embedding of the
intended class is added to z. It is off by default, as in the paper, because measured on
ResNet-56 (CIFAR-10, 64 images, 5 steps per batch) it trades diversity for agreement: the
conditional generator's images of one class came out nearly alike (mean pixel-space distance
between two images of one class 4-5, against about 20 between classes; the shared generator
learns to draw "the" image of each class and z loses its say), while the unconditional one's
were as far apart within a class as across classes (about 21), for somewhat lower agreement
and a higher BN distance after the same warm-up (94% and 181 against 97% and 138 after 8
warm-up iterations). A tiny set of near-copies gives recovery little to learn from.

Architecture (the paper's DCGAN-like generator, narrower by default for CPUs): z -> linear to
2*width channels at a quarter of the image size -> BatchNorm -> (2x upsample, 3x3 conv,
BatchNorm, LeakyReLU) twice, the second to width channels -> 3x3 conv to RGB -> sigmoid, so
pixels are in [0, 1]. The generator's BatchNorm layers always use batch statistics and keep no
running ones, so nothing in the shared generator changes while a batch is made.
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import BatchResult, StepReporter, Synthesizer, model_fingerprint, register_synthesizer
from .bn_stats import batchnorm_layers, bn_statistics
from .errors import ConfigError, SynthesisError
from .inversion import InversionLoss, check_non_negative, check_positive, frozen, jitter_and_flip, number
from .precision import autocast, resolve_precision


class ImageGenerator(nn.Module):
    """z (and, when conditional, the intended class) to images in [0, 1] at ``image_size``."""

    def __init__(self, latent_dim: int, width: int, image_size: int, num_classes: int | None):
        super().__init__()
        self.image_size = image_size
        self.start = -(-image_size // 4)  # two 2x upsamplings reach the size (or just above it)
        self.embedding = nn.Embedding(num_classes, latent_dim) if num_classes else None
        channels = 2 * width
        self.project = nn.Linear(latent_dim, channels * self.start * self.start)
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels, track_running_stats=False),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            z = z + self.embedding(labels)
        x = self.project(z).view(len(z), -1, self.start, self.start)
        x = self.body(x)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x.float())


@register_synthesizer("generator")
class GeneratorSynthesizer(Synthesizer):
    """Images from a meta-learned generator of ``teacher``'s classes, a few steps per batch.

    Settings: ``steps`` Adam steps per batch (on a copy of the shared generator at ``lr`` and on
    z at ``lr_z``); ``meta_steps`` Reptile iterations of the warm-up (each one a batch's
    fine-tuning, ``steps`` steps on ``batch_size`` images) moving the shared generator by
    ``meta_lr`` of the way each time; ``generator_seed`` seeds the warm-up; ``latent_dim`` and
    ``width`` size the generator; ``conditional`` adds a class embedding to z; the loss weights,
    ``first_bn_multiplier``, ``jitter`` and ``flip`` are those of ``bn-inversion``;
    ``precision`` "bf16" runs the forward passes under CPU/GPU bfloat16 autocast ("auto": where native).

    The defaults are sized for 32x32 CIFAR teachers on two CPU cores (an informal measurement on
    ResNet-56, one busy core: warm-up 68 s, then 4.9 s per batch of 64, 100% agreement; bf16 took
    a quarter less time per batch for the same agreement and BN distance, but stays opt-in).
    Under several workers each one runs the warm-up itself: the same generator, made N times.
    """

    def __init__(
        self,
        teacher: nn.Module,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        *,
        teacher_id: str | None = None,
        steps: int = 8,
        lr: float = 5e-3,
        lr_z: float = 0.05,
        batch_size: int = 64,
        meta_steps: int = 12,
        meta_lr: float = 0.5,
        generator_seed: int = 0,
        latent_dim: int = 128,
        width: int = 32,
        conditional: bool = False,
        bn_weight: float = 0.05,
        first_bn_multiplier: float = 10.0,
        ce_weight: float = 1.0,
        tv_weight: float = 1.0,
        jitter: int = 2,
        flip: bool = True,
        precision: str = "fp32",
        device: str = "cpu",
    ):
        for name, value in {"steps": steps, "batch_size": batch_size, "latent_dim": latent_dim,
                            "width": width}.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(meta_steps, int) or isinstance(meta_steps, bool) or meta_steps < 0:
            raise ConfigError(f"meta_steps must be a whole number of 0 or more, got {meta_steps!r}")
        if not isinstance(generator_seed, int) or isinstance(generator_seed, bool):
            raise ConfigError(f"generator_seed must be a whole number, got {generator_seed!r}")
        check_positive(lr=lr, lr_z=lr_z)
        if not 0 < number("meta_lr", meta_lr) <= 1:
            raise ConfigError(f"meta_lr is the fraction of the way the shared generator moves, in (0, 1]; "
                              f"got {meta_lr}")
        check_non_negative(bn_weight=bn_weight, first_bn_multiplier=first_bn_multiplier, ce_weight=ce_weight,
                            tv_weight=tv_weight, jitter=jitter)
        if not isinstance(conditional, bool):
            raise ConfigError(f"conditional must be true or false, got {conditional!r}")
        if not isinstance(flip, bool):
            raise ConfigError(f"flip must be true or false, got {flip!r}")
        if not batchnorm_layers(teacher):
            raise ConfigError(
                f"{type(teacher).__name__} has no BatchNorm layers with running statistics, so the generator "
                "has no statistics to match; use the 'diffusion' or 'ood' source instead"
            )
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"generator device {device!r} is not a torch device ({exc})") from None
        self.teacher = teacher.to(self.device).eval()
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.teacher_id = teacher_id or model_fingerprint(teacher)
        self.steps = steps
        self.steps_per_batch = steps
        self.lr = lr
        self.lr_z = lr_z
        self.batch_size = batch_size
        self.meta_steps = meta_steps
        self.meta_lr = meta_lr
        self.generator_seed = generator_seed
        self.latent_dim = latent_dim
        self.width = width
        self.conditional = conditional
        self.weights = {"bn": bn_weight, "ce": ce_weight, "tv": tv_weight}
        self.first_bn_multiplier = first_bn_multiplier
        self.loss = InversionLoss(self.teacher, self.mean, self.std, self.weights, first_bn_multiplier)
        self.jitter = jitter
        self.flip = flip
        self.precision = resolve_precision(precision, self.device)
        self._shared: dict[int, ImageGenerator] = {}  # the meta-learned generator, per image size
        self._num_classes: int | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher_id,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "steps": self.steps,
            "lr": self.lr,
            "lr_z": self.lr_z,
            "meta_steps": self.meta_steps,
            "meta_lr": self.meta_lr,
            "generator_seed": self.generator_seed,
            "latent_dim": self.latent_dim,
            "width": self.width,
            "conditional": self.conditional,
            "loss_weights": dict(self.weights),
            "first_bn_multiplier": self.first_bn_multiplier,
            "jitter": self.jitter,
            "flip": self.flip,
            "precision": self.precision,
            "device": self.device.type,
        }

    def setup_steps(self, image_size: int) -> int:
        """Warm-up steps the next ``generate`` at ``image_size`` reports first (0 once prepared)."""
        return 0 if image_size in self._shared else self.meta_steps * self.steps

    # ------------------------------------------------------------------ the shared generator

    def prepare(self, image_size: int, report: StepReporter | None = None) -> ImageGenerator:
        """The meta-learned generator for ``image_size``: made once (the warm-up), then kept.

        A function of the settings alone: ``meta_steps`` Reptile iterations on labels, z and
        augmentations drawn from ``generator_seed``, starting from weights drawn from it too.
        """
        if image_size in self._shared:
            return self._shared[image_size]
        report = report or (lambda **fields: None)
        num_classes = self._classes(image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.generator_seed)
            shared = ImageGenerator(self.latent_dim, self.width, image_size,
                                    num_classes if self.conditional else None).to(self.device)
        draw = torch.Generator(device="cpu").manual_seed(self.generator_seed)
        for iteration in range(self.meta_steps):
            labels = (torch.arange(self.batch_size) % num_classes)[torch.randperm(self.batch_size, generator=draw)]
            seed = int(torch.randint(0, 2**62, (1,), generator=draw))
            adapted, _, _ = self._adapt(shared, labels, image_size, seed, report, "warm-up",
                                        f"{iteration + 1}/{self.meta_steps}")
            with torch.no_grad():  # Reptile: move the shared weights part of the way to the adapted ones
                for mine, theirs in zip(shared.parameters(), adapted.parameters()):
                    mine.add_(theirs - mine, alpha=self.meta_lr)
        shared.requires_grad_(False)
        self._shared[image_size] = shared
        return shared

    def _classes(self, image_size: int) -> int:
        """How many classes the teacher tells apart: the width of its output."""
        if self._num_classes is None:
            with torch.no_grad():
                logits = self.teacher(torch.zeros(2, 3, image_size, image_size, device=self.device))
            if logits.dim() != 2:
                raise ConfigError(f"{type(self.teacher).__name__} returns {tuple(logits.shape)}-shaped output, "
                                  "not one row of class scores per image; the generator needs a classifier")
            self._num_classes = int(logits.shape[1])
        return self._num_classes

    # ------------------------------------------------------------------ one batch

    def generate(self, labels: torch.Tensor, image_size: int, seed: int, report: StepReporter) -> BatchResult:
        shared = self.prepare(image_size, report)
        labels = labels.to(self.device)
        if int(labels.max()) >= self._classes(image_size) or int(labels.min()) < 0:
            raise ConfigError(f"class ids must be from 0 to {self._classes(image_size) - 1} for this teacher, "
                              f"got {int(labels.min())} to {int(labels.max())}")
        generator, z, losses = self._adapt(shared, labels, image_size, seed, report, "batch")
        with torch.no_grad(), self._autocast():
            images = generator(z, labels)
        return BatchResult(images.detach().float().clamp_(0, 1), {k: round(v, 5) for k, v in losses.items()})

    def _adapt(self, shared: ImageGenerator, labels: torch.Tensor, image_size: int, seed: int,
               report: StepReporter, phase: str, meta: str | None = None):
        """A copy of ``shared`` and a z drawn from ``seed``, after ``steps`` Adam steps on the losses."""
        labels = labels.to(self.device)
        generator = copy.deepcopy(shared).requires_grad_(True)
        draw = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(len(labels), self.latent_dim, generator=draw).to(self.device).requires_grad_(True)
        optimiser = torch.optim.Adam([{"params": list(generator.parameters()), "lr": self.lr},
                                      {"params": [z], "lr": self.lr_z}], betas=(0.5, 0.999))
        augment = jitter_and_flip(image_size, self.jitter, self.flip)
        losses: dict[str, float] = {}
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)  # kornia draws its jitter and flips from the global generator
            stack.enter_context(frozen(self.teacher))
            stats = stack.enter_context(bn_statistics(self.teacher))
            for step in range(1, self.steps + 1):
                optimiser.zero_grad(set_to_none=True)
                with self._autocast():
                    loss, losses = self.loss(augment(generator(z, labels)), labels, stats)
                if not math.isfinite(losses["loss"]):
                    where = f"warm-up iteration {meta}" if meta else "a batch"
                    raise SynthesisError(
                        f"generator loss became {losses['loss']} at step {step} of {self.steps} in {where} "
                        f"(lr {self.lr}, lr_z {self.lr_z}); lower the learning rates or the loss weights"
                    )
                loss.backward()
                optimiser.step()
                fields: dict[str, float | str] = {"phase": phase, "loss": losses["loss"], "ce": losses["ce"],
                                                  "bn": losses["bn"]}
                if meta:
                    fields["meta"] = meta
                report(**fields)
        return generator, z.detach(), losses

    def _autocast(self):
        return autocast(self.precision, self.device)
