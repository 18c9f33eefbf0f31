"""The baseline: one full forward of the calibration set per layer per grid point."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rdprune.distortion import Accumulator
from rdprune.graph import Placement
from rdprune.layers import unwrap
from rdprune.masks import magnitude_mask
from rdprune.profiling.common import (
    Layers, check_grid, check_output, chunks, device_of, preserve_modes, resolve_layers,
)
from rdprune.progress import bar as progress_bar


def rd_curves_naive(
    model: nn.Module,
    inputs: torch.Tensor,
    grid: Sequence[float],
    reduction: str = "mean",
    *,
    layers: Layers = None,
    batch_size: int = 256,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    grid_batch: int | None = None,
    fold_bn: bool = False,
    reuse: bool = True,
) -> np.ndarray:
    """Baseline: one full forward of the calibration set per layer per grid point.

    Same arguments, semantics and result as :func:`rd_curves`; the fast path's own options
    (``grid_batch``, ``fold_bn``, ``reuse``) are accepted, so callers can swap the two, and
    ignored. ``channels_last`` here converts the inputs only (the model is not touched). Each
    layer's weight is pruned in place, as the official code does, and restored bitwise
    afterwards, also on error.
    """
    del grid_batch, fold_bn, reuse  # fast-path options: nothing to do here
    base = unwrap(model)
    grid = check_grid(grid, reduction)
    with preserve_modes(base):
        base.eval()
        names, mods = resolve_layers(base, inputs, layers)
        ctx = Placement(device_of(base, inputs), autocast_dtype, channels_last)
        with torch.inference_mode(), ctx.autocast():
            ys = [base(x) for x in chunks(inputs, batch_size, ctx)]
        check_output(ys[0])
        out = np.zeros((len(mods), len(grid)), dtype=np.float64)
        bar = progress_bar(total=len(mods) * len(grid), desc="RD curves (naive)",
                           disable=not progress)
        with bar:
            for li, mod in enumerate(mods):
                weight = mod.weight
                original = weight.detach().clone()
                try:
                    for j, s in enumerate(grid):
                        with torch.no_grad():
                            mask = magnitude_mask(original, s)
                            weight.copy_(torch.where(mask, original, torch.zeros_like(original)))
                        acc = Accumulator(1, weight.device)
                        with torch.inference_mode(), ctx.autocast():
                            for x, y in zip(chunks(inputs, batch_size, ctx), ys):
                                acc.add(base(x).unsqueeze(0), y)
                        out[li, j] = acc.result(reduction, inputs.shape[0])[0]
                        bar.update()
                finally:
                    with torch.no_grad():
                        weight.copy_(original)
    return out
