"""MAC counts of prunable layers, from ``torch.utils.flop_counter``.

"FLOPs kept" = sum over conv/linear layers of dense MACs x density, divided by the dense total: a
fraction like sparsities (tables print it as "FLOPs remaining %"). MACs are per input sample (the
counter reports FLOPs = 2 x MACs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rdprune.pruning.layers import LinearUses, unwrap


@torch.no_grad()
def layer_macs(
    model: nn.Module, example: torch.Tensor, names: Sequence[str]
) -> dict[str, int]:
    """Dense MACs per sample of each named layer, counted on ``model(example)``.

    Args:
        model: the network (mode restored afterwards).
        example: an input batch; counts are divided by its batch size.
        names: module names of the layers to report (e.g. the prunable layers).
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    uses = LinearUses()
    try:
        with FlopCounterMode(display=False) as counter, uses:
            model(example)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    batch = example.shape[0]
    out = {}
    for name in names:
        flops = sum(counts.get(f"{prefix}.{name}", {}).values())
        # a Linear whose weight its parent reads functionally: its F.linear calls' MACs
        functional = uses.macs.get(id(model.get_submodule(name).weight), 0)
        out[name] = int(flops) // (2 * batch) if flops else functional // batch
    return out


def flops_kept(macs: Sequence[int], densities: Sequence[float]) -> float:
    """Fraction of the dense conv/linear MACs kept, in [0, 1] (tables show it in percent)."""
    total = sum(macs)
    return sum(m * d for m, d in zip(macs, densities)) / total if total else 1.0
