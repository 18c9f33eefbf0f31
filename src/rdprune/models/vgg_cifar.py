"""VGG-16 for CIFAR: 13 conv3x3 (with bias) + BN + ReLU, 5 max-pools, one Linear 512 -> classes.

This is the CIFAR variant used by LAMP and the official code (not torchvision's ImageNet VGG with
its three large FC layers): 14 prunable layers, 14,715,584 weights, ~313.2M MACs at 32x32.
"""

from __future__ import annotations

import torch
from torch import nn
from rdprune.models.weights import require_random_init

# Channel widths; "M" is a 2x2 max-pool closing a stage.
VGG16_CFG: tuple[int | str, ...] = (
    *(64, 64, "M"),
    *(128, 128, "M"),
    *(256, 256, 256, "M"),
    *(512, 512, 512, "M"),
    *(512, 512, 512, "M"),
)


class CifarVGG(nn.Module):
    """Conv/BN/ReLU stack from ``cfg``, adaptive average pool to 1x1, one Linear."""

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                conv = nn.Conv2d(channels, v, 3, padding=1)
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(num_classes: int = 10, in_channels: int = 3, weights: str | None = None) -> CifarVGG:
    """CIFAR VGG-16 (inputs of at least 32x32: five 2x max-pools); random init only."""
    require_random_init("vgg16", weights)
    return CifarVGG(VGG16_CFG, num_classes, in_channels)
