"""Pruning methods as the pipeline sees them: ``allocate(problem) -> Allocation``.

A method turns the current model and a global target into per-layer sparsities
(:mod:`rdprune.methods.problem`). :class:`Baseline` wraps the pure functions of :mod:`rdprune.methods.baselines`
(CNN baselines), :class:`LMBaseline` those of :mod:`rdprune.methods.llm_baselines` (OWL, ATP,
AlphaPruning), :class:`Fixed` takes them from the config, and :class:`RateDistortion` is the paper's
method (:mod:`rdprune.methods.rd.rate_distortion`). All are built by Hydra from ``conf/method/``. Which weights
go is decided by the criterion (:mod:`rdprune.pruning.masks`), so methods differ only in how many per layer.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
from torch import nn

from rdprune.methods.baselines import get_baseline
from rdprune.errors import UserError
from rdprune.pruning.layers import layer_weights
from rdprune.pruning.masks import num_pruned
from rdprune.methods.problem import Allocation, Problem
from rdprune.methods.rd.rate_distortion import RateDistortion, rate_distortion

__all__ = ["Allocation", "Baseline", "Fixed", "LMBaseline", "Problem", "RateDistortion",
           "rate_distortion"]


class Baseline:
    """A baseline from :data:`rdprune.methods.baselines.BASELINES`, by name (parameter budget only)."""

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


class LMBaseline:
    """A layer-wise sparsity method for language models from :mod:`rdprune.methods.llm_baselines`.

    Args:
        name: ``owl``, ``atp`` or ``alpha_pruning``.
        **hyper: the method's hyperparameters (OWL: ``m``, ``lam``; ATP: ``beta``, null = chosen
            on the validation split from 0 and 5 equal steps up to the largest legal beta (the
            official grid's 0.002 steps, scaled to a few blocks); AlphaPruning:
            ``epsilon``); absent ones take the function's defaults (the papers').
    """

    def __init__(self, name: str, **hyper: Any) -> None:
        from rdprune.methods.llm_baselines import LM_BASELINES

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
        from rdprune.methods.llm_baselines import blocks_of

        if budget != "params":
            raise UserError(f"method {self.name} allocates a sparsity target only; a FLOPs "
                            "target (flops_kept) needs method=ours or ours_zerodata")
        blocks_of(list(layers))

    def allocate(self, problem: Problem) -> Allocation:
        from rdprune.pruning.statistics import input_norms
        from rdprune.methods.llm_baselines import atp_beta_grid, blocks_of
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
            # fewer blocks the legal range is wider: 0 and 5 steps up to the largest legal beta
            num = max(blocks) + 1
            largest = min(2 * problem.target, 2 * (1 - problem.target)) / max(num - 1, 1)
            grid = [0.0] + atp_beta_grid(problem.target, num, step=max(largest / 5, 1e-9))
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
