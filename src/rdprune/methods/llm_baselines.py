"""Layer-wise sparsity baselines for decoder-only language models: OWL, ATP, AlphaPruning.

Every baseline is a pure function with one signature (the method's hyper-parameters keyword-only)::

    fn(weights, sparsity, *, blocks, **hyper) -> list[float]

- ``weights`` (``Sequence[torch.Tensor]``): the prunable linear weights in model order, each
  (d_out, d_in) (LLaMA: q, k, v, o, gate, up, down per block; GPT-2: 4 per block). Only read.
- ``sparsity`` (float): global target S, the fraction of all these weights removed, in [0, 1).
- ``blocks`` (``Sequence[int]``): ``blocks[i]`` = decoder block of ``weights[i]``: 0, ..., L-1,
  non-decreasing in steps of 0 or 1 (the task reads them from module names: :meth:`rdprune.tasks.Task.blocks`).
- returns one sparsity per weight: the fraction of that linear's weights removed, in [0, 1].

Every method keeps the parameter-weighted mean ``sum(n_l s_l) / N`` at S (up to float rounding),
so masks removing ``num_pruned(n_l, s_l)`` per layer remove ``num_pruned(N, S)`` weights to within
one per layer. The official codes centre on unweighted means over blocks: the same for equal
blocks (LLaMA, GPT-2). Where an official mapping can leave [0, 1], values are clipped and the
method's free shift or scale is re-solved so the mean stays S. As in :mod:`rdprune.methods.baselines`,
this decides *how many*; which weights go (per-row Wanda, SparseGPT, ...) is decided elsewhere.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from rdprune.methods.baselines import _check
from rdprune.errors import UserError
from rdprune.methods.esd import esd_alpha

#: the one signature: (weights, global sparsity, *, blocks, **hyper) -> per-linear sparsities
LmBaselineFn = Callable[..., list[float]]

_TOL = 1e-9  # relative slack on ATP's legality bound: float rounding of the same number


def _block_sizes(weights: Sequence[torch.Tensor], sparsity: float,
                 blocks: Sequence[int]) -> list[int]:
    """Check the shared arguments (ValueError); the number of weights of each block, in order."""
    _check(weights, sparsity)
    if len(blocks) != len(weights):
        raise ValueError(f"{len(blocks)} block indices for {len(weights)} weights")
    sizes: list[int] = []
    for i, (b, w) in enumerate(zip(blocks, weights)):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise ValueError(f"block index {i} is {b!r}, not an integer")
        if b == len(sizes):
            sizes.append(0)
        elif b != len(sizes) - 1:
            raise ValueError(f"blocks must run 0, ..., L-1 in model order (steps of 0 or 1); got "
                             f"{b} at position {i} after {len(sizes) - 1}")
        sizes[-1] += w.numel()
    return sizes


def _solve(base: np.ndarray, slope: np.ndarray, sizes: Sequence[int], target: float) -> float:
    """The ``c`` with ``sum(n * clip(base + c * slope, 0, 1)) == target``.

    Needs ``slope > 0`` and ``0 <= target < sum(n)``. The unclipped solution if it stays in [0, 1]
    (the official mapping); else the root of this non-decreasing piecewise-linear function of c,
    interpolated between the two consecutive breakpoints (a value reaches 0 or 1) around it.
    """
    n = np.asarray(sizes, dtype=np.float64)
    c = (target - float(np.sum(n * base))) / float(np.sum(n * slope))
    if (base + c * slope).min() >= 0.0 and (base + c * slope).max() <= 1.0:
        return c
    points = np.unique(np.concatenate([-base / slope, (1.0 - base) / slope]))
    totals = [float(np.sum(n * np.clip(base + p * slope, 0.0, 1.0))) for p in points]
    if target <= totals[0]:
        return float(points[0])
    for k in range(1, len(points)):
        if totals[k] >= target:  # and totals[k - 1] < target: a rising linear piece
            lo, hi = points[k - 1], points[k]
            return float(lo + (target - totals[k - 1]) * (hi - lo) / (totals[k] - totals[k - 1]))
    return float(points[-1])


def _check_scores(scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
    """One score tensor per weight, of its shape (ValueError)."""
    if len(scores) != len(weights):
        raise ValueError(f"{len(scores)} score tensors for {len(weights)} weights")
    for i, (sc, w) in enumerate(zip(scores, weights)):
        if sc.shape != w.shape:
            raise ValueError(f"scores[{i}] has shape {tuple(sc.shape)}, weight {tuple(w.shape)}")


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def owl_outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """OWL's outlier ratio of one block in percent, ``100 * #(v > m * mean(v)) / numel(v)``, over
    the concatenation ``v`` of its Wanda scores (strict >; one mean per block). In float64 (the
    official ``check_outlier_mean`` uses float32 ``torch.mean``), one tensor at a time."""
    total, numel = 0.0, 0
    for s in scores:
        total += float(s.detach().to(torch.float64).sum())
        numel += s.numel()
    if not math.isfinite(total):
        raise ValueError("OWL scores have nan or inf entries")
    threshold = m * total / numel
    count = sum(int(torch.count_nonzero(s.detach().to(torch.float64) > threshold)) for s in scores)
    return 100.0 * count / numel


def owl(weights: Sequence[torch.Tensor], sparsity: float, *, blocks: Sequence[int],
        scores: Sequence[torch.Tensor], m: float = 5.0, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al., ICML 2024): fewer removals in blocks with more activation outliers.

    Official source: luuyin/OWL, ``lib/prune_all.py::prune_wanda_outlier`` (ratios from
    ``check_outlier_mean``, then the mapping printed as "after adjustment"). ``scores[i]`` is the
    Wanda metric ``|W| * ||X_j||_2`` of ``weights[i]`` (same shape). Per block b,
    ``D_b = owl_outlier_ratio(its scores, m)``, ``r_b = (D_b - min D) / (max D - min D) * 2 lam``
    and its linears get ``S + mean(r) - r_b`` (all D equal: uniform S).

    Deviations: ``mean(r)`` is weighted by block size, so the parameter-weighted mean is S (the
    official unweighted mean over blocks is the same for equal blocks). The official code sets
    a sparsity <= 0 to 0.01 (and never checks > 1); here values are clipped to [0, 1] and, if any
    moved, the shift ``c`` of ``S + c - r_b`` is re-solved so the weighted mean is S again. Every
    block stays in ``[S - 2 lam, S + 2 lam]`` (the solved c lies in [0, 2 lam]).

    Defaults: the OWL README's LLaMA setting M = 5, lambda = 0.08 (argparse: Hyper_m 3, Lamda 0.08).
    """
    sizes = _block_sizes(weights, sparsity, blocks)
    _check_scores(scores, weights)
    m, lam = _finite("m", m), _finite("lam", lam)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    members = [[sc for sc, bb in zip(scores, blocks) if bb == b] for b in range(len(sizes))]
    ratios = np.array([owl_outlier_ratio(group, m) for group in members])
    s, spread = float(sparsity), ratios.max() - ratios.min()
    if spread == 0:
        return [s] * len(weights)
    r = (ratios - ratios.min()) / spread * 2 * lam
    c = _solve(s - r, np.ones_like(r), sizes, s * sum(sizes))
    per_block = np.clip(s - r + c, 0.0, 1.0)
    return [float(per_block[b]) for b in blocks]


