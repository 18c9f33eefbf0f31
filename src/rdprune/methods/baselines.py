"""Pruning baselines: how many weights each layer loses, given a global sparsity.

Every baseline is a pure function with one signature::

    fn(weights: list[torch.Tensor], sparsity: float) -> list[float]

Args:
    weights: the prunable weight tensors in model order (first = first conv, last = classifier).
        They are only read, never modified.
    sparsity: global target, the fraction of all prunable weights removed, in [0, 1).

Returns:
    One per-layer sparsity per tensor (fraction of that layer's weights removed, in [0, 1]).

Allocation decides *how many*; :mod:`rdprune.pruning.masks` decides *which* (the smallest magnitudes,
zeros first, ties by position). The global target is ``num_pruned(N, sparsity)`` removed weights
over all ``N`` weights; the masks that :func:`rdprune.pruning.masks.magnitude_mask` builds from the
returned sparsities (``num_pruned(n_l, s_l)`` weights per layer) meet it exactly for
``global_magnitude`` and ``lamp`` (they return ``count / n_l``) and to within one weight per layer
for the others (continuous solutions, each layer rounded on its own).

Already-zero weights count as pruned: they have the smallest magnitude (and LAMP score 0), so the
value-based baselines (``global_magnitude``, ``lamp``) remove them first and never give a layer a
sparsity below its zero fraction when the global target covers the zeros; allocating over a
partially masked model therefore never un-prunes. The shape-based baselines (``uniform``,
``uniform_plus``, ``erk``) look at shapes only; the iterative pipeline keeps pruned weights pruned.

Ties (equal magnitudes or scores in different layers) are broken by layer order, then by the
layer's own magnitude order: the result is the same as a stable sort of the concatenation, so it
is deterministic and consistent with :func:`rdprune.pruning.masks.magnitude_order`.

The value-based baselines work on CPU copies with NumPy (weights on a GPU are copied over; its
float32 sort and partial sort are several times faster than torch's on CPU) and reject nan/inf
weights with ValueError. For ResNet-50 (25.5M weights) ``lamp`` takes a couple of seconds and
``global_magnitude`` under one on a 2-core CPU.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from rdprune.errors import UserError
from rdprune.pruning.masks import num_pruned

#: the one signature of every baseline: (weights, global sparsity) -> per-layer sparsities
BaselineFn = Callable[[Sequence[torch.Tensor], float], list[float]]


def _check(weights: Sequence[torch.Tensor], sparsity: float) -> None:
    """Raise ValueError on a sparsity outside [0, 1), no weights or an empty tensor."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"sparsity must be a real number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:  # also rejects nan
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if len(weights) == 0:
        raise ValueError("no weights to allocate over")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor):
            raise ValueError(f"weight {i} is a {type(w).__name__}, not a torch.Tensor")
        if w.numel() == 0:
            raise ValueError(f"weight {i} has no elements (shape {tuple(w.shape)})")


def _total(weights: Sequence[torch.Tensor]) -> int:
    return sum(w.numel() for w in weights)


def _take_ties(below: list[int], equal: list[int], k: int) -> list[int]:
    """Per-tensor counts of the ``k`` smallest: all entries below the threshold, then the entries
    equal to it in tensor order (what a stable sort of the concatenation would pick)."""
    ties_left = k - sum(below)
    counts = []
    for b, e in zip(below, equal):
        take = min(ties_left, e)
        ties_left -= take
        counts.append(b + take)
    return counts


def _bottom_counts(values: Sequence[np.ndarray], k: int) -> list[int]:
    """How many of each array's entries fall among the ``k`` smallest of all entries.

    Equivalent to a stable sort of the concatenation (ties go to earlier arrays, and to earlier
    entries within an array), but uses one partial sort (``np.partition``) to find the threshold.
    """
    sizes = [v.size for v in values]
    if k <= 0:
        return [0] * len(values)
    if k >= sum(sizes):
        return sizes
    flat = np.concatenate([v.reshape(-1) for v in values])
    flat.partition(k - 1)
    threshold = flat[k - 1]
    del flat
    below = [int(np.count_nonzero(v < threshold)) for v in values]
    equal = [int(np.count_nonzero(v == threshold)) for v in values]
    return _take_ties(below, equal, k)


