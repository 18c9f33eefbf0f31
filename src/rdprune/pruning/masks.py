"""Masks: which weights are removed, given how many, for the criteria that only zero weights
(:mod:`rdprune.pruning.criteria` chooses among them and SparseGPT):

- ``magnitude`` (the paper): the smallest ``|w|`` of the layer, already-zero weights first and
  ties broken by position, so the same weights and sparsity always give the same mask;
- ``wanda`` (Sun et al., ICLR 2024; official code locuslab/wanda, ``lib/prune.py::prune_wanda``):
  the smallest scores ``|W_ij| * ||X_j||_2`` compared *within each output row*, ``X_j`` being
  input feature j over every calibration token (:mod:`rdprune.pruning.statistics`). Wanda removes
  ``int(d_in * s)`` per row, slightly under the target; here exactly ``k = num_pruned(n, s)`` go,
  spread as evenly over the rows as their already-zero weights allow (every row loses
  ``max(zeros_i, q)`` for the largest such q that fits, and the rows whose next weight is the
  cheapest lose one more until k is reached), so the budget is met to the weight.

A mask is a bool tensor shaped like the weight, True = kept. Masks of a model are a plain
``{layer name: mask}`` dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn


def num_pruned(numel: int, sparsity: float) -> int:
    """Weights removed from a layer of ``numel`` weights at ``sparsity`` (rounded half up)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"layer sparsity must be in [0, 1], got {sparsity}")
    return min(numel, int(math.floor(sparsity * numel + 0.5)))


def kept_count(mask: torch.Tensor) -> int:
    """Number of True entries of a bool tensor (``count_nonzero``: ~20x faster than ``sum``)."""
    return int(torch.count_nonzero(mask))


def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """Flat indices of ``weight`` from smallest to largest magnitude (stable: ties by position)."""
    return torch.argsort(weight.detach().abs().flatten(), stable=True)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping all but the ``num_pruned(numel, sparsity)`` smallest-magnitude weights."""
    return magnitude_mask_count(weight, num_pruned(weight.numel(), sparsity))


def magnitude_mask_count(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The keep-mask (True = kept) that removes the ``k`` smallest-magnitude weights.

    ``0 <= k <= numel``.

    The removed weights are exactly ``magnitude_order(weight)[:k]``, found in linear time: every
    weight below the k-th smallest magnitude, plus the first (by position) of those equal to it.
    """
    flat = weight.detach().abs().flatten()
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=weight.device)
    if k == flat.numel():
        mask.zero_()
    elif k > 0:
        kth = torch.kthvalue(flat.float().cpu(), k).values.to(flat.device, flat.dtype)
        below = flat < kth
        ties = torch.nonzero(flat == kth).flatten()[: k - kept_count(below)]
        mask[below] = False
        mask[ties] = False
    return mask.view_as(weight)


def magnitude_masks(
    layers: Mapping[str, nn.Module], sparsities: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Masks for every layer from per-layer sparsities (in the order of ``layers``)."""
    if len(sparsities) != len(layers):
        raise ValueError(f"{len(sparsities)} sparsities for {len(layers)} layers")
    return {name: magnitude_mask(m.weight, s) for (name, m), s in zip(layers.items(), sparsities)}


def row_quotas(zeros: torch.Tensor, next_cost: Callable[[torch.Tensor], torch.Tensor],
               k: int, width: int) -> torch.Tensor:
    """How many weights each row loses when ``k`` go in all, spread as evenly as allowed.

    Args:
        zeros: already-zero weights per row (they go first: a row loses at least these).
        next_cost: ``quota per row -> score of each row's next weight`` (rows at ``width``
            have none: any value).
        k: weights to remove, at least ``zeros.sum()``.
        width: weights per row.
    """
    def total(q: int) -> int:
        return int(torch.clamp(zeros, min=q).sum())

    lo, hi = 0, width
    while lo < hi:  # the largest common level q with total(q) <= k
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(mid) <= k else (lo, mid - 1)
    quota = torch.clamp(zeros, min=lo)
    extra = k - int(quota.sum())
    if extra > 0:  # the rows whose next weight is cheapest lose one more (ties: first rows)
        cost = next_cost(quota).double()
        cost[quota >= width] = float("inf")
        order = torch.argsort(cost, stable=True)[:extra]
        quota[order] += 1
    return quota


def wanda_mask_count(weight: torch.Tensor, norm: torch.Tensor, k: int) -> torch.Tensor:
    """The keep-mask removing ``k`` weights of a ``(d_out, d_in)`` weight by Wanda scores
    ``|W_ij| * norm_j`` within each output row (see the module docstring); ties by position."""
    zero = weight.detach() == 0
    zeros = zero.sum(dim=1)
    if k < int(zeros.sum()):  # fewer than the zeros: the first k zeros, as magnitude order has it
        mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[torch.nonzero(zero.flatten()).flatten()[:k]] = False
        return mask.view_as(weight)
    score = weight.detach().abs().float() * norm.to(weight.device).float().view(1, -1)
    order = torch.argsort(score, dim=1, stable=True)  # per row, cheapest first (zeros score 0)
    ranked = torch.gather(score, 1, order)
    width = score.shape[1]
    quota = row_quotas(zeros, lambda q: ranked.gather(1, q.clamp(max=width - 1).view(-1, 1))
                       .view(-1), k, width)
    keep = torch.arange(width, device=weight.device).view(1, -1) >= quota.view(-1, 1)
    return torch.empty_like(keep).scatter_(1, order, keep)


@torch.no_grad()
def apply_masks(layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the removed weights in place (exact zeros)."""
    for name, mask in masks.items():
        w = layers[name].weight
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


def mask_gradients(layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradients of removed weights, so optimizer state never builds up for them."""
    for name, mask in masks.items():
        g = layers[name].weight.grad
        if g is not None:
            g.mul_(mask.to(device=g.device, dtype=g.dtype))


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of removed weights over all masked layers."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(kept_count(m) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def layer_sparsities(masks: Mapping[str, torch.Tensor]) -> list[float]:
    """Per-layer fraction of removed weights, in mask order."""
    return [1.0 - kept_count(m) / m.numel() for m in masks.values()]


class MaskViolationError(RuntimeError):
    """A removed weight is non-zero: the model no longer matches its masks."""


@torch.no_grad()
def check_masks(
    layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor], where: str = ""
) -> None:
    """Raise :class:`MaskViolationError` unless every removed weight is exactly zero."""
    for name, mask in masks.items():
        w = layers[name].weight
        bad = kept_count(w.ne(0) & ~mask.to(w.device))
        if bad:
            raise MaskViolationError(
                f"{bad} pruned weights of layer {name} are non-zero{' ' + where if where else ''}"
            )

