"""EvoPress as an allocation method (``method=evopress``): a level database per layer, searched by
:func:`rdprune.methods.evolution.evolve` on the calibration KL divergence of the pruned model.

Official source: IST-DASLab/EvoPress (commit 50888a0): the database of ``prune.py`` /
``src/pruner.py`` (every layer pruned at each of its levels, a level being a fixed number of
weights, so swaps keep the budget; built from the dense weights with dense-input statistics) and
the search of ``evo_prune_search.py`` with the fitness of ``src/metrics.py::compute_kl_div``: the
mean per-token KL(dense || pruned) of the next-token distributions over every position but the
last of each calibration sequence taken. Here the database holds each layer's pruned weights by
the run's criterion (magnitude or Wanda masks, SparseGPT reconstructions from one Cholesky per
layer), in memory; the official stores fp16 tensors on disk (about 207 GB for LLaMA-2-7B). The
search settings default to :func:`~rdprune.methods.evolution.scaled_settings` of the model's
layers and calibration tokens (the official script's, scaled). Compute is reported beside the RD
method's: fitness calls, tokens forwarded, and full forwards of the calibration set equivalent.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdprune.errors import UserError
from rdprune.methods.evolution import SampleSpec, evolve, level_table, minibatch, scaled_settings
from rdprune.methods.problem import Allocation, Problem
from rdprune.tasks import Task


class EvoPress:
    """EvoPress (module docstring).

    Args:
        generations: search generations (None: the scaled official setting).
        offspring: children per generation (official 64).
        num_levels: levels each side of the uniform target (official 8).
        seed: seed of the search.
        step: weights per level (None: the official default scaled to the median layer).
        batch_size: sequences per forward.
    """

    name = "evopress"

    def __init__(self, generations: int | None = None, offspring: int = 64, num_levels: int = 8,
                 seed: int = 0, step: int | None = None, batch_size: int = 16) -> None:
        for key, value, low in (("offspring", offspring, 1), ("num_levels", num_levels, 1),
                                ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"method.{key} must be an integer >= {low}, got {value!r}")
        if generations is not None and (not isinstance(generations, int) or generations < 0):
            raise UserError(f"method.generations must be null or an integer >= 0, got "
                            f"{generations!r}")
        self.generations, self.offspring, self.num_levels = generations, offspring, num_levels
        self.seed, self.step, self.batch_size = int(seed), step, batch_size

    def check(self, layers: dict[str, nn.Module], target: float, budget: str = "params",
              task: Task | None = None) -> None:
        if budget != "params":
            raise UserError("method evopress searches a sparsity target; a FLOPs target "
                            "(flops_kept) needs method=ours")
        if task is None or not task.token_distributions:
            raise UserError("method evopress searches on the KL divergence of a language "
                            "model's next-token distributions: it needs a language model")

    def allocate(self, problem: Problem) -> Allocation:
        start = time.perf_counter()
        if any(problem.pruned):
            raise UserError("method evopress allocates one-shot (schedule=oneshot)")
        names, mods = list(problem.layers), list(problem.layers.values())
        table = level_table([m.weight.numel() for m in mods], problem.target,
                            num_levels=self.num_levels, step=self.step)
        calib = problem.calibration
        settings = scaled_settings(len(names), calib.numel())
        if self.generations is not None:
            settings["generations"] = self.generations
        settings["offspring"] = self.offspring
        database = _Database(problem, table)
        fitness = _KL(problem.model, calib, problem.device, self.batch_size)
        with database.swapped() as assemble:
            result = evolve(table, lambda levels, spec: fitness(assemble(levels), spec),
                            seed=self.seed, progress=problem.progress, **settings)
        sparsities = table.sparsities(result.levels)
        seq = calib.shape[1]
        info = {"allocate_seconds": time.perf_counter() - start, "search_kl": result.fitness,
                "search_generations": settings["generations"], "search_calls": result.calls,
                "search_tokens": result.tokens,
                # the dense teacher pass, plus every fitness call's tokens, in whole sequences
                "search_forwards": (result.tokens + calib.numel()) / seq / len(calib)}
        return Allocation(names, sparsities, info)


class _Database:
    """Each layer's pruned weight at each of its levels, computed on first use."""

    def __init__(self, problem: Problem, table: Any) -> None:
        self.problem, self.table = problem, table
        self.names = list(problem.layers)
        self.store: dict[tuple[int, int], torch.Tensor] = {}
        self.dense = {k: m.weight.detach().clone() for k, m in problem.layers.items()}

    def weight(self, unit: int, level: int) -> torch.Tensor:
        """Layer ``unit`` pruned at ``level``, from its dense weight (``self.dense``)."""
        if (unit, level) not in self.store:
            name = self.names[unit]
            module = self.problem.layers[name]
            k = int(self.table.removed(self._at(unit, level))[unit])
            held = module.weight.detach().clone()
            with torch.no_grad():
                module.weight.copy_(self.dense[name])  # the criterion reads the dense weight
                try:
                    self.store[unit, level] = self.problem.criterion.pruned_weights(
                        name, module, [k])[0][0]
                finally:
                    module.weight.copy_(held)
        return self.store[unit, level]

    def _at(self, unit: int, level: int) -> np.ndarray:
        levels = np.zeros(len(self.names), dtype=np.int64)
        levels[unit] = level
        return levels

    def swapped(self):
        """A context giving ``assemble(levels)``, which puts each layer's weight at its level
        into the model; the dense weights are restored on exit."""
        import contextlib

        layers = self.problem.layers

        @contextlib.contextmanager
        def context():
            dense = self.dense
            current: dict[int, int] = {}  # the level each layer holds now (only changes copy)

            def assemble(levels: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    for u, m in enumerate(layers.values()):
                        if current.get(u) != int(levels[u]):
                            m.weight.copy_(self.weight(u, int(levels[u])))
                            current[u] = int(levels[u])
                return levels

            try:
                yield assemble
            finally:
                with torch.no_grad():
                    for k, m in layers.items():
                        m.weight.copy_(dense[k])
        return context()


class _KL:
    """The official fitness: mean per-token KL(dense || model) over calibration tokens."""

    def __init__(self, model: nn.Module, calib: torch.Tensor, device: torch.device,
                 batch_size: int) -> None:
        self.model, self.calib, self.device, self.batch_size = model, calib, device, batch_size
        with torch.inference_mode():
            model.eval()
            self.teacher = [F.log_softmax(model(calib[i:i + batch_size].to(device)).float(), -1)
                            .cpu() for i in range(0, len(calib), batch_size)]
        self.lengths = [calib.shape[1]] * len(calib)

    @torch.inference_mode()
    def __call__(self, levels: np.ndarray, spec: SampleSpec) -> float:
        taken = minibatch(self.lengths, spec)
        total, count = 0.0, 0
        by_length: dict[int, list[int]] = {}
        for seq, length in taken:
            by_length.setdefault(length, []).append(seq)
        for length, seqs in by_length.items():
            for i in range(0, len(seqs), self.batch_size):
                rows = seqs[i:i + self.batch_size]
                x = self.calib[rows, :length].to(self.device)
                log_q = F.log_softmax(self.model(x).float(), -1)[:, :-1]
                log_p = torch.stack([self.teacher[r // self.batch_size][r % self.batch_size]
                                     for r in rows])[:, :length - 1].to(log_q.device)
                kl = (log_p.exp() * (log_p - log_q)).sum(-1)
                total += float(kl.double().sum())
                count += kl.numel()
        return total / max(count, 1)
