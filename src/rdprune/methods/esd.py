"""AlphaPruning's heavy-tail metric: the exponent alpha of a weight matrix's empirical spectral
density (:func:`esd_alpha`), read by :func:`rdprune.methods.llm_baselines.alpha_pruning`."""

from __future__ import annotations

import math

import numpy as np
import torch

_ESD_BINS = 100  # AlphaPruning's log10 histogram for the xmin_peak rule


def esd_alpha(weight: torch.Tensor, *, official_lower_bound: bool = True) -> float:
    """Heavy-tail exponent alpha of the empirical spectral density of ``weight`` (AlphaPruning).

    Official source: haiquanlu/AlphaPruning, ``lib/esd_utils.py::net_esd_estimator`` with
    ``fix_fingers='xmin_peak'`` (metric ``alpha_peak`` of ``get_esd_metrics``). The eigenvalues
    of W^T W (squared singular values, ascending, no 1/N, no zero filtering) are fit for each
    candidate ``xmin = lambda_i`` (i < N - 1): Hill/MLE ``alpha_i = 1 + n / sum_{k>=i}
    ln(lambda_k / lambda_i)`` (n = N - i) and KS distance ``D_i = max_k |1 - (lambda_k /
    lambda_i)^(1 - alpha_i) - k / n|`` (if alpha_i > 1; else D_i = 1). Candidates are
    ``lambda_i <= 1.5 xmin2``, ``xmin2 = 10^`` (left edge of the fullest of 100 equal bins of
    log10 eigenvalues, first on ties, binned as ``torch.histc``); skipped ones keep alpha 0 and
    D 1. The smallest D wins (first on ties).

    Lower bound: the official code skips candidates below ``log10(0.95 xmin2)``, comparing a log
    value with a linear eigenvalue (a bug inherited from TempBalance: harmless when xmin2 <= ~1.05,
    otherwise far below the intended ``0.95 xmin2``). We reproduce it by default, so our alphas
    are the official ones; ``official_lower_bound=False`` uses the intended ``0.95 xmin2``.

    Deviations: float64 throughout (the official SVD and fit run in float32); exact-zero
    eigenvalues (official fit undefined: log 0) are dropped. A flat tail gives alpha = inf, as
    officially. The SVD runs on the weight's device; compute alphas once (``alphas=`` below).

    Raises:
        ValueError: not 2-D, nan/inf entries, or fewer than 2 non-zero singular values.
    """
    if weight.ndim != 2:
        raise ValueError(f"esd_alpha needs a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("esd_alpha: the weight has nan or inf entries")
    eigs = np.sort(torch.linalg.svdvals(w).cpu().numpy() ** 2)
    eigs = eigs[eigs > 0]
    if eigs.size < 2:
        raise ValueError("esd_alpha needs at least 2 non-zero singular values")
    log10 = np.log10(eigs)
    lo, hi, peak = log10[0], log10[-1], 0
    if hi > lo:
        pos = np.minimum(((log10 - lo) * _ESD_BINS / (hi - lo)).astype(np.int64), _ESD_BINS - 1)
        peak = int(np.argmax(np.bincount(pos, minlength=_ESD_BINS)))
    xmin2 = 10.0 ** np.linspace(lo, hi, _ESD_BINS + 1)[peak]
    lower = math.log10(0.95 * xmin2) if official_lower_bound else 0.95 * xmin2
    logs = np.log(eigs)
    alphas, dists = np.zeros(eigs.size - 1), np.ones(eigs.size - 1)
    # the official loop skips xmin < lower and stops at the first xmin > 1.5 xmin2 (eigs ascend)
    first = int(np.searchsorted(eigs, lower, side="left"))
    stop = min(int(np.searchsorted(eigs, 1.5 * xmin2, side="right")), eigs.size - 1)
    for i in range(first, stop):
        n = eigs.size - i
        with np.errstate(divide="ignore"):
            alphas[i] = 1.0 + n / np.sum(logs[i:] - logs[i])
        if alphas[i] > 1:
            fitted = 1.0 - (eigs[i:] / eigs[i]) ** (1.0 - alphas[i])
            dists[i] = np.max(np.abs(fitted - np.arange(n) / n))
    return float(alphas[np.argmin(dists)])
