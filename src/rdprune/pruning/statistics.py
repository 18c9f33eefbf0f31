"""Calibration statistics of layer inputs: Wanda's feature norms and SparseGPT's Hessian.

For a linear layer with input ``X`` (every calibration token a row, ``d_in`` features):

- ``norms``: ``||X_j||_2 = sqrt(sum over tokens of x_j^2)``, Wanda's and OWL's metric. Wanda's
  official code keeps a running mean over sequences of each sequence's sum of squares
  (``lib/layerwrapper.py::add_batch``), so its ``sqrt(scaler_row)`` is ``||X_j||_2 / sqrt(N)``: a
  constant factor per layer, which changes neither the ranking within a row nor OWL's
  ``M x mean`` outlier threshold.
- ``hessian``: ``H = (2 / N) sum over sequences of X_s^T X_s`` (``[d_in, d_in]``), SparseGPT's
  ``add_batch`` (a running average over the N sequences).
- ``gram``: ``G = X^T X`` summed, unscaled and kept in float64, of what the weight multiplies:
  ``[groups, d, d]``, for a convolution the unfolded input patches of each group (``d`` = in
  channels per group x kernel area), for a linear layer one group of ``d = d_in`` (the local
  RD-curve estimator's ``tr(dW G dW^T)``, :mod:`rdprune.methods.rd.estimators`).

Both are summed in float64 over every calibration token and returned in float32 (the official
codes accumulate in float32). They are measured on the model as given, all layers in one pass;
the sequential protocol (:mod:`rdprune.pruning.sequential`) measures them block by block on the
inputs the already-pruned blocks produce.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rdprune.pruning.layers import out_in

KINDS = ("norms", "hessian", "gram")


class Collector:
    """Forward pre-hooks on the layers accumulating their inputs' ``norms``, ``hessian`` (linear
    layers) or ``gram`` (also convolutions; module docstring); use as a context manager, then
    :meth:`result`."""

    def __init__(self, layers: Mapping[str, nn.Module], kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.layers, self.kind = dict(layers), kind
        self.sums: dict[str, torch.Tensor] = {}
        self.sequences: dict[str, int] = {}
        self.handles: list = []

    def _hook(self, name: str):
        def record(module, args):
            x = args[0].detach()
            sequences = x.shape[0] if x.dim() > 2 else 1
            if self.kind == "gram":
                part = _gram(module, x)
            else:
                x = x.reshape(-1, x.shape[-1]).double()
                part = x.square().sum(dim=0) if self.kind == "norms" else x.T @ x
            self.sums[name] = self.sums[name] + part if name in self.sums else part
            self.sequences[name] = self.sequences.get(name, 0) + sequences
        return record

    def __enter__(self) -> Collector:
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def result(self) -> dict[str, torch.Tensor]:
        """Per layer: ``norms`` ``[d_in]`` or ``hessian`` ``[d_in, d_in]``, float32 on CPU; or
        ``gram`` ``[groups, d, d]``, float64 where it was summed."""
        missing = [n for n in self.layers if n not in self.sums]
        if missing:
            raise RuntimeError(f"layers never called on the calibration inputs: {missing[:3]}")
        out = {}
        for name, m in self.layers.items():
            d_in = out_in(m)[0].numel()  # (a convolution: in channels per group x kernel area)
            if self.sums[name].shape[-1] != d_in:
                raise RuntimeError(f"{name}: {self.sums[name].shape[-1]} input features, weight "
                                   f"takes {d_in}")
            s = self.sums[name]
            if self.kind == "gram":
                out[name] = s
                continue
            s = s.sqrt() if self.kind == "norms" else s * (2.0 / self.sequences[name])
            out[name] = s.float().cpu()
        return out


def _gram(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[groups, d, d]``: the float64 Gram matrix of one batch of what ``module``'s weight
    multiplies (unfolded patches per group for a convolution)."""
    if isinstance(module, nn.Conv2d):
        cols = torch.nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding,
                                          module.stride)  # [B, C_in k k, L]
        g = module.groups
        rows = cols.transpose(1, 2).reshape(-1, g, cols.shape[1] // g).double()
    else:
        rows = x.reshape(-1, 1, x.shape[-1]).double()
    return torch.einsum("ngi,ngj->gij", rows, rows)


@torch.inference_mode()
def input_statistics(
    model: nn.Module, layers: Mapping[str, nn.Module], inputs: torch.Tensor, kind: str,
    batch_size: int = 16, device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """:class:`Collector`'s statistics of every layer over ``inputs`` (one pass).

    Args:
        model: the network (eval mode is used and restored).
        layers: linear layers of ``model`` (``nn.Linear`` or ``Conv1D``; ``gram`` also
            ``nn.Conv2d``).
        inputs: calibration inputs ``[N, ...]``, run in chunks of ``batch_size``.
        kind: ``norms``, ``hessian`` or ``gram``.
        batch_size: samples per forward.
        device: where to run (default: the model's).
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with Collector(layers, kind) as col:
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
    return col.result()


def input_norms(model: nn.Module, layers: Mapping[str, nn.Module], inputs: torch.Tensor,
                batch_size: int = 16, device: torch.device | str | None = None
                ) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of every layer's input features over ``inputs`` (float32 ``[d_in]`` each)."""
    return input_statistics(model, layers, inputs, "norms", batch_size, device)
