"""Published results of the paper's method, to set beside reproduced ones.

Source: the README of the official code of Xu et al. (ICCV 2023), GitHub Akimoto-Cris/RD_PRUNE
(the paper's own tables were not available).
Units: ``sparsity`` and ``flops`` are percent (weights removed, FLOPs remaining); ``top1``,
``top1_std``, ``dense`` and ``diff`` are top-1 accuracy in percent; ``top1_std`` is None where no
spread was published. ``method`` is "ours", or "ours_zerodata" for synthetic calibration inputs. Model and dataset keys are the project's config names
(``model_name`` / ``dataset.name``), so runs match rows without translation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published result of the paper's method ("ours" or "ours_zerodata")."""

    model: str
    dataset: str
    schedule: str
    sparsity: float
    flops: float
    top1: float
    top1_std: float | None
    dense: float
    diff: float
    method: str = "ours"
    note: str = ""


PUBLISHED: tuple[Published, ...] = (
    Published("resnet32", "cifar10", "iterative", 95.5, 3.59, 90.83, 0.24, 93.99, -3.16),
    Published("vgg16", "cifar10", "iterative", 98.85, 3.43, 92.14, 0.18, 91.71, +0.43),
    Published("densenet121", "cifar10", "iterative", 98.85, 2.02, 87.7, 0.24, 91.14, -3.44),
    Published("efficientnet_b0", "cifar10", "iterative", 98.85, 4.58, 85.63, 0.31, 87.95, -2.32),
    Published("vgg16_bn", "imagenet", "iterative", 89.3, 17.71, 68.88, None, 73.37, -4.49),
    Published("resnet50", "imagenet", "iterative", 41.0, 53.5, 75.90, None, 76.14, -0.24),
    Published("resnet50", "imagenet", "oneshot", 58.0, 34.5, 75.59, None, 76.14, -0.55,
              note="diff computed from the published top-1 and dense"),
    Published("resnet50", "imagenet", "oneshot", 50.0, 42.48, 75.13, None, 76.14, -1.01,
              method="ours_zerodata",
              note="schedule not stated (assumed one-shot); dense and diff assumed as one-shot"),
)

def dense_top1(model: str, dataset: str) -> float | None:
    """The published dense top-1 (%) of ``model`` on ``dataset`` (any method, schedule, target)."""
    return next((p.dense for p in PUBLISHED if (p.model, p.dataset) == (model, dataset)), None)


#: display names used in the paper-style table (config name -> paper spelling)
DISPLAY = {
    "resnet32": "ResNet-32",
    "resnet32_a": "ResNet-32 (A)",
    "vgg16": "VGG-16",
    "vgg16_bn": "VGG-16-BN",
    "densenet121": "DenseNet-121",
    "efficientnet_b0": "EfficientNet-B0",
    "resnet50": "ResNet-50",
    "lenet5": "LeNet-5",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenet": "ImageNet",
    "digits": "Digits",
    "synthetic": "Synthetic",
}

#: how far (percentage points) a run's target sparsity may be from a published one to match
TOLERANCE_PP = 0.5


def match(model: str, dataset: str, schedule: str, sparsity_pct: float, method: str = "ours"
          ) -> Published | None:
    """The published row for a reproduced cell, or None.

    Args:
        model, dataset, schedule: the run's config names.
        sparsity_pct: the run's target sparsity in percent.
        method: only "ours" and "ours_zerodata" have published rows.

    Returns:
        The closest published row within :data:`TOLERANCE_PP` percentage points, else None.
    """
    rows = [p for p in PUBLISHED
            if (p.model, p.dataset, p.schedule, p.method) == (model, dataset, schedule, method)
            and abs(p.sparsity - sparsity_pct) <= TOLERANCE_PP]
    return min(rows, key=lambda p: abs(p.sparsity - sparsity_pct), default=None)
