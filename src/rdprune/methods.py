"""Pruning methods as the pipeline sees them: ``allocate(problem) -> Allocation``.

A method turns the current model and a global target into per-layer sparsities. The baselines
wrap the pure functions of :mod:`rdprune.allocation`; :class:`RateDistortion` is the paper's
method: profile a rate-distortion curve per layer, then solve the multiple-choice knapsack exactly
(:mod:`rdprune.dp`). Both are built by Hydra from ``conf/method/``. Which weights go is always
decided by magnitude (:mod:`rdprune.masks`), so methods differ only in how many per layer.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from rdprune import cache
from rdprune.allocation import get_baseline
from rdprune.distortion import check_reduction
from rdprune.errors import UserError
from rdprune.layers import layer_weights
from rdprune.masks import num_pruned

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Problem:
    """What a method is asked to solve in one pruning round.

    Attributes:
        model: the current network (masked weights are exact zeros); must not be modified.
        layers: its prunable layers ``{name: module}`` in model order.
        target: fraction of the budget quantity to remove this round, in [0, 1): of the
            prunable weights (``budget="params"``) or of their dense MACs (``budget="flops"``).
        budget: ``"params"`` or ``"flops"``.
        pruned: per-layer number of weights already removed (a layer may not lose fewer).
        macs: dense MACs per sample of each layer; only a FLOPs budget needs them (else None).
        calibration: the calibration inputs ``[N, *input_shape]`` (the same every round).
        cache_dir: root of the stage caches (None: nothing cached).
        device: where to compute.
        progress: show progress bars.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    target: float
    budget: str
    pruned: list[int]
    macs: dict[str, int] | None
    calibration: torch.Tensor
    cache_dir: Path | None = None
    device: torch.device = torch.device("cpu")
    progress: bool = True


class Allocation(dict):
    """``{layer name: sparsity}`` in model order, plus what the method measured on the way.

    Attributes:
        info: seconds, budgets, predicted distortion (plain values, logged per round).
        curves: the RD curves ``[layers, grid points]`` (rate-distortion methods), else None.
        grid: their grid sparsities, else None.
    """

    def __init__(self, layers: Iterable[str], sparsities: Iterable[float],
                 info: dict[str, Any] | None = None, curves: np.ndarray | None = None,
                 grid: np.ndarray | None = None) -> None:
        layers, sparsities = list(layers), [float(s) for s in sparsities]
        if len(layers) != len(sparsities):
            raise ValueError(f"{len(sparsities)} sparsities for {len(layers)} layers")
        super().__init__(zip(layers, sparsities))
        self.info = info or {}
        self.curves, self.grid = curves, grid


#: budgets a target may be expressed in
BUDGETS = ("params", "flops")


def _cached(
    cache_dir: Path | None, stage: str, key: str, compute: Callable[[], T]
) -> tuple[T, bool]:
    """:func:`rdprune.cache.cached` under ``cache_dir/stage``, or just ``compute()`` without one."""
    if cache_dir is None:
        return compute(), False
    return cache.cached(cache_dir / stage / f"{key}.pt", compute)


