"""Pruning methods as the pipeline sees them: ``allocate(ctx) -> Allocation``.

A method turns the current model and a global target into per-layer sparsities. The baselines
wrap the pure functions of :mod:`rdprune.allocation`; :class:`RateDistortion` is the paper's
method: profile a rate-distortion curve per layer, then solve the multiple-choice knapsack exactly
(:mod:`rdprune.dp`). Both are built by Hydra from ``conf/method/``. Which weights go is always
decided by magnitude (:mod:`rdprune.masks`), so methods differ only in how many per layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rdprune import cache
from rdprune.allocation import BASELINES
from rdprune.errors import UserError
from rdprune.masks import num_pruned

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a method may look at when allocating one pruning round.

    Attributes:
        model: the current network (masked weights are exact zeros); must not be modified.
        layers: its prunable layers ``{name: module}`` in model order.
        target: global sparsity to reach this round, in [0, 1).
        pruned: per-layer number of weights already removed (a layer may not lose fewer).
        macs: dense MACs per sample of each layer.
        calibration: ``size -> inputs``: the fixed calibration set of the dataset.
        input_shape: shape of one input sample.
        cache_dir: root of the stage caches.
        device: where to compute.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    target: float
    pruned: list[int]
    macs: dict[str, int]
    calibration: Callable[[int | None], torch.Tensor]
    input_shape: tuple[int, ...]
    cache_dir: Path
    device: torch.device = torch.device("cpu")


@dataclass
class Allocation:
    """Per-layer sparsities plus what the method measured on the way (seconds, distortions)."""

    sparsities: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    curves: np.ndarray | None = None
    grid: np.ndarray | None = None


def _weights(layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    return [m.weight.detach() for m in layers.values()]


class Baseline:
    """A baseline from :data:`rdprune.allocation.BASELINES`, by name."""

    def __init__(self, name: str) -> None:
        if name not in BASELINES:
            raise UserError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
        self.name = name
        self.fn = BASELINES[name]

    def check(self, layers: dict[str, nn.Module], target: float) -> None:
        """Fail early (before any training) if ``target`` is infeasible for this model."""
        self.fn(_weights(layers), target)

    def allocate(self, ctx: Context) -> Allocation:
        start = time.perf_counter()
        sparsities = self.fn(_weights(ctx.layers), ctx.target)
        return Allocation(sparsities, {"allocate_seconds": time.perf_counter() - start})


class RateDistortion:
    """The paper's method: per-layer RD curves + exact DP under a parameter or FLOPs budget.

    Args:
        name: method name in outputs ("ours").
        grid_points: number of grid sparsities, ``linspace(0, 1, grid_points)`` (official: 101).
        reduction: distortion of the logits: "mean" or "worst" (max over samples).
        calib_size: calibration images (None: the dataset's ``calib_size``).
        calibration: "data" (the dataset's calibration set) or "synthetic" (zero-data: N(0, 1)
            inputs in normalised input space).
        budget: "params" (kept weights <= (1 - target) x all weights) or "flops" (kept MACs <=
            (1 - target) x dense MACs; the target then means "FLOPs removed").
        batch_size: calibration samples per forward while profiling.
        tol: allowed budget slack of the DP when costs are binned (see :func:`rdprune.dp.solve`).
        calib_seed: seed of the synthetic calibration inputs.
    """

    def __init__(
        self,
        name: str = "ours",
        grid_points: int = 101,
        reduction: str = "worst",
        calib_size: int | None = None,
        calibration: str = "data",
        budget: str = "params",
        batch_size: int = 256,
        tol: float = 1e-3,
        calib_seed: int = 0,
    ) -> None:
        if grid_points < 2:
            raise UserError(f"method.grid_points must be at least 2, got {grid_points}")
        if reduction not in ("mean", "worst"):
            raise UserError(f"method.reduction must be mean or worst, got {reduction!r}")
        if calibration not in ("data", "synthetic"):
            raise UserError(f"method.calibration must be data or synthetic, got {calibration!r}")
        if budget not in ("params", "flops"):
            raise UserError(f"method.budget must be params or flops, got {budget!r}")
        self.name, self.grid_points, self.reduction = name, grid_points, reduction
        self.calib_size, self.calibration, self.budget = calib_size, calibration, budget
        self.batch_size, self.tol, self.calib_seed = batch_size, tol, calib_seed

    def check(self, layers: dict[str, nn.Module], target: float) -> None:
        """Any target in [0, 1) is feasible: every layer may be pruned up to 100%."""

    def inputs(self, ctx: Context) -> torch.Tensor:
        """The calibration inputs (real or synthetic), fixed for every method and run."""
        if self.calibration == "synthetic":
            from rdprune.profiling import gaussian_inputs

            n = self.calib_size or len(ctx.calibration(None))
            return gaussian_inputs(n, ctx.input_shape, self.calib_seed)
        return ctx.calibration(self.calib_size)

    def costs(self, ctx: Context, grid: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost of each (layer, grid point) and the budget, in weights or MACs."""
        sizes = [m.weight.numel() for m in ctx.layers.values()]
        kept = np.array([[n - num_pruned(n, s) for s in grid] for n in sizes], dtype=np.int64)
        total = sum(sizes)
        if self.budget == "params":
            return kept, float(total - num_pruned(total, ctx.target))
        per_weight = np.array([ctx.macs[k] // n for k, n in zip(ctx.layers, sizes)], np.int64)
        cost = kept * per_weight[:, None]
        return cost, (1.0 - ctx.target) * float(sum(ctx.macs[k] for k in ctx.layers))

    def allowed(self, ctx: Context, grid: np.ndarray) -> np.ndarray:
        """Grid points that do not un-prune any weight (iterative pruning)."""
        sizes = [m.weight.numel() for m in ctx.layers.values()]
        return np.array(
            [[num_pruned(n, s) >= p for s in grid] for n, p in zip(sizes, ctx.pruned)], dtype=bool
        )

    def allocate(self, ctx: Context) -> Allocation:
        from rdprune.dp import solve
        from rdprune.profiling import rd_curves

        grid = np.linspace(0.0, 1.0, self.grid_points)
        inputs = self.inputs(ctx)
        key = cache.digest(
            "curves", cache.state_digest(ctx.model), ctx.pruned, list(ctx.layers), inputs,
            grid, self.reduction, self.calibration,
        )

        def profile() -> dict[str, Any]:
            start = time.perf_counter()
            curves = rd_curves(ctx.model, inputs.to(ctx.device), grid, self.reduction,
                               layers=ctx.layers, batch_size=self.batch_size)
            return {"curves": curves, "seconds": time.perf_counter() - start}

        prof, hit = cache.cached(ctx.cache_dir / "curves" / f"{key}.pt", profile)
        log.info("RD curves %s (%.1fs)", "loaded from cache" if hit else "profiled",
                 prof["seconds"])
        curves = prof["curves"]
        cost, budget = self.costs(ctx, grid)
        allowed = self.allowed(ctx, grid)
        skey = cache.digest("solve", curves, cost, budget, allowed, self.tol)

        def optimise() -> dict[str, Any]:
            start = time.perf_counter()
            choice = solve(curves, cost, budget, allowed, tol=self.tol)
            return {"choice": choice, "seconds": time.perf_counter() - start}

        sol, _ = cache.cached(ctx.cache_dir / "solve" / f"{skey}.pt", optimise)
        choice = np.asarray(sol["choice"])
        rows = np.arange(len(choice))
        info = {
            "profile_seconds": prof["seconds"],
            "solve_seconds": sol["seconds"],
            "predicted_distortion": float(curves[rows, choice].sum()),
            "budget_type": self.budget,
            "budget": budget,
            "budget_used": float(cost[rows, choice].sum()),
        }
        return Allocation([float(grid[c]) for c in choice], info, curves=curves, grid=grid)



class Fixed:
    """Per-layer sparsities given in the config (e.g. the ADMM paper's LeNet-5 setting).

    Args:
        name: method name in outputs.
        sparsities: one sparsity per prunable layer, in model order.
    """

    def __init__(self, name: str = "fixed", sparsities: list[float] | tuple = ()) -> None:
        self.name = name
        self.sparsities = [float(s) for s in sparsities]

    def check(self, layers: dict[str, nn.Module], target: float) -> None:
        """The list must fit the model, and its overall sparsity must be the run's target."""
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

    def allocate(self, ctx: Context) -> Allocation:
        return Allocation(list(self.sparsities), {"allocate_seconds": 0.0})
