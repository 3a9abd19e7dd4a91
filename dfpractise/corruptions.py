"""Common corruptions, in the manner of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, ICLR 2019).

Each corruption turns a batch of images in [0, 1] (N x 3 x H x W) into corrupted images of the
same shape and range, at a severity from 1 (mild) to 5 (strong), drawing any randomness from the
generator it is given: the same seed gives every model the same corrupted batch. They are made on
the fly with torch and kornia, so no corrupted copy of a dataset is stored. Severity parameters
follow the CIFAR-10-C tables where those translate directly (noise levels, brightness, contrast,
JPEG quality, pixelation); blur radii, fog and the elastic warp scale with the image side, so the
same severity means about the same damage at 32 and at 224 px. Fog and elastic are like, not
equal to, the benchmark's (a fractal-noise haze; a smoothed random displacement field).

Add your own with ``@register_corruption("name")`` on ``fn(images, severity, generator)``.
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from synthesizers.registry import Registry

from .errors import ConfigError

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
C = TypeVar("C", bound=Corruption)
CORRUPTIONS: Registry[Corruption] = Registry("corruption", "corruptions", unknown=ConfigError, invalid=ConfigError)
SEVERITIES = (1, 2, 3, 4, 5)


def register_corruption(name: str) -> Callable[[C], C]:
    """Function decorator: make ``fn(images, severity, generator) -> images`` a named corruption."""
    return CORRUPTIONS.register(name)


def corrupt(name: str, images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """``images`` under corruption ``name`` at ``severity``, reproducibly from ``seed``."""
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = CORRUPTIONS.get(name)(images, severity, generator)
    if out.shape != images.shape:
        raise ConfigError(f"corruption {name!r} changed the images' shape {tuple(images.shape)} to {tuple(out.shape)}")
    return out.clamp(0.0, 1.0)


def _pick(values: tuple, severity: int):
    return values[severity - 1]


def _scale(images: torch.Tensor) -> float:
    """Image side relative to CIFAR's 32 px: blur radii and warps grow with it."""
    return images.shape[-1] / 32.0


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(like.device, like.dtype)


def _rand(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(like.device, like.dtype)


@register_corruption("gaussian_noise")
def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _pick((0.04, 0.06, 0.08, 0.09, 0.10), severity)
    return images + sigma * _randn(images.shape, generator, images)


@register_corruption("shot_noise")
def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    photons = _pick((500.0, 250.0, 100.0, 75.0, 50.0), severity)
    counts = torch.poisson((images.clamp(0, 1) * photons).cpu(), generator=generator)
    return counts.to(images.device, images.dtype) / photons


@register_corruption("impulse_noise")
def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    amount = _pick((0.01, 0.02, 0.03, 0.05, 0.07), severity)
    draw = _rand(images.shape, generator, images)
    out = images.clone()
    out[draw < amount / 2] = 0.0
    out[draw > 1 - amount / 2] = 1.0
    return out


@register_corruption("defocus_blur")
def defocus_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    from kornia.filters import filter2d, gaussian_blur2d

    radius, alias = _pick(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)), severity)
    radius *= _scale(images)
    size = 2 * max(1, math.ceil(radius)) + 1 + 2
    grid = torch.arange(size, dtype=images.dtype, device=images.device) - size // 2
    # a disk, anti-aliased by sampling each pixel 4x4 times, as a lens with this radius blurs
    sub = (torch.arange(4, dtype=images.dtype, device=images.device) + 0.5) / 4 - 0.5
    ys = (grid[:, None, None, None] + sub[None, None, :, None])
    xs = (grid[None, :, None, None] + sub[None, None, None, :])
    disk = ((ys ** 2 + xs ** 2) <= max(radius, 0.5) ** 2).to(images.dtype).mean((2, 3))
    blurred = filter2d(images, (disk / disk.sum())[None], border_type="reflect")
    sigma = max(alias * _scale(images), 1e-3)
    return gaussian_blur2d(blurred, (3, 3), (sigma, sigma), border_type="reflect")


@register_corruption("motion_blur")
def motion_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    from kornia.filters import motion_blur as blur

    half = _pick((1, 2, 3, 4, 5), severity)
    size = 2 * max(1, round(half * _scale(images))) + 1  # odd, grows with the image
    angle = (_rand((len(images),), generator, images) * 90.0 - 45.0)
    return blur(images, size, angle, torch.zeros_like(angle), border_type="reflect")


@register_corruption("brightness")
def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    shift = _pick((0.05, 0.1, 0.15, 0.2, 0.3), severity)
    hsv = rgb_to_hsv(images.clamp(0, 1))
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + shift).clamp(0, 1)], dim=1)
    return hsv_to_rgb(hsv)


@register_corruption("contrast")
def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = _pick((0.75, 0.5, 0.4, 0.3, 0.15), severity)
    means = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - means) * factor + means


@register_corruption("jpeg_compression")
def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    from kornia.enhance import jpeg_codec_differentiable

    quality = float(_pick((80, 65, 58, 50, 40), severity))
    with torch.no_grad():
        return jpeg_codec_differentiable(images.clamp(0, 1), torch.full((len(images),), quality,
                                                                        device=images.device))


@register_corruption("pixelate")
def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """The image at a lower resolution, blown back up (bilinear both ways, antialiased down:
    nearest-neighbour blocks at these near-1 factors alias, so the damage would not grow with
    the severity)."""
    factor = _pick((0.95, 0.9, 0.85, 0.75, 0.65), severity)
    height, width = images.shape[-2:]
    small = F.interpolate(images, size=(max(1, int(height * factor)), max(1, int(width * factor))),
                          mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


@register_corruption("fog")
def fog(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A haze of fractal noise (octaves of upsampled random noise), then the contrast it lowers."""
    strength, decay = _pick(((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)), severity)
    n, _, height, width = images.shape
    haze = torch.zeros(n, 1, height, width, dtype=images.dtype, device=images.device)
    amplitude, cells = 1.0, 2
    while cells <= max(height, width):
        octave = _randn((n, 1, cells, cells), generator, images)
        haze += amplitude * F.interpolate(octave, size=(height, width), mode="bicubic", align_corners=False)
        amplitude /= decay
        cells *= 2
    low = haze.amin(dim=(2, 3), keepdim=True)
    high = haze.amax(dim=(2, 3), keepdim=True)
    haze = (haze - low) / (high - low + 1e-8)
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images + strength * haze) * peak / (peak + strength)


@register_corruption("elastic")
def elastic(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pixels moved by a smooth random displacement field (kornia's elastic transform)."""
    from kornia.geometry.transform import elastic_transform2d

    alpha = _pick((0.5, 1.0, 1.5, 2.0, 2.5), severity)
    sigma = 4.0 * _scale(images)
    size = 2 * int(3 * sigma) + 1
    noise = _rand((len(images), 2, *images.shape[-2:]), generator, images) * 2 - 1
    return elastic_transform2d(images, noise, kernel_size=(size, size), sigma=(sigma, sigma), alpha=(alpha, alpha),
                               padding_mode="reflection")