class Baseline:
    """A baseline from :data:`rdprune.allocation.BASELINES`, by name (parameter budget only)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fn = get_baseline(name)

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params") -> None:
        """Fail early (before any training) if ``target`` is infeasible for this model."""
        if budget != "params":
            raise UserError(f"method {self.name} allocates a sparsity target only; a FLOPs "
                            "target (flops_kept) needs method=ours or ours_zerodata")
        self.fn(layer_weights(layers), target)

    def allocate(self, problem: Problem) -> Allocation:
        start = time.perf_counter()
        sparsities = self.fn(layer_weights(problem.layers), problem.target)
        return Allocation(problem.layers, sparsities,
                          {"allocate_seconds": time.perf_counter() - start})


class RateDistortion:
    """The paper's method: per-layer RD curves + exact DP under a parameter or FLOPs budget.

    Args:
        name: method name in outputs ("ours").
        calibration: "data" (the problem's calibration inputs) or "synthetic" (zero-data: as
            many N(0, 1) inputs of the same shape, drawn with ``calib_seed``).
        grid_points: number of grid sparsities, ``linspace(0, 1, grid_points)`` (official: 101).
        reduction: distortion of the logits: "mean" or "worst" (max over samples).
        batch_size: calibration samples per forward while profiling.
        tol: allowed budget slack of the DP when costs are binned (see :func:`rdprune.dp.solve`).
        calib_seed: seed of the synthetic calibration inputs.
    """

    def __init__(
        self,
        name: str = "ours",
        calibration: str = "data",
        grid_points: int = 101,
        reduction: str = "worst",
        batch_size: int = 256,
        tol: float = 1e-3,
        calib_seed: int = 0,
    ) -> None:
        if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 2:
            raise UserError(f"rd.grid_points must be an integer of at least 2, got {grid_points!r}")
        check_reduction(reduction)
        if calibration not in ("data", "synthetic"):
            raise UserError(f"method.calibration must be data or synthetic, got {calibration!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"rd.batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
            raise UserError(f"rd.tol must be in [0, 1), got {tol!r}")
        self.name, self.calibration, self.grid_points = name, calibration, grid_points
        self.reduction, self.batch_size, self.tol, self.calib_seed = (
            reduction, batch_size, tol, calib_seed)

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params") -> None:
        """Any target in [0, 1) is feasible: every layer may be pruned up to 100%."""

    def inputs(self, problem: Problem) -> torch.Tensor:
        """The calibration inputs (real or synthetic), fixed for every method and run."""
        if self.calibration == "synthetic":
            from rdprune.profiling import gaussian_inputs

            shape = problem.calibration.shape
            return gaussian_inputs(shape[0], shape[1:], self.calib_seed)
        return problem.calibration

    def costs(self, problem: Problem, grid: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost of each (layer, grid point) and the budget, in weights or MACs."""
        sizes = [m.weight.numel() for m in problem.layers.values()]
        kept = np.array([[n - num_pruned(n, s) for s in grid] for n in sizes], dtype=np.int64)
        total = sum(sizes)
        if problem.budget == "params":
            return kept, float(total - num_pruned(total, problem.target))
        if problem.macs is None:
            raise ValueError("a FLOPs budget needs the layers' MACs (Problem.macs)")
        per_weight = np.array([problem.macs[k] // n for k, n in zip(problem.layers, sizes)],
                              np.int64)
        cost = kept * per_weight[:, None]
        dense = float(sum(problem.macs[k] for k in problem.layers))
        return cost, (1.0 - problem.target) * dense

    def allowed(self, problem: Problem, grid: np.ndarray) -> np.ndarray:
        """Grid points that do not un-prune any weight (iterative pruning)."""
        sizes = [m.weight.numel() for m in problem.layers.values()]
        return np.array(
            [[num_pruned(n, s) >= p for s in grid] for n, p in zip(sizes, problem.pruned)],
            dtype=bool,
        )

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.dp import solve
        from rdprune.profiling import rd_curves

        grid = np.linspace(0.0, 1.0, self.grid_points)
        inputs = self.inputs(problem)
        key = cache.digest(
            "curves", cache.state_digest(problem.model), problem.pruned, list(problem.layers),
            inputs, grid, self.reduction, self.calibration,
        )

        def profile() -> dict[str, Any]:
            start = time.perf_counter()
            curves = rd_curves(problem.model, inputs.to(problem.device), grid, self.reduction,
                               layers=problem.layers, batch_size=self.batch_size,
                               progress=problem.progress)
            return {"curves": curves, "seconds": time.perf_counter() - start}

        prof, hit = _cached(problem.cache_dir, "curves", key, profile)
        log.info("RD curves %s (%.1fs)", "loaded from cache" if hit else "profiled",
                 prof["seconds"])
        curves = prof["curves"]
        cost, budget = self.costs(problem, grid)
        allowed = self.allowed(problem, grid)
        skey = cache.digest("solve", curves, cost, budget, allowed, self.tol)

        def optimise() -> dict[str, Any]:
            start = time.perf_counter()
            choice = solve(curves, cost, budget, allowed, tol=self.tol)
            return {"choice": choice, "seconds": time.perf_counter() - start}

        sol, _ = _cached(problem.cache_dir, "solve", skey, optimise)
        choice = np.asarray(sol["choice"])
        rows = np.arange(len(choice))
        info = {
            "profile_seconds": prof["seconds"],
            "solve_seconds": sol["seconds"],
            "predicted_distortion": float(curves[rows, choice].sum()),
            "budget_type": problem.budget,
            "budget": budget,
            "budget_used": float(cost[rows, choice].sum()),
        }
        return Allocation(problem.layers, [grid[c] for c in choice], info, curves=curves,
                          grid=grid)


def rate_distortion(
    name: str = "ours", calibration: str = "data", options: Mapping[str, Any] | None = None
) -> RateDistortion:
    """:class:`RateDistortion` from a method config: ``options`` are the top-level ``rd.*``."""
    options = dict(options or {})
    known = set(inspect.signature(RateDistortion).parameters) - {"name", "calibration"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown rd option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}")
    return RateDistortion(name=name, calibration=calibration, **options)


class Fixed:
    """Per-layer sparsities given in the config (e.g. the ADMM paper's LeNet-5 setting).

    Args:
        name: method name in outputs.
        sparsities: one sparsity per prunable layer, in model order.
    """

    def __init__(self, name: str = "fixed", sparsities: list[float] | tuple = ()) -> None:
        self.name = name
        self.sparsities = [float(s) for s in sparsities]

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params") -> None:
        """The list must fit the model, and its overall sparsity must be the run's target."""
        if budget != "params":
            raise UserError("method fixed gives per-layer sparsities: set sparsity=, not "
                            "flops_kept=")
        if len(self.sparsities) != len(layers):
            raise UserError(f"method.sparsities has {len(self.sparsities)} entries but the model "
                            f"has {len(layers)} prunable layers")
        if not all(0.0 <= s <= 1.0 for s in self.sparsities):
            raise UserError(f"method.sparsities must be in [0, 1], got {self.sparsities}")
        sizes = [m.weight.numel() for m in layers.values()]
        implied = sum(num_pruned(n, s) for n, s in zip(sizes, self.sparsities)) / sum(sizes)
        if abs(implied - target) > 1e-3:
            raise UserError(f"method.sparsities remove {implied:.5f} of the weights but "
                            f"sparsity={target}: set sparsity={implied:.5f}")

    def allocate(self, problem: Problem) -> Allocation:
        return Allocation(problem.layers, self.sparsities, {"allocate_seconds": 0.0})
