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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from rdprune import cache
from rdprune.allocation import get_baseline
from rdprune.distortion import check_reduction
from rdprune.errors import UserError
from rdprune.layers import layer_weights, unwrap
from rdprune.masks import Criterion, kept_count, num_pruned

if TYPE_CHECKING:
    from rdprune.profiling.store import CurveStore, Sink

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
        criterion: which weights of a layer go (magnitude, or wanda with its input norms); RD
            curves are measured with the criterion that will prune.
        validate: ``{layer: sparsity} -> validation loss`` of the model pruned so (lower is
            better), for methods that choose a hyperparameter on the validation split (ATP's
            beta); None where the data has no validation split.
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
    criterion: Criterion = field(default_factory=Criterion)
    validate: Callable[[dict[str, float]], float] | None = None


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
        granularity: str = "layer",
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

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params") -> None:
        """Any target in [0, 1) is feasible: every layer may be pruned up to 100%."""
        self.units(layers)

    def units(self, layers: Mapping[str, nn.Module]) -> list[list[str]]:
        """What gets one curve and one sparsity: each layer, or each decoder block's layers."""
        if self.granularity == "layer":
            return [[name] for name in layers]
        from rdprune.models.lm import block_index

        blocks: dict[int, list[str]] = {}
        for name in layers:
            b = block_index(name)
            if b is None:
                raise UserError(f"method {self.name} allocates per decoder block, but layer "
                                f"{name} is in none (a language model's layers are): use ours")
            blocks.setdefault(b, []).append(name)
        return list(blocks.values())

    def inputs(self, problem: Problem) -> torch.Tensor:
        """The calibration inputs (real or synthetic), fixed for every method and run."""
        if self.calibration == "synthetic":
            shape = problem.calibration.shape
            if not problem.calibration.is_floating_point():  # token ids: uniform over the vocab
                vocab = unwrap(problem.model).hf.get_output_embeddings().weight.shape[0]
                g = torch.Generator().manual_seed(int(self.calib_seed))
                return torch.randint(0, vocab, tuple(shape), generator=g)
            from rdprune.profiling import gaussian_inputs

            return gaussian_inputs(shape[0], shape[1:], self.calib_seed)
        return problem.calibration

    def costs(self, problem: Problem, grid: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost of each (unit, grid point) and the budget, in weights or MACs."""
        sizes = {k: m.weight.numel() for k, m in problem.layers.items()}
        kept = {k: np.array([n - num_pruned(n, s) for s in grid], dtype=np.int64)
                for k, n in sizes.items()}
        units = self.units(problem.layers)
        total = sum(sizes.values())
        if problem.budget == "params":
            cost = np.stack([sum(kept[k] for k in u) for u in units])
            return cost, float(total - num_pruned(total, problem.target))
        if problem.macs is None:
            raise ValueError("a FLOPs budget needs the layers' MACs (Problem.macs)")
        cost = np.stack([sum(kept[k] * (problem.macs[k] // sizes[k]) for k in u)
                         for u in units])
        dense = float(sum(problem.macs[k] for k in problem.layers))
        return cost, (1.0 - problem.target) * dense

    def allowed(self, problem: Problem, grid: np.ndarray) -> np.ndarray:
        """Grid points that do not un-prune any weight (iterative pruning)."""
        pruned = dict(zip(problem.layers, problem.pruned))
        return np.array(
            [[all(num_pruned(problem.layers[k].weight.numel(), s) >= pruned[k] for k in u)
              for s in grid] for u in self.units(problem.layers)],
            dtype=bool,
        )

    def curve_store(self, problem: Problem) -> tuple[CurveStore, np.ndarray, torch.Tensor]:
        """The store of this problem's curve set (keyed by everything the curves depend on),
        the grid and the calibration inputs."""
        from rdprune.profiling.store import CurveStore

        grid = np.linspace(0.0, 1.0, self.grid_points)
        inputs = self.inputs(problem)
        units = self.units(problem.layers)
        crit = problem.criterion
        key = cache.digest(
            "curves", cache.state_digest(problem.model), problem.pruned, list(problem.layers),
            units, inputs, grid, self.reduction, self.calibration, crit.name,
            crit.norms if crit.name != "magnitude" else None,
        )
        root = problem.cache_dir / "curves" if problem.cache_dir is not None else None
        return CurveStore(root, key, len(units)), grid, inputs

    def measure(self, problem: Problem, grid: np.ndarray, inputs: torch.Tensor,
                sink: Sink | None = None) -> np.ndarray:
        """The curves of the units ``sink`` lets through (all without one)."""
        from rdprune.profiling import rd_curves
        from rdprune.profiling.lm import lm_curves

        units = self.units(problem.layers)
        x = inputs.to(problem.device)
        if hasattr(unwrap(problem.model), "hf"):  # a causal LM: its blocks' fast path
            return lm_curves(problem.model, x, grid, self.reduction, layers=problem.layers,
                             batch_size=self.batch_size, progress=problem.progress, sink=sink,
                             criterion=problem.criterion, groups=units)
        if self.granularity != "layer":
            raise UserError(f"method {self.name}: per-block curves need a language model")
        return rd_curves(problem.model, x, grid, self.reduction, layers=problem.layers,
                         batch_size=self.batch_size, progress=problem.progress, sink=sink,
                         criterion=problem.criterion)

    def curves(self, problem: Problem, shards: int = 1, shard: int | None = None
               ) -> tuple[dict[str, Any] | None, np.ndarray, int]:
        """The RD curves (``{"curves", "seconds"}``, one row per unit), measured or from the
        cache, the grid, and how many units were measured in this process.

        With a cache every unit's row is stored as soon as it is measured and a stop signal
        ends profiling after the unit in flight (:mod:`rdprune.profiling.store`). With ``shard``
        = k of ``shards``, only that shard's share of the units is measured; the curves are
        returned (and stored) only if the set is complete afterwards, else None.
        """
        from rdprune.profiling.store import profile, shard_layers

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
            wanted = shard_layers(self.unit_costs(problem, grid), shards, shard)
        rows, measured = profile(store, lambda sink: self.measure(problem, grid, inputs, sink),
                                 wanted)
        if len(rows) < store.num_layers:
            return None, grid, len(measured)
        return store.assemble(rows), grid, len(measured)

    def unit_costs(self, problem: Problem, grid: np.ndarray) -> list[float]:
        """Relative cost of profiling each unit: the MACs from its first layer to the output
        (what the fast paths re-run per grid point) x the grid points that need a forward."""
        from rdprune.flops import layer_macs

        example = problem.calibration[:1].to(problem.device)
        macs = problem.macs or layer_macs(problem.model, example, list(problem.layers))
        names = list(problem.layers)
        downstream = dict(zip(names, np.cumsum([macs[k] for k in names][::-1])[::-1]))
        costs = []
        for unit in self.units(problem.layers):
            points = set()
            for k in unit:
                w = problem.layers[k].weight.detach()
                zeros = w.numel() - kept_count(w != 0)
                points |= {j for j, s in enumerate(grid) if num_pruned(w.numel(), s) > zeros}
            costs.append(float(downstream[unit[0]]) * len(points))
        return costs

    def exact(self, problem: Problem, grid: np.ndarray, choice: np.ndarray, curves: np.ndarray,
              cost: np.ndarray, budget: float) -> dict[str, float]:
        """Per-layer sparsities: the DP's grid points, with the budget they leave unused given
        back, so the target is met to the weight (a coarse grid or binned costs leave up to
        ``tol`` of it): weights are restored in the units whose curves fall most steeply one
        grid step down (distortion saved per unit of cost), never past that step nor below what
        earlier rounds pruned. The result is off the grid by less than one step per layer."""
        units = self.units(problem.layers)
        sizes = {k: m.weight.numel() for k, m in problem.layers.items()}
        unit_cost = {k: 1 if problem.budget == "params" else problem.macs[k] // sizes[k]
                     for k in problem.layers}
        removed = {k: num_pruned(sizes[k], grid[c]) for u, c in zip(units, choice) for k in u}
        floor = dict(zip(problem.layers, problem.pruned))
        slack = budget - float(sum(cost[u, c] for u, c in enumerate(choice)))
        slopes = []
        for u, c in enumerate(choice):
            step = cost[u, c - 1] - cost[u, c] if c > 0 else 0
            if step > 0:
                slopes.append(((curves[u, c] - curves[u, c - 1]) / step, u))
        for _, u in sorted(slopes, reverse=True):
            for k in units[u]:
                room = removed[k] - max(floor[k], num_pruned(sizes[k], grid[choice[u] - 1]))
                back = max(0, min(room, int(slack // unit_cost[k])))
                removed[k] -= back
                slack -= back * unit_cost[k]
        return {k: removed[k] / sizes[k] for k in problem.layers}

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.dp import solve

        prof, grid, measured = self.curves(problem)
        log.info("RD curves %s (%.1fs)", f"profiled ({measured} rows here)" if measured
                 else "loaded from cache", prof["seconds"])
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
        per_layer = self.exact(problem, grid, choice, curves, cost, budget)
        info = {
            "profile_seconds": prof["seconds"],
            "solve_seconds": sol["seconds"],
            "predicted_distortion": float(curves[rows, choice].sum()),
            "budget_type": problem.budget,
            "budget": budget,
            "budget_used": float(cost[rows, choice].sum()),
        }
        return Allocation(problem.layers, [per_layer[k] for k in problem.layers], info,
                          curves=curves, grid=grid)


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


class LMBaseline:
    """A layer-wise sparsity method for language models from :mod:`rdprune.lm_allocation`.

    Args:
        name: ``owl``, ``atp`` or ``alpha_pruning``.
        **hyper: the method's hyperparameters (OWL: ``m``, ``lam``; ATP: ``beta``, null = chosen
            on the validation split from the official grid scaled to ~10 values; AlphaPruning:
            ``epsilon``); absent ones take the function's defaults (the papers').
    """

    def __init__(self, name: str, **hyper: Any) -> None:
        from rdprune.lm_allocation import LM_BASELINES

        if name not in LM_BASELINES:
            raise UserError(f"unknown language-model method {name!r}; choose one of "
                            f"{', '.join(LM_BASELINES)}")
        self.name, self.fn = name, LM_BASELINES[name]
        params = set(inspect.signature(self.fn).parameters) - {"weights", "sparsity", "blocks",
                                                                "scores", "alphas"}
        unknown = sorted(set(hyper) - params)
        if unknown:
            raise UserError(f"method {name} has no option {', '.join(unknown)}; its options: "
                            f"{', '.join(sorted(params))}")
        self.hyper = {k: v for k, v in hyper.items() if v is not None}

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params") -> None:
        from rdprune.lm_allocation import blocks_of

        if budget != "params":
            raise UserError(f"method {self.name} allocates a sparsity target only; a FLOPs "
                            "target (flops_kept) needs method=ours or ours_zerodata")
        blocks_of(list(layers))

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.activations import input_norms
        from rdprune.lm_allocation import atp_beta_grid, blocks_of
        from rdprune.models.lm import out_in

        start = time.perf_counter()
        names, weights = list(problem.layers), layer_weights(problem.layers)
        # (d_out, d_in) views: GPT-2's Conv1D stores its weight transposed
        weights = [out_in(m, w) for m, w in zip(problem.layers.values(), weights)]
        blocks = blocks_of(names)
        hyper, info = dict(self.hyper), {}
        if self.name == "owl":  # outliers of the Wanda metric, whatever criterion prunes
            norms = problem.criterion.norms or input_norms(
                problem.model, problem.layers, problem.calibration, device=problem.device)
            hyper["scores"] = [w.abs() * norms[k].to(w.device).view(1, -1)
                               for k, w in zip(names, weights)]
        if self.name == "atp" and "beta" not in hyper:
            if problem.validate is None:
                raise UserError("method atp with beta=null chooses beta on the validation split,"
                                " which this dataset does not have: set method.beta")
            # the official grid's step (0.002) gives ~10 values over LLaMA's 32 blocks; over
            # fewer blocks the legal range is wider: the same ~10 values, scaled to it
            num = max(blocks) + 1
            largest = min(2 * problem.target, 2 * (1 - problem.target)) / max(num - 1, 1)
            grid = [0.0] + atp_beta_grid(problem.target, num, step=max(largest / 10, 1e-9))
            losses = [problem.validate(dict(zip(names, self.fn(
                weights, problem.target, blocks=blocks, beta=b)))) for b in grid]
            hyper["beta"] = grid[int(np.argmin(losses))]
            info = {"beta": hyper["beta"], "validation_nll": float(min(losses))}
        sparsities = self.fn(weights, problem.target, blocks=blocks, **hyper)
        return Allocation(problem.layers, sparsities,
                          {"allocate_seconds": time.perf_counter() - start, **info})


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
