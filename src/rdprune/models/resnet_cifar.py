"""CIFAR ResNets (He et al., 2016, section 4.2): depth 6n+2, three stages of n BasicBlocks.

Two shortcut variants at the two downsampling blocks:

* ``"conv"`` (the paper's official pruning code): 1x1 conv (no bias) + BN projection, so the
  shortcut convs are prunable layers too (ResNet-32: 34 layers, 464,432 weights).
* ``"A"`` (He et al. option A): parameter-free, stride-2 subsampling plus zero-padded channels
  (ResNet-32: 32 layers, 461,872 weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdprune.errors import UserError
from rdprune.models.weights import require_random_init

SHORTCUTS = ("conv", "A")


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        # Split the padding between both sides, as in He et al.'s Torch code.
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs (no bias) with BN; ReLU after the residual sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = PadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv -> 3 stages of BasicBlocks -> global average pool -> Linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "conv",
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(
    depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv"
) -> CifarResNet:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...).

    Args:
        depth: total depth; must be 6n + 2 with n >= 1.
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        shortcut: ``"conv"`` (1x1 conv + BN projection, as the official code) or ``"A"``
            (zero-padding, He et al. option A) at the downsampling blocks.
    """
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    if shortcut not in SHORTCUTS:
        choices = ", ".join(SHORTCUTS)
        raise UserError(f"unknown ResNet shortcut {shortcut!r}; choose one of {choices}")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, shortcut=shortcut)


def resnet32(
    num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv", weights: str | None = None
) -> CifarResNet:
    """ResNet-32 for CIFAR (see :func:`cifar_resnet`); ``weights`` must be None (random init)."""
    require_random_init("resnet32", weights)
    return cifar_resnet(32, num_classes, in_channels, shortcut)
