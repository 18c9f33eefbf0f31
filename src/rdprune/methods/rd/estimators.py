"""Estimators of the RD curves: cheaper ways to the same allocation (``rd.estimator`` and its
modifiers ``rd.points``, ``rd.tokens``, ``rd.precision``).

``exact`` (the paper, and the reference) measures every unit at every grid point: one forward of
the model downstream of the unit per point (:mod:`.profiling`). The estimators spend fewer
forwards:

- ``rd.points=k`` (``exact``): only ``k`` grid points per unit are measured, evenly spaced up to
  100% (0% is free: no distortion); the others are interpolated monotonically (PCHIP on the
  measured points, which never overshoots them).
- ``rd.tokens=n``: exact measurements on the first ``n`` calibration tokens only (whole sequences
  of a language model; samples of an image model).
- ``rd.precision=bfloat16``: exact measurements in bfloat16 (a copy of the model; the reference
  outputs in the same precision, the differences accumulated in float64).
- ``local``: the unit's own output error at every grid point in closed form, ``e(s) = tr(dW_s G
  dW_s^T)`` with ``G = X^T X`` the layer's input Gram matrix (one forward for every layer at
  once) and ``dW_s`` the change of its weight by the criterion at ``s`` (SparseGPT's reconstruction
  included), turned into model-output distortion by a gain measured exactly at ``rd.points``
  anchors (default 2: 50% and 100%): ``D(s) = g(s) e(s)``, ``log g`` linear in ``s`` between
  anchors and constant outside them; a block's ``e`` is the sum of its layers'. The same layer-wise
  objective is what SparseGPT minimises and EvoPress's ``compute_layer_errors.py`` reports
  (as a normalised error); the gain makes it a distortion of the model's output.

They combine: ``local`` with ``rd.tokens`` and ``rd.precision`` measures its anchors on fewer
tokens in bfloat16. ``experiments/bench_estimators.py`` measures each against ``exact``
(FLOPs, time, curve errors); ``experiments/estimators_lm.py`` judges them by what the curves are
for, the perplexity of the allocation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rdprune.errors import UserError

ESTIMATORS = ("exact", "local")
PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Estimator:
    """How the curves are measured (module docstring).

    Attributes:
        kind: ``exact`` or ``local``.
        points: exact grid points per unit (``exact``: None = all; ``local``: the anchors,
            None = 2).
        tokens: calibration tokens (samples) of the exact measurements: a count, or a fraction
            of them in (0, 1] (None: all).
        precision: the exact measurements' dtype (None: the model's).
    """

    kind: str = "exact"
    points: int | None = None
    tokens: int | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ESTIMATORS:
            raise UserError(f"rd.estimator must be one of {', '.join(ESTIMATORS)}, got "
                            f"{self.kind!r}")
        if self.points is not None and (isinstance(self.points, bool) or
                                        not isinstance(self.points, int) or self.points < 1):
            raise UserError(f"rd.points must be null or a positive integer, got {self.points!r}")
        t = self.tokens
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0
                              or (isinstance(t, float) and t > 1)):
            raise UserError(f"rd.tokens must be null, a count of tokens (an integer >= 1) or a "
                            f"fraction of the calibration tokens in (0, 1], got {t!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"rd.precision must be null or one of {', '.join(PRECISIONS)}, got "
                            f"{self.precision!r}")

    @property
    def is_reference(self) -> bool:
        """Every point of every unit measured on every token in the model's precision."""
        return self.kind == "exact" and self.points is None and self.tokens is None and \
            self.precision is None

    def measured(self, grid: np.ndarray) -> np.ndarray:
        """Indices of the grid points measured exactly (0% included: it costs nothing)."""
        n = len(grid)
        if self.kind == "exact" and self.points is None:
            return np.arange(n)
        k = self.points if self.points is not None else 2
        wanted = [j / k for j in range(1, k + 1)]  # evenly spaced up to 100%
        picked = {int(np.argmin(np.abs(grid - w))) for w in wanted} | {0}
        return np.array(sorted(picked))

    def inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The calibration inputs of the exact measurements: the first ``tokens`` (whole
        sequences of a language model; samples of an image model), or that fraction of them;
        images in ``precision``."""
        if self.precision is not None and inputs.is_floating_point():
            inputs = inputs.to(PRECISIONS[self.precision])
        if self.tokens is None:
            return inputs
        if isinstance(self.tokens, float):
            n = math.ceil(self.tokens * len(inputs))
        else:
            per = int(np.prod(inputs.shape[1:])) if not inputs.is_floating_point() else 1
            n = math.ceil(self.tokens / per)
        return inputs[:max(1, min(len(inputs), n))]

    def model(self, model: nn.Module, layers: dict[str, nn.Module]
              ) -> tuple[nn.Module, dict[str, nn.Module]]:
        """The model the exact measurements run (a copy in ``precision``) and its layers."""
        dtype = PRECISIONS.get(self.precision) if self.precision else None
        if dtype is None or next(model.parameters()).dtype == dtype:
            return model, layers
        names = {id(m): k for k, m in model.named_modules()}
        twin = copy.deepcopy(model).to(dtype)
        return twin, {k: twin.get_submodule(names[id(m)]) for k, m in layers.items()}

    def complete(self, grid: np.ndarray, measured: np.ndarray, values: np.ndarray,
                 local: np.ndarray | None) -> np.ndarray:
        """A whole row from its measured points (and, for ``local``, the closed-form errors)."""
        grid, values = np.asarray(grid, np.float64), np.asarray(values, np.float64)
        if len(measured) == len(grid) and local is None:
            return values
        if local is None:
            return monotone(grid[measured], values, grid)
        return gain_scaled(grid, measured, values, local)


def monotone(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic (PCHIP) interpolation of ``(x, y)`` at ``at``."""
    from scipy.interpolate import PchipInterpolator

    if len(x) == 1:
        return np.full(len(at), float(y[0]))
    return PchipInterpolator(x, y, extrapolate=True)(at)


