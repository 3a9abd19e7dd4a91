"""torchvision ImageNet classifiers with the feature protocol added.

Subclassing (instead of wrapping) keeps state-dict keys identical to torchvision's, so its
published weight files load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models import ResNet as _TVResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from dfpractise.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    register_model,
    with_num_classes,
)


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in output order, as torchvision ships them (offline)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class ResNet(_TVResNet):
    """torchvision ResNet whose features can be run, listed and cut layer by layer."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        # Not inplace: a hook on bn1's output must not see it overwritten by the stem ReLU.
        self.relu = nn.ReLU(inplace=False)
        self.num_features = self.fc.in_features

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """Ordered (module path, module) pairs whose composition is ``forward_features``."""
        return [
            ("conv1", self.conv1),
            ("bn1", self.bn1),
            ("relu", self.relu),
            ("maxpool", self.maxpool),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.feature_layers():
            x = module(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MobileNetV2Features(MobileNetV2):
    """torchvision MobileNetV2 exposing ``features`` as its single feature layer."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(num_classes=num_classes)
        self.num_features = self.last_channel

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """Ordered (module path, module) pairs whose composition is ``forward_features``."""
        return [("features", self.features)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.feature_layers():
            x = module(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(features, 1)
        return self.classifier(torch.flatten(pooled, 1))  # classifier = Dropout + Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _config(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=1000,
        default_weights=None,
        class_names=imagenet_classes(),
    )


def _resnet(
    config: ModelSpec, block: type[nn.Module], layers: list[int], num_classes: int | None
) -> ResNet:
    cfg = with_num_classes(config, num_classes)
    model = ResNet(block, layers, num_classes=cfg.num_classes)
    model.model_spec = cfg
    return model


_R18, _R34, _R50, _R101, _R152 = (_config(f"resnet{d}") for d in (18, 34, 50, 101, 152))
_MBV2 = _config("mobilenet_v2")


@register_model(spec=_R18)
def resnet18(num_classes: int | None = None) -> ResNet:
    return _resnet(_R18, BasicBlock, [2, 2, 2, 2], num_classes)


@register_model(spec=_R34)
def resnet34(num_classes: int | None = None) -> ResNet:
    return _resnet(_R34, BasicBlock, [3, 4, 6, 3], num_classes)


@register_model(spec=_R50)
def resnet50(num_classes: int | None = None) -> ResNet:
    return _resnet(_R50, Bottleneck, [3, 4, 6, 3], num_classes)


@register_model(spec=_R101)
def resnet101(num_classes: int | None = None) -> ResNet:
    return _resnet(_R101, Bottleneck, [3, 4, 23, 3], num_classes)


@register_model(spec=_R152)
def resnet152(num_classes: int | None = None) -> ResNet:
    return _resnet(_R152, Bottleneck, [3, 8, 36, 3], num_classes)


@register_model(spec=_MBV2)
def mobilenet_v2(num_classes: int | None = None) -> MobileNetV2Features:
    cfg = with_num_classes(_MBV2, num_classes)
    model = MobileNetV2Features(num_classes=cfg.num_classes)
    model.model_spec = cfg
    return model
