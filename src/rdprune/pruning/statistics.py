"""Calibration statistics of layer inputs: the ``||X_j||_2`` of Wanda and OWL.

For a linear layer with input ``X`` (every calibration token a row, ``d_in`` features), the norm of
feature j is ``||X_j||_2 = sqrt(sum over tokens of x_j^2)``. Wanda's official code keeps a running
mean over sequences of each sequence's sum of squares (``lib/layerwrapper.py::add_batch``), so its
``sqrt(scaler_row)`` is ``||X_j||_2 / sqrt(N)``: a constant factor per layer, which changes neither
the ranking within a row nor OWL's ``M x mean`` outlier threshold. Here the plain norm, summed in
float64 over all calibration tokens of the model as given (not block by block after pruning the
blocks before, as Wanda's sequential loop does: the RD curves measure single layers of this model,
whose inputs are exactly these).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rdprune.models.lm import out_in


@torch.inference_mode()
def input_norms(
    model: nn.Module, layers: Mapping[str, nn.Module], inputs: torch.Tensor,
    batch_size: int = 16, device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of every layer's input features over ``inputs`` (float32 ``[d_in]`` each).

    Args:
        model: the network (eval mode is used and restored).
        layers: linear layers of ``model`` (``nn.Linear`` or ``Conv1D``).
        inputs: calibration inputs ``[N, ...]``, run in chunks of ``batch_size``.
        batch_size: samples per forward.
        device: where to run (default: the model's).
    """
    if device is None:
        device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq = x.square().sum(dim=0)
            sums[name] = sums[name] + sq if name in sums else sq
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in sums]
    if missing:
        raise RuntimeError(f"layers never called on the calibration inputs: {missing[:3]}")
    out = {}
    for name, m in layers.items():
        d_in = out_in(m).shape[1]
        if sums[name].numel() != d_in:
            raise RuntimeError(f"{name}: {sums[name].numel()} input features, weight takes {d_in}")
        out[name] = sums[name].sqrt().float()
    return out
