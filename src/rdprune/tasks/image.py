"""Image classification: a network mapping images ``[N, C, H, W]`` to class logits ``[N, K]``.

Every ``Conv2d`` / ``Linear`` that runs is prunable (:func:`~rdprune.pruning.layers.find_prunable`);
RD curves come from the traced fast path (:func:`~rdprune.methods.rd.profiling.rd_curves`); the
headline metric is top-1 accuracy on the test split, with per-sample flags for the paired tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rdprune.errors import UserError
from rdprune.tasks import Task


class ImageClassification(Task):
    """Any network that is not another task's (module docstring)."""

    name = "image_classification"
    metrics = {"top1": True}

    @staticmethod
    def claims(model: nn.Module) -> bool:
        return True

    def describe(self) -> str:
        return "an image model"

    def needs(self) -> str:
        return "an image dataset (digits, synthetic, cifar10, ...)"

    def check_calibration(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
            raise UserError(f"calib must be a non-empty float batch [N, ...], got a {x.dtype} "
                            f"tensor of shape {tuple(x.shape)}")

    def mac_sample(self, example: torch.Tensor) -> torch.Tensor:
        return example

    def synthetic_inputs(self, model: nn.Module, like: torch.Tensor, seed: int) -> torch.Tensor:
        from rdprune.methods.rd.profiling import gaussian_inputs

        return gaussian_inputs(like.shape[0], like.shape[1:], seed)

    def prunable(self, model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
        from rdprune.pruning.layers import find_prunable

        return find_prunable(model, example)

    def curves(self, model: nn.Module, inputs: torch.Tensor, grid: np.ndarray, reduction: str,
               **options: Any) -> np.ndarray:
        from rdprune.methods.rd.profiling import rd_curves

        if options.pop("groups", None) is not None:
            raise UserError("per-block curves need a language model")
        return rd_curves(model, inputs, grid, reduction, **options)

    def evaluate(self, model: nn.Module, data: Any, device: torch.device,
                 split: str = "test") -> dict[str, Any]:
        from rdprune.training.train import correct, top1

        flags = correct(model, data, device, split)
        return {"top1": top1(flags), "correct": flags}
