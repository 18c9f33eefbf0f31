"""Output distortion: how far pruned logits are from the reference logits.

One definition for the whole project (rate-distortion curves, the pipeline's measured joint
distortion, the additivity study). With ``Y`` the reference and ``Y_hat`` the pruned logits of N
samples, each flattened to C values, and ``d_i = mean_c (Y[i, c] - Y_hat[i, c])^2``:

* ``"mean"``:  the mean of ``d_i`` over samples (= mean over samples and logits);
* ``"worst"``: the max of ``d_i`` over samples.

Accumulated in float64: differences of float32 values are exact there, so no rounding enters
before squaring.
"""

from __future__ import annotations

import numpy as np
import torch

from rdprune.errors import UserError

REDUCTIONS = ("mean", "worst")

__all__ = ["REDUCTIONS", "Accumulator", "check_reduction", "joint"]


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`; otherwise a one-line UserError."""
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown distortion reduction {reduction!r}; choose one of {REDUCTIONS}")
    return reduction


class Accumulator:
    """Distortions of k pruned variants, accumulated over batches of samples.

    Args:
        k: number of variants (e.g. grid points).
        device: where the running sums live (that of the outputs).
    """

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.maxes = torch.zeros(k, dtype=torch.float64, device=device)
        self.per_sample = 1

    def add(self, y_hat: torch.Tensor, y: torch.Tensor, start: int = 0) -> None:
        """Add outputs ``y_hat`` ``[j, b, ...]`` of variants ``start .. start + j - 1``.

        ``y`` ``[b, ...]`` is the reference for the same b samples. Each variant must see every
        sample exactly once over all calls.
        """
        j, b = y_hat.shape[:2]
        sq = (y_hat.reshape(j, b, -1).double() - y.reshape(1, b, -1).double()).square()
        self.add_sums(sq.sum(dim=2), sq.shape[-1], start)

    def add_sums(self, sums: torch.Tensor, per_sample: int, start: int = 0) -> None:
        """Add per-sample sums of squared errors ``[j, b]`` (float64; ``per_sample`` values
        each) of variants ``start .. start + j - 1``, computed by the caller."""
        self.per_sample = per_sample
        part = slice(start, start + sums.shape[0])
        self.sums[part] += sums.sum(dim=1)
        self.maxes[part] = torch.maximum(self.maxes[part], (sums / per_sample).amax(dim=1))

    def result(self, reduction: str, n: int) -> np.ndarray:
        """Per-variant distortion ``[k]`` (float64) over ``n`` samples."""
        if check_reduction(reduction) == "mean":
            return (self.sums / (n * self.per_sample)).cpu().numpy()
        return self.maxes.cpu().numpy()


def joint(reference: torch.Tensor, pruned: torch.Tensor) -> dict[str, float]:
    """Distortion of ``pruned`` logits ``[N, ...]`` against ``reference`` (same shape).

    Returns:
        ``{"mean": ..., "worst": ...}``, the two reductions of the module docstring; the same
        arithmetic as :class:`Accumulator`, so a curve point and a measured distortion of the same
        outputs agree bitwise.
    """
    if reference.shape != pruned.shape or reference.dim() < 1 or reference.shape[0] == 0:
        raise ValueError(
            f"need equal non-empty shapes, got {tuple(reference.shape)} and {tuple(pruned.shape)}"
        )
    acc = Accumulator(1, reference.device)
    acc.add(pruned.unsqueeze(0), reference)
    n = reference.shape[0]
    return {r: float(acc.result(r, n)[0]) for r in REDUCTIONS}
