"""LeNet-5, Caffe variant, as in the ADMM pruning paper (Zhang et al., 2018).

conv 5x5 -> 20, max-pool 2, conv 5x5 -> 50, max-pool 2, fc -> 500, ReLU, fc -> classes. As in
Caffe's ``lenet_train_test.prototxt`` the only non-linearity is the ReLU after the first fc layer.
At 28x28x1: 430,500 weights (500 + 25,000 + 400,000 + 5,000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdprune.errors import UserError
from rdprune.models.weights import require_random_init


class LeNet5(nn.Module):
    """Two valid-padding 5x5 convs with max-pools, then two fully connected layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise UserError(f"LeNet-5 needs image_size >= 16, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(self.conv1(x), 2)
        out = F.max_pool2d(self.conv2(out), 2)
        out = F.relu(self.fc1(out.flatten(1)))
        return self.fc2(out)


def lenet5(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28, weights: str | None = None
) -> LeNet5:
    """LeNet-5 (Caffe) for square ``image_size`` inputs (MNIST: 28); random init only."""
    require_random_init("lenet5", weights)
    return LeNet5(num_classes, in_channels, image_size)