def _bottom_counts_sorted(values: Sequence[np.ndarray], k: int) -> list[int]:
    """:func:`_bottom_counts` for ascending, non-negative float64 arrays, without concatenating.

    The k-th smallest value is found by bisection on the IEEE bit pattern (for non-negative
    doubles it orders like the value), counting with ``searchsorted`` in each array: about 64
    rounds of one binary search per array.
    """
    sizes = [len(v) for v in values]
    if k <= 0:
        return [0] * len(values)
    if k >= sum(sizes):
        return sizes

    def count_le(bits: int) -> int:
        t = np.int64(bits).view(np.float64)
        return sum(int(np.searchsorted(v, t, side="right")) for v in values)

    lo = 0
    hi = int(np.float64(max(float(v[-1]) for v in values)).view(np.int64))
    while lo < hi:  # smallest value with at least k entries <= it: the k-th smallest
        mid = (lo + hi) // 2
        if count_le(mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    t = np.int64(lo).view(np.float64)
    below = [int(np.searchsorted(v, t, side="left")) for v in values]
    equal = [int(np.searchsorted(v, t, side="right")) - b for v, b in zip(values, below)]
    return _take_ties(below, equal, k)


def _abs_numpy(weight: torch.Tensor, double: bool) -> np.ndarray:
    """``|w|`` as a flat CPU NumPy array (float32, exact for fp16/bf16; float64 if ``double``)."""
    w = weight.detach().reshape(-1).cpu().to(torch.float64 if double else torch.float32)
    return np.abs(w.numpy())


def _check_finite(mags: np.ndarray, i: int, largest: float | None = None) -> None:
    """Rankings by value are meaningless with nan/inf weights (``largest``: a known max |w|)."""
    if not np.isfinite(mags.max() if largest is None else largest):
        raise ValueError(f"weight {i} has nan or inf entries")


def uniform(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """The same sparsity in every layer."""
    _check(weights, sparsity)
    return [float(sparsity)] * len(weights)


def uniform_plus(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Uniform+ (Gale et al., 2019): first layer dense, last keeps >= 20%, the rest uniform.

    The middle layers share one sparsity ``s``; the last layer gets ``min(s, cap)`` with
    ``cap = floor(0.8 n_L) / n_L`` (<= 0.8, so that it keeps at least 20% of its weights after
    rounding); ``s`` is solved so the total removed equals the target. With two layers there is no
    middle: the last layer takes the whole budget (up to its cap). With one layer, that layer is the
    first layer and stays dense, so only sparsity 0 is feasible.

    Raises:
        UserError: the target needs more than the middle layers fully pruned plus the last layer
            at its cap; the message gives the largest feasible sparsity for this model.
    """
    _check(weights, sparsity)
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    target = num_pruned(total, float(sparsity))
    if len(sizes) == 1:
        if target:
            raise UserError(
                f"uniform_plus cannot reach sparsity {sparsity}: the model has a single prunable "
                "layer, which uniform+ keeps dense as the first layer; use 'uniform' instead"
            )
        return [0.0]
    n_last = sizes[-1]
    # Gale et al.: the last layer keeps at least 20%; in integers, it keeps >= ceil(n_last / 5).
    last_max = 4 * n_last // 5
    cap = last_max / n_last
    middle = sum(sizes[1:-1])
    if target > middle + last_max:
        max_sparsity = math.floor((middle + last_max) / total * 1e4) / 1e4  # down: feasible
        raise UserError(
            f"uniform_plus cannot reach sparsity {sparsity}: with the first layer dense and the "
            f"last keeping 20%, at most {max_sparsity:.4f} is possible"
        )
    s = target / (middle + n_last)
    if s > cap and middle:  # the cap binds: the last layer stops at cap, the middle takes the rest
        s = min(1.0, (target - last_max) / middle)
    return [0.0] + [s] * (len(sizes) - 2) + [min(s, cap)]


def global_magnitude(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """One magnitude threshold over all weights: remove the globally smallest ``|w|``.

    Removes exactly ``num_pruned(N, sparsity)`` weights (zeros first; ties by layer order, then
    position) and returns ``removed_l / n_l``.
    """
    _check(weights, sparsity)
    double = any(w.dtype == torch.float64 for w in weights)
    mags = [_abs_numpy(w, double) for w in weights]
    for i, a in enumerate(mags):
        _check_finite(a, i)
    counts = _bottom_counts(mags, num_pruned(_total(weights), float(sparsity)))
    return [c / w.numel() for c, w in zip(counts, weights)]


def _lamp_scores(weight: torch.Tensor, i: int) -> np.ndarray:
    """LAMP scores of one layer (layer ``i``, for error messages), in ascending-magnitude order
    (float64, non-decreasing).

    ``score(u) = w_u^2 / sum_{v >= u} w_v^2`` over the layer's weights sorted by ``|w|``; a zero
    weight scores 0 (0/0 := 0). Computed with NumPy on the CPU (its sort is about 3x faster than
    ``torch.sort`` there). The suffix sum is accumulated sequentially, so it never increases along
    the order and the scores stay non-decreasing even after rounding: the lowest-scored weights of
    a layer are exactly its smallest magnitudes.
    """
    mags = _abs_numpy(weight, weight.dtype == torch.float64)  # a fresh array: sort in place
    mags.sort()
    _check_finite(mags, i, mags[-1])  # nan sorts last
    sq = np.square(mags, dtype=np.float64)
    scores = np.empty_like(sq)
    np.cumsum(sq[::-1], out=scores[::-1])  # suffix sums (a sequential accumulate), contiguous
    # In place: where the suffix sum is 0 the weight is 0 too, and its score stays 0 (0/0 := 0).
    np.divide(sq, scores, out=scores, where=scores > 0)
    return scores


def lamp(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """LAMP (Lee et al., ICLR 2021): keep the global top-k layer-adaptive magnitude scores.

    ``k = N - num_pruned(N, sparsity)``; see :func:`_lamp_scores`. The largest weight of a layer
    scores 1, so with ``k >= number of layers`` no non-zero layer is fully pruned. Returns
    ``removed_l / n_l`` (exact).
    """
    _check(weights, sparsity)
    scores = [_lamp_scores(w, i) for i, w in enumerate(weights)]
    counts = _bottom_counts_sorted(scores, num_pruned(_total(weights), float(sparsity)))
    return [c / w.numel() for c, w in zip(counts, weights)]


def erk(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Erdos-Renyi-Kernel (Evci et al., 2020): density proportional to sum(dims) / prod(dims).

    ``density_l = eps * sum(shape_l) / numel_l``, with ``eps`` solved so the total kept equals
    ``N - num_pruned(N, sparsity)``. Layers whose density would exceed 1 are made dense and
    ``eps`` is re-solved over the rest, until none exceeds 1.
    """
    _check(weights, sparsity)
    sizes = [w.numel() for w in weights]
    ratios = [sum(w.shape) / n for w, n in zip(weights, sizes)]
    target_kept = sum(sizes) - num_pruned(sum(sizes), float(sparsity))
    dense: set[int] = set()
    eps = 0.0
    while True:
        rest = [i for i in range(len(sizes)) if i not in dense]
        if not rest:
            break
        budget = target_kept - sum(sizes[i] for i in dense)
        eps = budget / sum(ratios[i] * sizes[i] for i in rest)
        over = {i for i in rest if eps * ratios[i] >= 1.0}
        if not over:
            break
        # Making a layer dense lowers its share, so eps only grows: every layer over 1 now
        # stays over 1 and can be fixed in the same pass.
        dense |= over
    return [0.0 if i in dense else max(0.0, 1.0 - eps * ratios[i]) for i in range(len(sizes))]
