"""CIFAR ResNets in the akamaster layout (He et al. 2016, section 4.2, option-A shortcuts).

The module names match the akamaster checkpoints exactly, so their state dicts (and the
fine-tuned copies derived from them) load with ``strict=True``. Every activation is a
registered, non-inplace module so the engine can list, hook and remove pieces safely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfpractise.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    register_model,
    with_num_classes,
)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels; parameter-free by design."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convs plus shortcut: ``relu(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_planes = in_planes
        self.planes = planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ZeroPadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=False)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone (before the addition and the output activation)."""
        return self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem (3x3 conv, 16 ch), three stages of BasicBlocks (16/32/64 ch), GAP, ``linear``."""

    num_features = 64

    def __init__(self, depth_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._stage(16, 16, depth_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, depth_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, depth_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """Ordered (module path, module) pairs whose composition is ``forward_features``."""
        return [
            ("conv1", self.conv1),
            ("bn1", self.bn1),
            ("relu", self.relu),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.feature_layers():
            x = module(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""CIFAR-10 classes in label order (sorted, as ImageFolder assigns them)."""


def _config(depth: int, default_weights: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=f"cifar10_resnet{depth}",
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=10,
        default_weights=default_weights,
        class_names=CIFAR10_CLASSES,
    )


def _build(config: ModelSpec, depth: int, num_classes: int | None) -> CifarResNet:
    cfg = with_num_classes(config, num_classes)
    model = CifarResNet((depth - 2) // 6, num_classes=cfg.num_classes)
    model.model_spec = cfg
    return model


_R20 = _config(20, "cifar10jpeg-resnet20")
_R32 = _config(32)
_R44 = _config(44)
_R56 = _config(56, "cifar10jpeg-resnet56")
_R110 = _config(110)


@register_model(spec=_R20)
def cifar10_resnet20(num_classes: int | None = None) -> CifarResNet:
    return _build(_R20, 20, num_classes)


@register_model(spec=_R32)
def cifar10_resnet32(num_classes: int | None = None) -> CifarResNet:
    return _build(_R32, 32, num_classes)


@register_model(spec=_R44)
def cifar10_resnet44(num_classes: int | None = None) -> CifarResNet:
    return _build(_R44, 44, num_classes)


@register_model(spec=_R56)
def cifar10_resnet56(num_classes: int | None = None) -> CifarResNet:
    return _build(_R56, 56, num_classes)


@register_model(spec=_R110)
def cifar10_resnet110(num_classes: int | None = None) -> CifarResNet:
    return _build(_R110, 110, num_classes)
