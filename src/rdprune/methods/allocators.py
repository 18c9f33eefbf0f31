"""The method objects of the ``baseline``, ``llm`` and ``fixed`` families: ``check`` a target up
front, ``allocate(problem) -> Allocation``.

:class:`Baseline` wraps a pure function of the weights (:mod:`rdprune.methods.baselines`),
:class:`LMBaseline` one of the block-wise LLM methods (:mod:`rdprune.methods.llm_baselines`, fed
the Wanda metric where the method reads it), :class:`Fixed` takes the sparsities from the config.
The registry (:mod:`rdprune.methods.registry`) builds them. Which weights go is the criterion's
business (:mod:`rdprune.pruning.criteria`): methods differ only in how many per layer.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from rdprune.errors import UserError
from rdprune.methods.problem import Allocation, Problem, to_the_weight
from rdprune.pruning.layers import layer_weights, out_in
from rdprune.pruning.masks import num_pruned
from rdprune.tasks import Task


#: hyperparameters whose official value depends on the criterion, when the config leaves them
#: null: AlphaPruning's epsilon in its LLaMA-7B scripts at 70% (haiquanlu/AlphaPruning
#: ``scripts/*.sh``: magnitude 0.3, Wanda 0.2, SparseGPT 0.2)
OFFICIAL_BY_CRITERION = {"alpha_pruning": {"epsilon": {"magnitude": 0.3, "wanda": 0.2,
                                                       "sparsegpt": 0.2}}}


def _params_only(name: str, budget: str) -> None:
    if budget != "params":
        raise UserError(f"method {name} allocates a sparsity target only; a FLOPs target "
                        "(flops_kept) needs method=ours or ours_zerodata")


def clipping(sparsities: Sequence[float]) -> dict[str, int]:
    """How many layers an allocation leaves dense (0%) or removes entirely (100%): reported
    with every round, since a method whose band leaves [0, 1] is clipped there."""
    s = np.asarray(sparsities, dtype=np.float64)
    return {"layers_at_0": int(np.sum(s <= 0.0)), "layers_at_100": int(np.sum(s >= 1.0))}


def exact(problem: Problem, sparsities: Sequence[float]) -> list[float]:
    """The method's sparsities, rounded so the target is met to the weight
    (:func:`~rdprune.methods.problem.to_the_weight`)."""
    sizes = [m.weight.numel() for m in problem.layers.values()]
    return to_the_weight(sizes, sparsities, problem.target, problem.pruned)


class Baseline:
    """A pure baseline ``fn(weights, sparsity) -> sparsities`` (parameter budget only)."""

    def __init__(self, name: str, fn: Callable[..., list[float]]) -> None:
        self.name, self.fn = name, fn

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params",
              task: Task | None = None) -> None:
        """Fail early (before any training) if ``target`` is infeasible for this model."""
        _params_only(self.name, budget)
        self.fn(layer_weights(layers), target)

    def allocate(self, problem: Problem) -> Allocation:
        start = time.perf_counter()
        sparsities = exact(problem, self.fn(layer_weights(problem.layers), problem.target))
        return Allocation(problem.layers, sparsities,
                          {"allocate_seconds": time.perf_counter() - start,
                           **clipping(sparsities)})


class LMBaseline:
    """A block-wise method of the LLM literature (:mod:`rdprune.methods.llm_baselines`).

    Args:
        name: its registry name (``owl``, ``dlp``, ``atp``, ``alpha_pruning``).
        fn: ``fn(weights, sparsity, *, blocks, **hyper)``; a ``scores`` parameter gets the Wanda
            metric ``|W| * ||X_j||_2`` of the dense model (OWL, DLP).
        **hyper: the method's hyperparameters (OWL: ``m``, ``lam``; DLP: ``alpha``; ATP:
            ``beta``, null = chosen on the validation split from 0 and 5 equal steps up to the
            largest legal beta (the official grid's 0.002 steps, scaled to a few blocks);
            AlphaPruning: ``epsilon``); absent or null ones take the function's defaults.
    """

    def __init__(self, name: str, fn: Callable[..., list[float]], **hyper: Any) -> None:
        self.name, self.fn = name, fn
        params = set(inspect.signature(fn).parameters) - {"weights", "sparsity", "blocks",
                                                          "scores", "alphas"}
        unknown = sorted(set(hyper) - params)
        if unknown:
            raise UserError(f"method {name} has no option {', '.join(unknown)}; its options: "
                            f"{', '.join(sorted(params))}")
        self.hyper = {k: v for k, v in hyper.items() if v is not None}
        self.scored = "scores" in inspect.signature(fn).parameters

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params",
              task: Task | None = None) -> None:
        _params_only(self.name, budget)
        if task is None:
            raise UserError(f"method {self.name} needs the model's task (its decoder blocks)")
        task.blocks(list(layers))

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.pruning.criteria import measure

        start = time.perf_counter()
        names = list(problem.layers)
        # (d_out, d_in) views: GPT-2's Conv1D stores its weight transposed
        weights = [out_in(m, w) for m, w in zip(problem.layers.values(),
                                                layer_weights(problem.layers))]
        blocks = problem.task.blocks(names)
        hyper, info = dict(self.hyper), {}
        official = OFFICIAL_BY_CRITERION.get(self.name, {})
        for key, per_criterion in official.items():  # null: the official value for the criterion
            if key not in hyper:
                hyper[key] = per_criterion[problem.criterion.name]
                info[key] = hyper[key]
        if self.scored:  # the Wanda metric of the dense model, whatever criterion prunes
            norms = problem.criterion.norms or measure(
                "wanda", problem.model, problem.layers, problem.calibration,
                device=problem.device).norms
            hyper["scores"] = [w.abs() * norms[k].to(w.device).view(1, -1)
                               for k, w in zip(names, weights)]
        if self.name == "atp" and "beta" not in hyper:
            hyper["beta"], info = self._atp_beta(problem, names, weights, blocks)
        sparsities = exact(problem, self.fn(weights, problem.target, blocks=blocks, **hyper))
        return Allocation(problem.layers, sparsities,
                          {"allocate_seconds": time.perf_counter() - start, **info,
                           **clipping(sparsities)})

    def _atp_beta(self, problem: Problem, names: list[str], weights: list, blocks: list[int]
                  ) -> tuple[float, dict[str, float]]:
        """ATP's beta with the lowest validation loss among 0 and 5 equal steps up to the
        largest legal one (the official grid's step, 0.002, gives ~10 values over LLaMA's 32
        blocks; over fewer blocks the legal range is wider)."""
        from rdprune.methods.llm_baselines import atp_beta_grid

        if problem.validate is None:
            raise UserError("method atp with beta=null chooses beta on the validation split, "
                            "which this dataset does not have: set method.beta")
        num = max(blocks) + 1
        largest = min(2 * problem.target, 2 * (1 - problem.target)) / max(num - 1, 1)
        grid = [0.0] + atp_beta_grid(problem.target, num, step=max(largest / 5, 1e-9))
        losses = [problem.validate(dict(zip(names, self.fn(
            weights, problem.target, blocks=blocks, beta=b)))) for b in grid]
        beta = grid[int(np.argmin(losses))]
        return beta, {"beta": beta, "validation_nll": float(min(losses))}


class Fixed:
    """Per-layer sparsities given in the config (e.g. the ADMM paper's LeNet-5 setting).

    Args:
        name: method name in outputs.
        sparsities: one sparsity per prunable layer, in model order.
    """

    def __init__(self, name: str = "fixed", sparsities: list[float] | tuple = ()) -> None:
        self.name = name
        self.sparsities = [float(s) for s in sparsities]

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params",
              task: Task | None = None) -> None:
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
