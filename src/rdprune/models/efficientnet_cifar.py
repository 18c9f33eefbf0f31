"""EfficientNet-B0 for CIFAR, the variant used by LAMP and the paper's official code.

Stride-1 3x3 stem to 32 channels, 16 MBConv blocks with squeeze-excitation, global average pool,
dropout and one Linear 320 -> classes (no 1x1 head conv to 1280, unlike the ImageNet model).

Faithful quirk: like the official definition, every block *defines* its 1x1 expansion conv, but a
block with expansion 1 (only the first) never calls it. That conv is therefore not a prunable layer
(``rdprune.pruning.layers.find_prunable`` only lists layers that run): 81 prunable layers, not 82. It is
kept so that checkpoints of the official model load with the same keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from rdprune.models.weights import require_random_init

# Per stage: (expansion, out channels, repeats, kernel, first stride).
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches per sample with probability ``rate`` (stochastic depth)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 conv (swish) -> 1x1 conv (sigmoid) -> scale input."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.se1 = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.se2 = nn.Conv2d(squeezed, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.se2(F.silu(self.se1(s))))
        return x * s


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, SE, 1x1 project (+ residual)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        stride: int,
        expansion: int,
        se_ratio: float = 0.25,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.expansion = expansion
        self.drop_rate = drop_rate
        channels = expansion * in_planes
        # Defined even when expansion == 1, where forward skips it (see the module docstring).
        self.conv1 = nn.Conv2d(in_planes, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(  # depthwise
            channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels, int(in_planes * se_ratio))
        self.conv3 = nn.Conv2d(channels, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.has_skip = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expansion == 1 else F.silu(self.bn1(self.conv1(x)))
        out = F.silu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        if self.has_skip:
            out = drop_connect(out, self.drop_rate, self.training) + x
        return out


class CifarEfficientNet(nn.Module):
    """Stem, MBConv stages, global pool, dropout, Linear."""

    def __init__(
        self,
        stages=B0_STAGES,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_channels: int = 32,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.2,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        total = sum(s[2] for s in stages)
        blocks = []
        in_planes = stem_channels
        for expansion, out_planes, repeats, kernel, stride in stages:
            for r in range(repeats):
                # Drop-connect rate grows linearly with block index: 0 for the first block.
                rate = drop_connect_rate * len(blocks) / total
                first_stride = stride if r == 0 else 1
                blocks.append(
                    MBConv(in_planes, out_planes, kernel, first_stride, expansion, drop_rate=rate)
                )
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.bn1(self.conv1(x)))
        out = F.adaptive_avg_pool2d(self.layers(out), 1).flatten(1)
        return self.linear(self.dropout(out))


def efficientnet_b0(
    num_classes: int = 10, in_channels: int = 3, weights: str | None = None
) -> CifarEfficientNet:
    """CIFAR EfficientNet-B0 (81 prunable layers; see the module docstring); random init only."""
    require_random_init("efficientnet_b0", weights)
    return CifarEfficientNet(B0_STAGES, num_classes, in_channels)
