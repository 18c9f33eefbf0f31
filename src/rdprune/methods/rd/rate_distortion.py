"""The paper's method: per-layer (or per-block) RD curves, then the exact DP under the budget.

:class:`RateDistortion` profiles a rate-distortion curve per unit (a layer, or a language model's
decoder block) with the criterion that will prune, stores each row as soon as it is measured
(:mod:`rdprune.methods.rd.profiling.store`), solves the multiple-choice knapsack exactly (:mod:`rdprune.methods.rd.dp`)
and gives the budget the grid leaves unused back, so the target is met to the weight.
:func:`rate_distortion` builds it from a method config (``conf/method/ours*.yaml``) and ``rd.*``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rdprune import cache, keys
from rdprune.methods.rd.budget import allowed as allowed_points
from rdprune.methods.rd.budget import costs, forwards, give_back, unit_costs
from rdprune.methods.rd.distortion import check_reduction
from rdprune.methods.rd.estimators import Estimator, local_errors
from rdprune.errors import UserError
from rdprune.methods.problem import Allocation, Problem, cached_stage
from rdprune.tasks import Task

if TYPE_CHECKING:
    from rdprune.methods.rd.profiling.store import CurveStore, Sink

log = logging.getLogger(__name__)


class RateDistortion:
    """The paper's method: per-layer RD curves + exact DP under a parameter or FLOPs budget.

    Args:
        name: method name in outputs ("ours", "ours_zerodata", "ours_block").
        calibration: "data" (the problem's calibration inputs) or "synthetic" (zero-data: as
            many i.i.d. inputs of the same shape, drawn with ``calib_seed``: N(0, 1) images, or
            token ids uniform over the vocabulary for a language model).
        granularity: "layer" (one curve and one sparsity per layer, the paper) or "block" (one
            per decoder block of a language model: its linears pruned together at the same
            sparsity, the DP over blocks).
        grid_points: number of grid sparsities, ``linspace(0, 1, grid_points)`` (official: 101).
        reduction: distortion of the logits: "mean" or "worst" (max over samples).
        batch_size: calibration samples per forward while profiling.
        tol: allowed budget slack of the DP when costs are binned (see
            :func:`rdprune.methods.rd.dp.solve`).
        calib_seed: seed of the synthetic calibration inputs.
        estimator: how the curves are measured: ``exact`` (every grid point) or ``local``
            (closed-form layer errors scaled by exact gains; :mod:`rdprune.methods.rd.estimators`).
        points: grid points per unit measured exactly (``exact``: null = all, the rest
            interpolated; ``local``: its anchors, null = 2).
        tokens: calibration tokens (image models: samples) of the exact measurements
            (null: all).
        precision: dtype of the exact measurements (null: the model's; ``bfloat16``).
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
        granularity: str = "layer",
        estimator: str = "exact",
        points: int | None = None,
        tokens: int | None = None,
        precision: str | None = None,
    ) -> None:
        if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 2:
            raise UserError(f"rd.grid_points must be an integer of at least 2, got {grid_points!r}")
        check_reduction(reduction)
        if calibration not in ("data", "synthetic"):
            raise UserError(f"method.calibration must be data or synthetic, got {calibration!r}")
        if granularity not in ("layer", "block"):
            raise UserError(f"method.granularity must be layer or block, got {granularity!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"rd.batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
            raise UserError(f"rd.tol must be in [0, 1), got {tol!r}")
        self.name, self.calibration, self.grid_points = name, calibration, grid_points
        self.reduction, self.batch_size, self.tol, self.calib_seed = (
            reduction, batch_size, tol, calib_seed)
        self.granularity = granularity
        self.estimator = Estimator(estimator, points, tokens, precision)

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params",
              task: Task | None = None) -> None:
        """Any target in [0, 1) is feasible: every layer may be pruned up to 100%."""
        if self.granularity != "layer":
            if task is None:
                raise UserError(f"method {self.name} needs the model's task (its blocks)")
            task.units(layers, self.granularity)

    def units(self, problem: Problem) -> list[list[str]]:
        """What gets one curve and one sparsity: each layer, or each decoder block's layers."""
        return problem.task.units(problem.layers, self.granularity)

    def inputs(self, problem: Problem) -> torch.Tensor:
        """The calibration inputs (real or synthetic), fixed for every method and run."""
        if self.calibration == "synthetic":
            return problem.task.synthetic_inputs(problem.model, problem.calibration,
                                                 self.calib_seed)
        return problem.calibration

    def curve_store(self, problem: Problem) -> tuple[CurveStore, np.ndarray, torch.Tensor]:
        """The store of this problem's curve set (keyed by everything the curves depend on),
        the grid and the calibration inputs."""
        from rdprune.methods.rd.profiling.store import CurveStore

        grid = np.linspace(0.0, 1.0, self.grid_points)
        inputs = self.inputs(problem)
        units = self.units(problem)
        crit = problem.criterion
        key = keys.key(
            "curves", {"reduction": self.reduction, "calibration": self.calibration,
                       "criterion": crit.name, "estimator": vars(self.estimator)},
            weights=cache.state_digest(problem.model), pruned=problem.pruned,
            layers=list(problem.layers), units=units, inputs=inputs, grid=grid,
            stats=crit.stats)
        root = problem.cache_dir / "curves" if problem.cache_dir is not None else None
        return CurveStore(root, key, len(units)), grid, inputs

    def measure(self, problem: Problem, grid: np.ndarray, inputs: torch.Tensor,
                sink: Sink | None = None) -> np.ndarray:
        """The curves of the units ``sink`` lets through (all without one), by the task's
        exact profiler on the points, tokens and precision the estimator asks for; each row
        completed (interpolated, or gain-scaled local errors) before it is stored."""
        units = self.units(problem)
        groups = None if self.granularity == "layer" else units
        est = self.estimator
        x = inputs.to(problem.device)
        if est.is_reference:
            return problem.task.curves(
                problem.model, x, grid, self.reduction, layers=problem.layers,
                batch_size=self.batch_size, progress=problem.progress, sink=sink,
                criterion=problem.criterion, groups=groups)
        local = None
        if est.kind == "local":  # one forward for every layer's Gram matrix
            local = local_errors(problem.model, problem.layers, units, grid, problem.criterion,
                                 x, self.batch_size)
        measured = est.measured(grid)
        model, layers = est.model(problem.model, problem.layers)

        def complete(ri: int, row: np.ndarray) -> np.ndarray:
            return est.complete(grid, measured, row, None if local is None else local[ri])

        rows = problem.task.curves(
            model, est.inputs(x), grid[measured], self.reduction, layers=layers,
            batch_size=self.batch_size, progress=problem.progress,
            sink=None if sink is None else _Completing(sink, complete),
            criterion=problem.criterion, groups=groups)
        return np.stack([complete(ri, row) for ri, row in enumerate(rows)])

    def curves(self, problem: Problem, shards: int = 1, shard: int | None = None
               ) -> tuple[dict[str, Any] | None, np.ndarray, int]:
        """The RD curves (``{"curves", "seconds"}``, one row per unit), measured or from the
        cache, the grid, and how many units were measured in this process.

        With a cache every unit's row is stored as soon as it is measured and a stop signal
        ends profiling after the unit in flight (:mod:`rdprune.methods.rd.profiling.store`). With ``shard``
        = k of ``shards``, only that shard's share of the units is measured; the curves are
        returned (and stored) only if the set is complete afterwards, else None.
        """
        from rdprune.methods.rd.profiling.store import profile, shard_layers

        store, grid, inputs = self.curve_store(problem)
        if store.root is None:
            start = time.perf_counter()
            curves = self.measure(problem, grid, inputs)
            return {"curves": curves, "seconds": time.perf_counter() - start}, grid, len(curves)
        done = store.assembled()
        if done is not None:
            return done, grid, 0
        if not cache.writable(store.root):
            raise cache.ReadOnlyCacheError(
                f"the RD curves {store.path} are not in the cache and its directory is "
                "read-only: point paths.cache_dir (RDPRUNE_CACHE_DIR) at a writable directory")
        wanted = None
        if shard is not None:
            wanted = shard_layers(unit_costs(problem, self.units(problem), grid), shards, shard)
        rows, measured = profile(store, lambda sink: self.measure(problem, grid, inputs, sink),
                                 wanted)
        if len(rows) < store.num_layers:
            return None, grid, len(measured)
        return store.assemble(rows), grid, len(measured)

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.methods.rd.dp import solve

        prof, grid, measured = self.curves(problem)
        log.info("RD curves %s (%.1fs)", f"profiled ({measured} rows here)" if measured
                 else "loaded from cache", prof["seconds"])
        curves = prof["curves"]
        units = self.units(problem)
        cost, budget = costs(problem, units, grid)
        allowed = allowed_points(problem, units, grid)
        skey = keys.key("solve", {"tol": self.tol}, curves=curves, cost=cost, budget=budget,
                        allowed=allowed)

        def optimise() -> dict[str, Any]:
            start = time.perf_counter()
            choice = solve(curves, cost, budget, allowed, tol=self.tol)
            return {"choice": choice, "seconds": time.perf_counter() - start}

        sol, _ = cached_stage(problem.cache_dir, "solve", skey, optimise)
        choice = np.asarray(sol["choice"])
        rows = np.arange(len(choice))
        per_layer = give_back(problem, units, grid, choice, curves, cost, budget)
        info = {
            "profile_seconds": prof["seconds"],
            "profile_forwards": forwards(
                problem, units, int(np.sum(self.estimator.measured(grid) > 0)),
                self.estimator.inputs(problem.calibration).numel() / problem.calibration.numel(),
                self.estimator.kind == "local"),
            "solve_seconds": sol["seconds"],
            "predicted_distortion": float(curves[rows, choice].sum()),
            "budget_type": problem.budget,
            "budget": budget,
            "budget_used": float(cost[rows, choice].sum()),
        }
        return Allocation(problem.layers, [per_layer[k] for k in problem.layers], info,
                          curves=curves, grid=grid)


class _Completing:
    """A sink that completes each measured row (:meth:`Estimator.complete`) before storing it."""

    def __init__(self, sink: Sink, complete: Any) -> None:
        self.sink, self.complete = sink, complete

    def take(self, ri: int) -> bool:
        return self.sink.take(ri)

    def put(self, ri: int, row: np.ndarray, seconds: float) -> None:
        self.sink.put(ri, self.complete(ri, row), seconds)


def rate_distortion(
    name: str = "ours", calibration: str = "data", options: Mapping[str, Any] | None = None,
    granularity: str = "layer",
) -> RateDistortion:
    """:class:`RateDistortion` from a method config: ``options`` are the top-level ``rd.*``."""
    options = dict(options or {})
    known = set(inspect.signature(RateDistortion).parameters) - {
        "name", "calibration", "granularity"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown rd option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}")
    return RateDistortion(name=name, calibration=calibration, granularity=granularity,
                          **options)
