"""DenseNet-BC for CIFAR (Huang et al., 2017), as used by LAMP and the paper's code.

Bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, concatenated to the input),
transitions (BN-ReLU-1x1 conv to floor(c * reduction), 2x2 average pool), a 3x3 stem to 2k
channels, all convs without bias. DenseNet-121 (blocks 6/12/24/16, k = 12): 121 prunable layers,
969,288 weights, Linear 384 -> classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from rdprune.models.weights import require_random_init


class Bottleneck(nn.Module):
    """One dense layer: adds ``growth_rate`` channels to its input."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """Channel compression (1x1 conv) and 2x spatial downsampling between dense blocks."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(nn.Module):
    """Stem, dense blocks separated by transitions, final BN-ReLU, global pool, Linear."""

    def __init__(
        self,
        blocks: Sequence[int],
        growth_rate: int = 12,
        reduction: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(Bottleneck(planes, growth_rate))
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def densenet121(
    num_classes: int = 10,
    in_channels: int = 3,
    growth_rate: int = 12,
    reduction: float = 0.5,
    blocks: Sequence[int] = (6, 12, 24, 16),
    weights: str | None = None,
) -> CifarDenseNet:
    """CIFAR DenseNet-121 (growth 12, compression 0.5 by default).

    Args:
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        growth_rate: channels each bottleneck layer adds (k).
        reduction: transition compression factor, in (0, 1].
        blocks: bottleneck layers per dense block.
        weights: must be None (random initialisation; no pretrained weights exist).
    """
    require_random_init("densenet121", weights)
    return CifarDenseNet(tuple(blocks), growth_rate, reduction, num_classes, in_channels)
