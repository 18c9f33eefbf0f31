"""The budget side of the RD method: what each (unit, grid point) costs, which points a unit may
take, the budget the DP's grid points leave unused given back, and what profiling costs.

Functions of a :class:`~rdprune.methods.problem.Problem` and its units (lists of layer names
that get one sparsity: single layers, or a decoder block's linears).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rdprune.methods.problem import Problem
from rdprune.pruning.masks import kept_count, num_pruned


def costs(problem: Problem, units: Sequence[Sequence[str]], grid: np.ndarray
          ) -> tuple[np.ndarray, float]:
    """Cost of each (unit, grid point) and the budget, in weights or MACs."""
    sizes = {k: m.weight.numel() for k, m in problem.layers.items()}
    kept = {k: np.array([n - num_pruned(n, s) for s in grid], dtype=np.int64)
            for k, n in sizes.items()}
    total = sum(sizes.values())
    if problem.budget == "params":
        cost = np.stack([sum(kept[k] for k in u) for u in units])
        return cost, float(total - num_pruned(total, problem.target))
    if problem.macs is None:
        raise ValueError("a FLOPs budget needs the layers' MACs (Problem.macs)")
    cost = np.stack([sum(kept[k] * (problem.macs[k] // sizes[k]) for k in u) for u in units])
    dense = float(sum(problem.macs[k] for k in problem.layers))
    return cost, (1.0 - problem.target) * dense


def allowed(problem: Problem, units: Sequence[Sequence[str]], grid: np.ndarray) -> np.ndarray:
    """Grid points that do not un-prune any weight (iterative pruning)."""
    pruned = dict(zip(problem.layers, problem.pruned))
    return np.array(
        [[all(num_pruned(problem.layers[k].weight.numel(), s) >= pruned[k] for k in u)
          for s in grid] for u in units],
        dtype=bool,
    )


def give_back(problem: Problem, units: Sequence[Sequence[str]], grid: np.ndarray,
              choice: np.ndarray, curves: np.ndarray, cost: np.ndarray, budget: float
              ) -> dict[str, float]:
    """Per-layer sparsities: the DP's grid points, with the budget they leave unused given back,
    so the target is met to the weight (a coarse grid or binned costs leave up to ``tol`` of
    it): weights are restored in the units whose curves fall most steeply one grid step down
    (distortion saved per unit of cost), never past that step nor below what earlier rounds
    pruned. The result is off the grid by less than one step per layer."""
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


def downstream(problem: Problem) -> tuple[dict[str, float], float]:
    """Per layer, the MACs from it to the output (what the fast paths re-run per grid point),
    and the model's total."""
    from rdprune.pruning.flops import layer_macs

    example = problem.task.mac_sample(problem.calibration[:1].to(problem.device))
    macs = problem.macs or layer_macs(problem.model, example, list(problem.layers))
    names = list(problem.layers)
    tail = np.cumsum([macs[k] for k in names][::-1])[::-1]
    return dict(zip(names, (float(t) for t in tail))), float(sum(macs[k] for k in names))


def unit_costs(problem: Problem, units: Sequence[Sequence[str]], grid: np.ndarray
               ) -> list[float]:
    """Relative cost of profiling each unit exactly: its downstream MACs x the grid points that
    need a forward (those pruning more than its zeros)."""
    down, _ = downstream(problem)
    out = []
    for unit in units:
        points = set()
        for k in unit:
            w = problem.layers[k].weight.detach()
            zeros = w.numel() - kept_count(w != 0)
            points |= {j for j, s in enumerate(grid) if num_pruned(w.numel(), s) > zeros}
        out.append(down[unit[0]] * len(points))
    return out


def forwards(problem: Problem, units: Sequence[Sequence[str]], points: int, share: float,
             local: bool) -> float:
    """Profiling's compute in full forwards of the calibration set (to compare with other
    methods'): per unit, ``points`` exactly measured grid points times the share of the model's
    MACs from its first layer on, times the ``share`` of the tokens measured; plus the reference
    pass, and the ``local`` estimator's Gram pass."""
    down, total = downstream(problem)
    runs = sum(points * down[u[0]] / total for u in units) * share
    return float(runs + 1 + local)