def dlp(weights: Sequence[torch.Tensor], sparsity: float, *, blocks: Sequence[int],
        scores: Sequence[torch.Tensor], alpha: float = 0.15) -> list[float]:
    """DLP (Chen et al., 2025): more removals in blocks with a higher mean Wanda score.

    Official source: ironartisan/DLP, ``lib/prune.py::get_dlp_ratios``. ``scores[i]`` is the
    Wanda metric ``|W| * ||X_j||_2`` of ``weights[i]`` on the dense model. Per block b, ``m_b``
    is the mean of its linears' concatenated scores (element-weighted, so the MLP dominates; the
    paper says median, the code takes the mean), ``t_b = (m_b - min m) / (max m - min m)``, and
    its linears get ``S + 2 alpha (t_b - mean t)`` (the official ``u = 1 - m / sum m``, min-max
    scaled to ``[0, 2 alpha]``, is the same mapping; all m equal: uniform S).

    Deviations, as for :func:`owl`: ``mean t`` is weighted by block size (the official unweighted
    mean over blocks is the same for equal blocks); the official code sets a sparsity <= 0 to
    0.01 and never clips above; here values are clipped to [0, 1] and the shift re-solved so the
    parameter-weighted mean is S.

    Default: alpha 0.15 (``run.py``; every official script).
    """
    sizes = _block_sizes(weights, sparsity, blocks)
    _check_scores(scores, weights)
    alpha = _finite("alpha", alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    totals = np.zeros(len(sizes))
    for sc, b in zip(scores, blocks):
        totals[b] += float(sc.detach().to(torch.float64).sum())
    means = totals / np.asarray(sizes, dtype=np.float64)
    if not np.isfinite(means).all():
        raise ValueError("DLP scores have nan or inf entries")
    s, spread = float(sparsity), means.max() - means.min()
    if spread == 0:
        return [s] * len(weights)
    r = (means - means.min()) / spread * 2 * alpha
    c = _solve(s + r, np.ones_like(r), sizes, s * sum(sizes))
    per_block = np.clip(s + r + c, 0.0, 1.0)
    return [float(per_block[b]) for b in blocks]


def _atp_centre_and_max_beta(sparsity: float, sizes: Sequence[int]) -> tuple[float, float]:
    """The size-weighted mean block index c ((L - 1) / 2 for equal blocks) and the largest beta
    keeping every block in [0, 1], ``min(S / c, (1 - S) / (L - 1 - c))`` (for equal blocks the
    official ``min(2S, 2(1 - S)) / (L - 1)``; infinite for one block)."""
    centre = sum(b * n for b, n in enumerate(sizes)) / sum(sizes)
    if len(sizes) == 1:
        return centre, math.inf
    return centre, min(sparsity / centre, (1.0 - sparsity) / (len(sizes) - 1 - centre))


def atp(weights: Sequence[torch.Tensor], sparsity: float, *, blocks: Sequence[int],
        beta: float) -> list[float]:
    """ATP (arXiv 2502.14770): block sparsities in arithmetic progression, rising with depth.

    Official source: wzhuang-xmu/ATP, ``main.py::main`` (``sparsity_rates`` and the "Illegal beta"
    check): block i of L gets ``S - beta (L - 1) / 2 + i beta``. For blocks of unequal size the
    progression is centred on the size-weighted mean block index instead of ``(L - 1) / 2`` (the
    same for equal blocks), so the parameter-weighted mean is S. The official search
    (``search.sh``) runs :func:`atp_beta_grid` and keeps the beta with the lowest WikiText-2
    *test* perplexity; our pipeline chooses it on the validation split instead.

    Raises:
        UserError: beta < 0, or a block would leave [0, 1] (one line: the largest legal beta).
    """
    sizes = _block_sizes(weights, sparsity, blocks)
    beta, s = _finite("beta", beta), float(sparsity)
    centre, largest = _atp_centre_and_max_beta(s, sizes)
    if not 0.0 <= beta <= largest * (1 + _TOL):
        raise UserError(f"atp: beta={beta} is illegal at sparsity {s} over {len(sizes)} blocks; "
                        f"it must lie in [0, {largest:.6g}] to keep every block in [0, 1]")
    per_block = np.clip([s + beta * (b - centre) for b in range(len(sizes))], 0.0, 1.0)
    return [float(per_block[b]) for b in blocks]


def atp_beta_grid(sparsity: float, num_blocks: int, step: float = 0.002) -> list[float]:
    """ATP's official beta grid (``search.sh``): step, 2 step, ... up to the largest legal beta
    ``min(2S, 2(1 - S)) / (L - 1)`` for ``num_blocks`` equal blocks (empty when S = 0)."""
    if num_blocks < 2 or not 0.0 <= sparsity < 1.0 or not step > 0:
        raise ValueError(f"need >= 2 blocks, sparsity in [0, 1), step > 0; got {num_blocks}, "
                         f"{sparsity}, {step}")
    largest = _atp_centre_and_max_beta(sparsity, [1] * num_blocks)[1] * (1 + _TOL)
    grid: list[float] = []
    while round((len(grid) + 1) * step, 12) <= largest:  # round: the decimals search.sh uses
        grid.append(round((len(grid) + 1) * step, 12))
    return grid


def alpha_pruning(weights: Sequence[torch.Tensor], sparsity: float, *, blocks: Sequence[int],
                  epsilon: float = 0.3, alphas: Sequence[float] | None = None) -> list[float]:
    """AlphaPruning (Lu et al., NeurIPS 2024): prune more where spectra are less heavy-tailed.

    Official source: haiquanlu/AlphaPruning, ``lib/prune.py::ww_sparsity`` with
    ``mapping_type='block_wise'``, on :func:`esd_alpha` values (or ``alphas``, precomputed in model
    order). The block value is the unweighted mean of its linears' alphas;
    ``r = (a - a_min) / (a_max - a_min) * 2 eps + (1 - eps)`` (all equal: uniform S) and
    ``s_l = k r_l`` with ``k = S sum(n_l) / sum(n_l r_l)``: the parameter-weighted mean is S and
    ``s_l / S`` lies in ``[1 - eps, 1 + eps] * sum(n_l) / sum(n_l r_l)``.

    Deviation: the official code does not clamp (S = 0.8, eps = 0.3 can give s > 1). Here
    ``s_l = min(1, k' r_l)`` with ``k' >= k`` re-solved so the weighted mean is S: the excess
    goes to the unclamped layers in proportion to r (the official result when none exceeds 1).

    Raises:
        ValueError: epsilon outside [0, 1), or alphas of the wrong length or not finite.
    """
    _block_sizes(weights, sparsity, blocks)
    epsilon = _finite("epsilon", epsilon)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    a = np.asarray([esd_alpha(w) for w in weights] if alphas is None else alphas, np.float64)
    if a.shape != (len(weights),) or not np.isfinite(a).all():
        raise ValueError(f"need {len(weights)} finite alphas, got shape {a.shape}: {a.ravel()[:8]}")
    index = np.asarray(blocks)
    layer_a = np.array([a[index == b].mean() for b in range(int(index[-1]) + 1)])[index]
    spread = layer_a.max() - layer_a.min()
    if spread == 0:
        return [float(sparsity)] * len(weights)
    r = (layer_a - layer_a.min()) / spread * 2 * epsilon + (1 - epsilon)
    sizes = [w.numel() for w in weights]
    k = _solve(np.zeros_like(r), r, sizes, float(sparsity) * sum(sizes))
    return np.clip(k * r, 0.0, 1.0).tolist()

