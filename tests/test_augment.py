"""Per-batch training augmentation and normalisation."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from dfpractise.augment import Normalize, mixing, normalize, train_augmentation


@pytest.mark.parametrize(("size", "crop"), [(32, K.RandomCrop), (96, K.RandomResizedCrop)])
def test_recipe_by_input_size(size: int, crop: type) -> None:
    layers = list(train_augmentation(size))
    assert isinstance(layers[0], crop) and isinstance(layers[1], K.RandomHorizontalFlip)


@pytest.mark.parametrize("size", [8, 32, 96])
def test_shape_range_and_dtype(size: int) -> None:
    images = torch.rand(6, 3, size, size)
    out = train_augmentation(size)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, images)


@pytest.mark.parametrize("size", [32, 96])
def test_reproducible_under_manual_seed(size: int) -> None:
    augment = train_augmentation(size)
    images = torch.rand(8, 3, size, size)
    torch.manual_seed(7)
    first = augment(images)
    second = augment(images)
    torch.manual_seed(7)
    assert torch.equal(augment(images), first)
    assert torch.equal(augment(images), second)
    assert not torch.equal(first, second)


def test_small_inputs_are_shifted_or_flipped_copies() -> None:
    """Pad-4 crop + flip only moves pixels: each output is a shifted, maybe mirrored, input."""
    images = torch.rand(16, 3, 12, 12)
    torch.manual_seed(0)
    out = train_augmentation(12)(images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for source, result in zip(padded, out):
        views = [
            view[:, dy : dy + 12, dx : dx + 12]
            for view in (source, source.flip(-1))
            for dy in range(9)
            for dx in range(9)
        ]
        assert any(torch.allclose(result, v) for v in views)


def test_normalize_function_and_module_agree() -> None:
    images = torch.rand(2, 3, 5, 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(images, mean, std), expected)
    assert torch.allclose(Normalize(mean, std)(images), expected)
    assert "mean=" in repr(Normalize(mean, std))
    assert set(dict(Normalize(mean, std).named_buffers())) == {"mean", "std"}


# --- mixing pairs of a batch (recovery.mix) ------------------------------------------------------

def _constant_images(values: list[float], size: int = 8) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def test_no_mixing_is_no_function_and_an_unknown_one_is_refused() -> None:
    assert mixing("none") is None
    with pytest.raises(ValueError, match="unknown mixing 'mixdown'"):
        mixing("mixdown")


def test_mixup_blends_each_image_with_a_partner_of_the_batch() -> None:
    """Images of one constant value each: a blend is constant too, between the batch's values, and
    most images move (the weight is drawn per image)."""
    images = _constant_images([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    torch.manual_seed(0)
    out = mixing("mixup")(images)
    assert out.shape == images.shape
    per_image = out.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image)), "a blend of constants is constant"
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert (per_image[:, 0] - images.flatten(1)[:, 0]).abs().gt(1e-3).sum() >= 3


def test_cutmix_pastes_a_partners_rectangle() -> None:
    """Every pixel comes from the image itself or from one partner, and some images get a patch."""
    images = _constant_images([0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6], size=16)
    torch.manual_seed(1)
    out = mixing("cutmix")(images)
    values = set(images[:, 0, 0, 0].tolist())
    patched = 0
    for own, result in zip(images[:, 0, 0, 0].tolist(), out):
        seen = set(result.unique().tolist())
        assert seen <= values and len(seen) <= 2
        patched += seen != {own}
    assert patched >= 1


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_repeats_under_manual_seed_and_leaves_a_single_image_alone(kind: str) -> None:
    images = torch.rand(8, 3, 16, 16)
    torch.manual_seed(3)
    first = mixing(kind)(images)
    torch.manual_seed(3)
    assert torch.equal(mixing(kind)(images), first)
    assert not torch.equal(first, images)
    assert torch.equal(mixing(kind)(images[:1]), images[:1])
