"""rdprune.methods.rd.distortion against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdprune.methods.rd.distortion import REDUCTIONS, Accumulator, check_reduction, joint
from rdprune.errors import UserError


def numpy_distortion(reference: np.ndarray, pruned: np.ndarray) -> dict[str, float]:
    """Per-sample mean over logits of the squared error (float64); mean and max over samples."""
    diff = reference.astype(np.float64).reshape(len(reference), -1) - pruned.astype(
        np.float64
    ).reshape(len(pruned), -1)
    per_sample = np.mean(diff**2, axis=1)
    return {"mean": float(per_sample.mean()), "worst": float(per_sample.max())}


def logits(seed: int, shape=(7, 5), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(7, 5), (3, 2, 4)])
def test_joint_matches_numpy(shape):
    y, y_hat = logits(0, shape), logits(1, shape)
    got = joint(y, y_hat)
    want = numpy_distortion(y.numpy(), y_hat.numpy())
    assert set(got) == set(REDUCTIONS)
    for r in REDUCTIONS:
        assert got[r] == pytest.approx(want[r], rel=1e-12)
    assert got["worst"] > got["mean"] > 0


def test_joint_accumulates_in_float64():
    """A 2^-47 contribution next to 4.5 survives (float32 sums would drop it)."""
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y_hat = torch.tensor([[1.0 + 2.0**-23, 0.0], [0.0, 3.0]])
    got = joint(y, y_hat)
    assert got["worst"] == 4.5
    assert got["mean"] == (2.0**-46 / 2 + 4.5) / 2


def test_accumulator_over_chunks_and_variants_equals_joint():
    """Curves (chunked, variants stacked) and a measured joint distortion agree bitwise."""
    y = logits(2, (10, 6))
    variants = [logits(3 + v, (10, 6)) for v in range(3)]
    acc = Accumulator(3)
    for lo, hi in ((0, 4), (4, 10)):  # two chunks of samples
        acc.add(torch.stack([v[lo:hi] for v in variants[:2]]), y[lo:hi], start=0)
        acc.add(variants[2][lo:hi].unsqueeze(0), y[lo:hi], start=2)
    for r in REDUCTIONS:
        got = acc.result(r, 10)
        assert got.dtype == np.float64 and got.shape == (3,)
        want = [numpy_distortion(y.numpy(), v.numpy())[r] for v in variants]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert acc.result("worst", 10)[1] == joint(y, variants[1])["worst"]


def test_identical_outputs_give_zero():
    y = logits(4)
    assert joint(y, y.clone()) == {"mean": 0.0, "worst": 0.0}


def test_reduction_check_and_shape_check():
    assert check_reduction("worst") == "worst"
    with pytest.raises(UserError, match="unknown distortion reduction 'max'") as exc:
        check_reduction("max")
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="equal non-empty shapes"):
        joint(logits(0, (3, 5)), logits(1, (3, 4)))
