"""BN-statistics inversion (DeepInversion): images optimised so a teacher sees its training data.

Written from the paper (Yin et al., "Dreaming to Distill", CVPR 2020). Pixels start as noise and
are optimised with Adam so that (1) every BatchNorm layer's batch mean and variance match its
running statistics, which the teacher accumulated on its real training set, (2) the teacher
classifies each image as its intended class, and (3) total-variation and L2 priors keep images
smooth and bounded. Each step sees a randomly jittered and flipped copy (kornia), so the images
do not overfit one pixel alignment. Options from the paper: a multi-resolution warm start (the
first steps at half size, which is cheap, then upsampled) and Adaptive DeepInversion's
competition term, which rewards images on which a given student disagrees with the teacher (their
predictions softened at ``competition_temperature``, 3 as in the authors' CIFAR-10 code).
``precision`` "bf16" (or "auto", bf16 where the hardware has it) runs the teacher under bf16
autocast; on CPU the teacher is channels-last while inverting, the layout oneDNN is fastest in.
``fold_batchnorm`` inverts through a copy of the teacher with each BatchNorm folded into the
convolution before it (``synthesizers.folding``): the same function and loss, one pass over each
such activation fewer; the images differ from an unfolded run's by rounding only.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import BatchResult, StepReporter, Synthesizer, model_fingerprint, register_synthesizer
from .bn_stats import batchnorm_layers, bn_statistics
from .errors import ConfigError, SynthesisError
from .folding import FoldedTeacher, fold_batchnorms
from .inversion import (
    InversionLoss, channels_last, check_non_negative, check_positive, frozen, jitter_and_flip, number,
)
from .precision import autocast, resolve_precision


@register_synthesizer("bn-inversion")
class BNInversion(Synthesizer):
    """DeepInversion of ``teacher``; ``student`` turns on the Adaptive-DeepInversion term.

    Settings recorded in the cache key are those that change the images; ``precision`` is recorded
    as resolved (fp32 not at all, so caches made before the setting existed are still read), and
    ``fold_batchnorm`` not at all (it changes the images' rounding, not the images).
    """

    def __init__(
        self,
        teacher: nn.Module,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        *,
        student: nn.Module | None = None,
        teacher_id: str | None = None,
        steps: int = 200,
        lr: float = 0.1,
        batch_size: int = 256,
        bn_weight: float = 0.05,
        first_bn_multiplier: float = 10.0,
        ce_weight: float = 1.0,
        tv_weight: float = 1.0,
        l2_weight: float = 0.0,
        competition_weight: float = 0.0,
        competition_temperature: float = 3.0,
        jitter: int = 2,
        flip: bool = True,
        warm_start: float = 0.5,
        precision: str = "auto",
        fold_batchnorm: bool = True,
        device: str = "cpu",
    ):
        check_positive(steps=steps, lr=lr, batch_size=batch_size, competition_temperature=competition_temperature)
        check_non_negative(
            bn_weight=bn_weight, first_bn_multiplier=first_bn_multiplier, ce_weight=ce_weight,
            tv_weight=tv_weight, l2_weight=l2_weight, competition_weight=competition_weight, jitter=jitter,
        )
        if not isinstance(fold_batchnorm, bool):
            raise ConfigError(f"fold_batchnorm must be true or false, got {fold_batchnorm!r}")
        if not 0 <= number("warm_start", warm_start) < 1:
            raise ConfigError(f"warm_start is the fraction of steps at half resolution, in [0, 1); got {warm_start}")
        if not batchnorm_layers(teacher):
            raise ConfigError(
                f"{type(teacher).__name__} has no BatchNorm layers with running statistics, so BN-statistics "
                "inversion has nothing to match; use the 'diffusion' or 'ood' source instead"
            )
        if competition_weight > 0 and student is None:
            raise ConfigError("competition_weight > 0 (Adaptive DeepInversion) needs a student model")
        self.device = torch.device(device)
        self.teacher = teacher.to(self.device).eval()
        self.student = student.to(self.device).eval() if student is not None else None
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.teacher_id = teacher_id or model_fingerprint(teacher)
        self.steps = steps
        self.steps_per_batch = steps
        self.lr = lr
        self.batch_size = batch_size
        self.weights = {
            "bn": bn_weight, "ce": ce_weight, "tv": tv_weight, "l2": l2_weight, "competition": competition_weight,
        }
        self.first_bn_multiplier = first_bn_multiplier
        self.competition_temperature = competition_temperature
        self.jitter = jitter
        self.flip = flip
        self.warm_start = warm_start
        self.precision = resolve_precision(precision, self.device)
        self.fold_batchnorm = fold_batchnorm
        self._folded: dict[int, FoldedTeacher] = {}  # by image size: built once, not for every batch

    def settings(self) -> dict[str, Any]:
        competing = {"competition_temperature": self.competition_temperature} if self.student is not None else {}
        return {  # the temperature only where it changes the images: the cache of a plain inversion keeps its key
            **competing,
            "teacher": self.teacher_id,
            "student": model_fingerprint(self.student) if self.student is not None else None,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "steps": self.steps,
            "lr": self.lr,
            "loss_weights": dict(self.weights),
            "first_bn_multiplier": self.first_bn_multiplier,
            "jitter": self.jitter,
            "flip": self.flip,
            "warm_start": self.warm_start,
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            "device": self.device.type,
        }

    def generate(self, labels: torch.Tensor, image_size: int, seed: int, report: StepReporter) -> BatchResult:
        labels = labels.to(self.device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        warm_steps = int(round(self.steps * self.warm_start)) if image_size >= 16 else 0
        size = image_size // 2 if warm_steps else image_size
        noise = torch.randn(len(labels), 3, size, size, generator=generator).to(self.device)
        pixels = (noise * self.std + self.mean).clamp_(0, 1)
        teacher, folded = self._inverted(image_size)
        loss = InversionLoss(teacher, self.mean, self.std, self.weights, self.first_bn_multiplier, self.student,
                             self.competition_temperature)
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)  # kornia draws its jitter and flips from the global generator
            stack.enter_context(frozen(teacher, self.student))
            last = stack.enter_context(channels_last(teacher, self.device))
            if self.student is not None:
                stack.enter_context(channels_last(self.student, self.device))
            stats = stack.enter_context(bn_statistics(teacher, folded))
            phases = [(warm_steps, size), (self.steps - warm_steps, image_size)] if warm_steps else [(self.steps, size)]
            step = 0
            for phase_steps, phase_size in phases:
                if pixels.shape[-1] != phase_size:
                    pixels = F.interpolate(pixels, size=(phase_size, phase_size), mode="bilinear", align_corners=False)
                pixels, losses, step = self._optimise(loss, pixels, labels, phase_steps, stats, report, step, last)
        return BatchResult(pixels.detach(), {k: round(v, 5) for k, v in losses.items()})

    def _inverted(self, image_size: int) -> tuple[nn.Module, dict[nn.Module, Any]]:
        """The model to invert through and its folded convolutions: the teacher with its BatchNorms
        folded (checked on two fixed random images, whatever the seed), or the teacher itself."""
        if not self.fold_batchnorm:
            return self.teacher, {}
        if image_size not in self._folded:
            probe = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
            self._folded[image_size] = fold_batchnorms(self.teacher, (probe.to(self.device) - self.mean) / self.std)
        copy = self._folded[image_size]
        return copy.model, copy.folded

    def _optimise(self, loss_of, pixels, labels, steps, stats, report, step, last):
        """Adam on the pixels for ``steps`` steps at their current size, cosine learning rate;
        ``last``: show the teacher channels-last copies (its layout while inverting on CPU)."""
        pixels = pixels.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([pixels], lr=self.lr, betas=(0.5, 0.9), eps=1e-8)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
        augment = jitter_and_flip(pixels.shape[-1], self.jitter, self.flip)
        losses: dict[str, float] = {}
        for _ in range(steps):
            step += 1
            optimiser.zero_grad(set_to_none=True)
            seen = augment(pixels)
            if last:
                seen = seen.contiguous(memory_format=torch.channels_last)
            with autocast(self.precision, self.device):
                loss, losses = loss_of(seen, labels, stats)
            if not math.isfinite(losses["loss"]):
                raise SynthesisError(
                    f"BN-inversion loss became {losses['loss']} at step {step} of {self.steps} "
                    f"(lr {self.lr}); lower the learning rate or the loss weights"
                )
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                pixels.clamp_(0, 1)
            report(loss=losses["loss"], ce=losses["ce"], bn=losses["bn"])
        return pixels, losses, step
