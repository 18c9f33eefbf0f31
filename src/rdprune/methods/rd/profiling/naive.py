"""The baseline: one full forward of the calibration set per layer per grid point."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rdprune.methods.rd.distortion import Accumulator
from rdprune.methods.rd.graph import Placement
from rdprune.pruning.layers import unwrap
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import num_pruned
from rdprune.methods.rd.profiling.common import (
    Layers, check_grid, check_output, chunks, device_of, preserve_modes, resolve_layers,
)
from rdprune.methods.rd.profiling.store import Sink
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
    sink: Sink | None = None,
    criterion: Criterion | None = None,
    groups: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Baseline: one full forward of the calibration set per layer per grid point.

    Same arguments, semantics and result as :func:`rd_curves`; the fast path's own options
    (``grid_batch``, ``fold_bn``, ``reuse``) are accepted, so callers can swap the two, and
    ignored. ``channels_last`` here converts the inputs only (the model is not touched). Each
    layer's weight is pruned in place, as the official code does, and restored bitwise
    afterwards, also on error. ``criterion`` chooses the weights (default magnitude); with
    ``groups`` (lists of layer names) a row prunes a group's layers together.
    """
    del grid_batch, fold_bn, reuse  # fast-path options: nothing to do here
    base = unwrap(model)
    grid = check_grid(grid, reduction)
    criterion = criterion or Criterion()
    with preserve_modes(base):
        base.eval()
        names, mods = resolve_layers(base, inputs, layers)
        by_name = dict(zip(names, mods))
        rows = [list(g) for g in groups] if groups is not None else [[n] for n in names]
        ctx = Placement(device_of(base, inputs), autocast_dtype, channels_last)
        with torch.inference_mode(), ctx.autocast():
            ys = [base(x) for x in chunks(inputs, batch_size, ctx)]
        check_output(ys[0])
        out = np.zeros((len(rows), len(grid)), dtype=np.float64)
        bar = progress_bar(total=len(rows) * len(grid), desc="RD curves (naive)",
                           disable=not progress)
        with bar:
            for ri, row in enumerate(rows):
                if sink is not None and not sink.take(ri):
                    bar.update(len(grid))
                    continue
                start = time.perf_counter()
                members = [(n, by_name[n]) for n in row]
                originals = [m.weight.detach().clone() for _, m in members]
                try:
                    for j, s in enumerate(grid):
                        with torch.no_grad():
                            for (n, m), w in zip(members, originals):
                                m.weight.copy_(w)  # the criterion sees the original weights
                                k = num_pruned(w.numel(), float(s))
                                m.weight.copy_(criterion.pruned_weights(n, m, [k])[0][0])
                        acc = Accumulator(1, originals[0].device)
                        with torch.inference_mode(), ctx.autocast():
                            for x, y in zip(chunks(inputs, batch_size, ctx), ys):
                                acc.add(base(x).unsqueeze(0), y)
                        out[ri, j] = acc.result(reduction, inputs.shape[0])[0]
                        bar.update()
                finally:
                    with torch.no_grad():
                        for (_, m), w in zip(members, originals):
                            m.weight.copy_(w)
                if sink is not None:  # after the restore: it may hand on a stop signal
                    sink.put(ri, out[ri], time.perf_counter() - start)
    return out