def gain_scaled(grid: np.ndarray, anchors: np.ndarray, exact: np.ndarray, local: np.ndarray
                ) -> np.ndarray:
    """``local`` scaled by the gain ``exact / local`` at the anchors: ``log g`` linear in the
    sparsity between anchors, constant outside; exact where ``local`` is 0 (no change)."""
    local = np.asarray(local, np.float64)
    ok = [i for i, j in enumerate(anchors) if local[j] > 0 and exact[i] > 0]
    if not ok:  # no anchor moved the output: the local errors are the only shape there is
        return local * 0.0 if np.all(exact == 0) else local
    s = grid[anchors[ok]]
    log_g = np.log(exact[ok] / local[anchors[ok]])
    g = np.exp(np.interp(grid, s, log_g))  # constant outside the anchors
    out = g * local
    out[anchors] = exact  # measured points stay measured
    return out


def input_grams(model: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor,
                batch_size: int) -> dict[str, torch.Tensor]:
    """Per layer, the Gram matrix of what its weight multiplies, summed over the calibration set
    in float64: ``[groups, d, d]`` (:func:`rdprune.pruning.statistics.input_statistics`,
    ``gram``: the unfolded patches per group of a convolution, ``d = d_in`` for a linear)."""
    from rdprune.pruning.statistics import input_statistics

    return input_statistics(model, layers, inputs, "gram", batch_size=batch_size)


def local_errors(model: nn.Module, layers: dict[str, nn.Module], units: Sequence[Sequence[str]],
                 grid: np.ndarray, criterion: Any, inputs: torch.Tensor, batch_size: int
                 ) -> np.ndarray:
    """``[units, grid]``: each unit's summed ``tr(dW G dW^T)`` (module docstring), from one
    forward collecting every layer's input Gram matrix (:func:`input_grams`)."""
    from rdprune.pruning.layers import out_in
    from rdprune.pruning.masks import num_pruned

    grams = input_grams(model, layers, inputs, batch_size)
    out = np.zeros((len(units), len(grid)), dtype=np.float64)
    for ui, unit in enumerate(units):
        for name in unit:
            module = layers[name]
            w = out_in(module).detach().double()
            g = grams[name].to(w.device)  # [groups, d, d]
            groups = g.shape[0]
            counts = [num_pruned(w.numel(), float(s)) for s in grid]
            todo = sorted(set(counts))
            err = {}
            for k, (new, _) in zip(todo, criterion.pruned_weights(name, module, todo)):
                d = (out_in(module, new).double() - w).reshape(groups, w.shape[0] // groups, -1)
                err[k] = float(torch.einsum("goi,gij,goj->", d, g, d))
            out[ui] += [err[k] for k in counts]
    return out
