"""Calibration inputs without data, and BN statistics for random-init models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def gaussian_inputs(
    n: int,
    shape: Sequence[int],
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Zero-data calibration set: ``n`` i.i.d. N(0, 1) samples in normalised input space.

    Drawn on the CPU from a private generator, so the result depends only on ``seed`` (not on the
    device or the global RNG state).

    Args:
        n: number of samples.
        shape: shape of one sample, e.g. ``(3, 32, 32)``.
        seed: generator seed.
        device: where the returned tensor lives (default CPU).
        dtype: floating dtype of the samples.

    Returns:
        Tensor of shape ``[n, *shape]``.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((int(n), *shape), generator=gen, dtype=dtype).to(device)


@torch.no_grad()
def warm_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the plain average over ``batches``.

    For models at random initialisation (benchmarks, tests), whose running statistics would
    otherwise be the identity, so that folding BN is not a no-op. Runs ``model`` in train mode on
    each batch with a cumulative average (``momentum=None``), restores each BN's momentum, and
    returns the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = None
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()
