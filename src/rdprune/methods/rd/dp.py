"""The allocation solver: a multiple-choice knapsack solved by dynamic programming.

Given a rate-distortion curve per layer sampled on a grid of sparsities (``distortion[l, k]``) and
the cost of each grid point (``cost[l, k]``: kept weights, or kept MACs), :func:`solve` picks one
grid point per layer minimising ``sum_l distortion[l, k_l]`` subject to
``sum_l cost[l, k_l] <= budget``. The DP runs over layers, so time is linear in the number of
layers; it is the global optimum of the additive objective (Xu et al., ICCV 2023).

Unlike the official code, the DP table is not indexed by every surviving weight (12 x L x B bytes,
about 13 GB for ResNet-50): large budgets are binned to about ``L / tol`` cost units, rounding
every cost *up*, so the returned solution is never over the budget and is within ``tol`` of it
(see :func:`solve` for the argument). Small integer budgets are solved exactly. The tables are
one float row per budget unit plus one small-int back-pointer per (layer, budget unit).

All functions are pure: inputs are only read.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np

from rdprune.errors import UserError

log = logging.getLogger(__name__)

#: Default cap on the exact table (layers x budget units) for integer costs; above it costs are
#: binned. 2**23 back-pointers are 8 MB and solve in about a second with 101 grid points.
MAX_EXACT_TABLE = 1 << 23

#: Hard cap on any table (layers x bins): a smaller ``tol`` than this allows is a user error.
_MAX_TABLE = 1 << 31


class InfeasibleBudgetError(UserError):
    """No combination of allowed options fits the budget."""


def solve(
    distortion,
    cost,
    budget: float,
    allowed=None,
    *,
    tol: float = 1e-3,
    max_table: int = MAX_EXACT_TABLE,
) -> np.ndarray:
    """Choose one option per layer minimising total distortion under a total-cost budget.

    Args:
        distortion: ``[L, K]`` array-like, distortion of option ``k`` of layer ``l`` (typically
            the RD curve at grid sparsity ``k``; any finite value, negative allowed).
        cost: ``[L, K]`` array-like of finite non-negative costs (kept weights, MACs, ...);
            integer-valued or real.
        budget: the largest allowed total cost.
        allowed: optional bool ``[L, K]``; ``False`` options are never chosen (iterative pruning:
            a layer's sparsity may not decrease).
        tol: relative budget resolution when costs are binned (see below), in (0, 1).
        max_table: integer costs are solved exactly (one bin per cost unit) when
            ``L x (budget - sum of per-layer minimum costs + 1)`` is at most this; ``0`` bins
            whenever binning coarsens anything.

    Returns:
        ``int64 [L]``: the chosen option index (grid index) of every layer.

    Raises:
        ValueError: malformed inputs (shapes, NaN/inf, negative costs, bad ``tol``).
        InfeasibleBudgetError: a layer has no allowed option, or even the cheapest allowed option
            of every layer exceeds the budget.

    Exactness and binning. With integer costs, each layer's costs are first shifted by its
    cheapest allowed cost ``m_l`` (exact in integers), leaving the budget ``B' = floor(budget) -
    sum_l m_l``. If ``L x (B' + 1) <= max_table`` (or binning would not coarsen anything) the DP
    is exact. Otherwise costs ``c`` are binned with a resolution ``r`` (an integer for integer
    costs; a power of two for real costs, so ``c / r``, ``ceil`` and ``r * n`` are exact in
    floating point) chosen with ``r <= tol * B' / L``, so ``L * r <= tol * budget``, and the DP
    solves, exactly, the binned problem ``sum_l ceil(c_l / r) <= floor(B / r)`` (``c``, ``B``:
    the shifted costs and budget for integer costs, the raw ones for real costs, whose shift by
    ``ceil(m_l / r)`` is done in bin units and changes nothing). Then:

    - *never over budget*: ``c <= r * ceil(c / r)``, so
      ``sum c_l <= r * sum ceil(c_l / r) <= r * floor(B / r) <= B``;
    - *within tol*: ``ceil(c / r) < c / r + 1``, so every solution of true cost at most
      ``B - L * r`` has ``sum ceil(c_l / r) < B / r``, i.e. at most ``floor(B / r)``: it is
      feasible in the binned problem. As ``L * r <= tol * budget``, the returned distortion is no
      worse than the exact optimum under ``budget * (1 - tol)``, and no better than the one under
      ``budget`` (it is feasible). If the binned problem is infeasible although the cheapest
      solution fits (real costs, slack under ``L * r``), no solution of cost ``<= budget - L * r``
      exists, and the cheapest one is returned.

    Since ``r`` is about ``tol * B' / L``, the table has about ``L / tol`` bins whatever the
    budget (54,000 for ResNet-50 at the default ``tol``, against 12.75 M weights at 50%). (For
    real costs ``r`` is also kept above ``budget * 2**-51`` so bin numbers fit in int64; this
    could only break ``L * r <= tol * budget`` if ``L / tol`` exceeded ``2**49``.)

    Ties are broken deterministically: among solutions of equal minimal total distortion, the
    one of lowest total (binned) cost; within a layer, between options of equal (binned) cost and
    distortion, the lowest index. Any remaining tie (equal distortion and equal cost, spread
    differently over layers) follows the scan order: layers are processed by increasing largest
    option cost (stable), and a layer processed later keeps its cheaper option.

    Cost: time ``O(sum_l K_l * w_l)`` with ``w_l <= bins`` the table width after layer ``l``
    (layers are processed smallest first, so early tables are short), memory one back-pointer
    (uint8 for K <= 256) per (layer, bin) plus a few float rows of ``bins``.
    """
    d, c, budget, ok = _validate(distortion, cost, budget, allowed, tol, max_table)
    n_layers = d.shape[0]
    _check_feasible(c, ok, budget)
    ok &= c <= budget  # an option over the whole budget can never be chosen

    cb, bins, exact, res = _binned(c, ok, budget, tol, max_table)
    if bins < 0:
        # Real costs only: the cheapest solution fits (checked exactly above), its rounded-up
        # costs do not; nothing of true cost <= budget - L*r exists (see the docstring).
        log.debug("binned budget below the cheapest solution; returning the cheapest")
        return _cheapest(d, c, ok)
    if n_layers * (bins + 1) > _MAX_TABLE:
        raise ValueError(
            f"tol={tol} needs a DP table of {n_layers} x {bins + 1} entries; use a larger tol"
        )
    log.debug("DP over %d layers, %d bins (%s, resolution %g)", n_layers, bins + 1,
              "exact" if exact else "binned", res)
    return _knapsack(d, cb, ok & (cb <= bins), bins)


def total(distortion, cost, choice) -> tuple[float, float]:
    """Total distortion and total cost of ``choice`` (one option index per layer), both fsummed."""
    d = np.asarray(distortion, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    idx = np.asarray(choice, dtype=np.int64)
    rows = np.arange(len(idx))
    return math.fsum(d[rows, idx]), math.fsum(c[rows, idx])


def _validate(distortion, cost, budget, allowed, tol, max_table):
    d = np.asarray(distortion, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"distortion must be a non-empty [layers, options] array, got {d.shape}")
    if c.shape != d.shape:
        raise ValueError(f"cost shape {c.shape} differs from distortion shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("distortion contains NaN or infinite values")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("cost must be finite and non-negative")
    if isinstance(budget, (bool, np.bool_, str, bytes)) or np.ndim(budget) != 0:
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    budget = float(budget)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if max_table < 0:
        raise ValueError(f"max_table must be >= 0, got {max_table}")
    if allowed is None:
        return d, c, budget, np.ones(d.shape, dtype=bool)
    ok = np.asarray(allowed)
    if ok.dtype != np.bool_ or ok.shape != d.shape:
        raise ValueError(
            f"allowed must be a bool array of shape {d.shape}, got {ok.dtype} {ok.shape}"
        )
    return d, c, budget, ok.copy()


def _check_feasible(c, ok, budget) -> None:
    """Raise InfeasibleBudgetError unless the cheapest allowed options fit (in exact arithmetic)."""
    empty = np.flatnonzero(~ok.any(axis=1))
    if empty.size:
        raise InfeasibleBudgetError(
            f"layer {int(empty[0])} has no allowed option, so no budget is feasible"
        )
    cheapest = np.where(ok, c, np.inf).min(axis=1)
    if sum(Fraction(float(x)) for x in cheapest) > Fraction(float(budget)):
        raise InfeasibleBudgetError(
            f"budget {float(budget):.10g} is below the minimum achievable cost "
            f"{math.fsum(cheapest):.10g} (the cheapest allowed option of every layer)"
        )


def _binned(c, ok, budget, tol, max_table):
    """Bin costs ``int64 [L, K]`` (0 = each layer's cheapest), bin budget, exact?, resolution."""
    n_layers = c.shape[0]
    usable = c[ok]
    integral = bool((usable == np.floor(usable)).all() and usable.max() < 2.0**53)
    if integral:
        ci = np.where(ok, c, 0).astype(np.int64)
        low = np.where(ok, ci, np.iinfo(np.int64).max).min(axis=1)
        slack = math.floor(budget) - int(low.sum())  # exact: Python ints
        # The 1 - 1e-9 keeps floating-point rounding from ever making r exceed tol * slack / L.
        res = max(1, math.floor(tol * slack / n_layers * (1 - 1e-9)))
        if n_layers * (slack + 1) <= max_table:
            res = 1
        shifted = ci - low[:, None]
        cb = -(-shifted // res)  # ceil division
        return np.where(ok, cb, 0), slack // res, res == 1, res
    # Real costs: a power-of-two resolution makes c / r, ceil and r * n exact in floating point.
    slack = budget - math.fsum(np.where(ok, c, np.inf).min(axis=1))
    x = tol * slack / n_layers * (1 - 1e-9)
    exp = math.floor(math.log2(x)) if x > 0 else 0
    # Keeps budget / r < 2**51 (int64 bins) when the slack is tiny; see the docstring.
    exp = max(exp, math.ceil(math.log2(max(budget, 1e-300))) - 50)
    res = 2.0**exp
    cb = np.ceil(np.where(ok, c, 0) / res).astype(np.int64)
    low = np.where(ok, cb, np.iinfo(np.int64).max).min(axis=1)
    bins = math.floor(budget / res) - int(low.sum())
    return np.where(ok, cb - low[:, None], 0), bins, False, res


def _cheapest(d, c, ok) -> np.ndarray:
    """Per layer the cheapest allowed option; ties: lower distortion, then lower index."""
    out = np.empty(d.shape[0], dtype=np.int64)
    for layer in range(d.shape[0]):
        idx = np.flatnonzero(ok[layer])
        out[layer] = idx[np.lexsort((idx, d[layer, idx], c[layer, idx]))[0]]
    return out


def _pareto(cb_row, d_row, ok_row):
    """Options of one layer that are not dominated: increasing cost, strictly decreasing distortion.

    An option costing at least as much as another without lower distortion is never needed (the
    cheaper one is as good and preferred on ties), so each bin keeps its best option only.
    """
    idx = np.flatnonzero(ok_row)
    idx = idx[np.lexsort((idx, d_row[idx], cb_row[idx]))]
    running = np.minimum.accumulate(d_row[idx])
    keep = np.ones(idx.size, dtype=bool)
    keep[1:] = d_row[idx[1:]] < running[:-1]
    idx = idx[keep]
    return idx, cb_row[idx], d_row[idx]


def _knapsack(d, cb, ok, bins) -> np.ndarray:
    """Exact DP on integer costs ``cb`` (each layer's cheapest allowed is 0) with budget ``bins``.

    ``f[b]`` = least distortion of the layers processed so far with total cost exactly ``b``;
    a layer's step is ``f'[b] = min_k f[b - cb_k] + d_k``, done as one shifted, vectorised
    compare-and-update per option, recording the winning option in a small-int back-pointer row.
    """
    n_layers = d.shape[0]
    options = [_pareto(cb[layer], d[layer], ok[layer]) for layer in range(n_layers)]
    # Smallest layers first: the table only needs to reach the sum of the largest costs so far.
    order = sorted(range(n_layers), key=lambda layer: int(options[layer][1][-1]))
    widest = max(len(o[0]) for o in options)
    ptr_type = np.uint8 if widest <= 256 else np.uint16 if widest <= 65536 else np.int32

    f = np.zeros(1)
    width = 0  # f covers costs 0..width
    cand = np.empty(bins + 1)
    better = np.empty(bins + 1, dtype=bool)
    mark = np.empty(bins + 1, dtype=ptr_type)
    pointers = []
    for layer in order:
        _, costs, dists = options[layer]
        new_width = min(bins, width + int(costs[-1]))
        new = np.full(new_width + 1, np.inf)
        ptr = np.zeros(new_width + 1, dtype=ptr_type)
        new[: width + 1] = f + dists[0]  # option 0 costs 0 after the shift
        for j in range(1, len(costs)):
            lo = int(costs[j])  # <= new_width: costs are filtered to <= bins
            n = min(width, new_width - lo) + 1
            seg = new[lo : lo + n]
            np.add(f[:n], dists[j], out=cand[:n])
            np.less(cand[:n], seg, out=better[:n])  # strict: the cheaper option wins ties
            np.minimum(seg, cand[:n], out=seg)
            # Options come in increasing j, so "the last j that improved" is a running maximum:
            # branch-free SIMD passes instead of a masked copy (several times faster).
            np.multiply(better[:n], ptr_type(j), out=mark[:n])
            np.maximum(ptr[lo : lo + n], mark[:n], out=ptr[lo : lo + n])
        f, width = new, new_width
        pointers.append(ptr)

    b = int(np.argmin(f))  # first minimum: the lowest total cost among optimal solutions
    choice = np.empty(n_layers, dtype=np.int64)
    for layer, ptr in zip(reversed(order), reversed(pointers)):
        idx, costs, _ = options[layer]
        j = int(ptr[b])
        choice[layer] = idx[j]
        b -= int(costs[j])
    assert b == 0, "DP back-tracking did not return to cost 0"
    return choice
