"""EvoPress: evolutionary search over per-unit sparsity levels (unstructured pruning).

Follows the official code, IST-DASLab/EvoPress at commit 50888a0: the level table of
``src/pruner.py::_prune_group`` (L154-156, default step ``prune.py`` L146-148), the search of
``evo_prune_search.py`` (mutation L267-298, staged selection L54-83 and L300-315) and the settings
of ``scripts/run_prune_search.sh``. The fitness (the official ``src/metrics.py::compute_kl_div``,
KL(dense || pruned) on calibration tokens) is the caller's; :func:`minibatch` picks its tokens.

Deviations from the official code:
  * Level 0 of unit i removes ``base[i]`` weights, with ``base`` the largest-remainder rounding of
    ``S * n_i`` so that ``sum(base) == floor(S * sum(n) + 0.5)`` (the project's global count);
    the official rounds each unit, ``round(S * n_i)``, which can miss the global count by a few.
    Counts are exact per unit (the official SparseGPT rounds per 128-column block).
  * Level ranges follow the official formula, further clipped so removed counts stay in [0, n].
  * The default step uses the median unit size for the official ``hidden**2``, and is at least 1.
  * A switch always moves two different units, and a child equal to its parent is redrawn (the
    official can draw the same unit twice, or cancelling switches, and so re-evaluate the parent).
  * If fewer unique children than ``offspring`` exist, the generation goes on with those found
    after ``100 * offspring + 1000`` draws (the official loops forever); with no possible switch
    at all, :func:`evolve` raises :class:`UserError` (the official loops forever).
  * The parent joins the candidates before the last stage by index (the official compares the
    survivor count with the last one's); ties keep the earlier candidate (stable sort).
  * Randomness is one ``numpy`` Generator; each stage draws a seed for its minibatch.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from rdprune.errors import UserError


@dataclass(frozen=True, eq=False)
class Levels:
    """The level table: level ``j`` of unit ``i`` removes ``base[i] + j * step`` weights.

    Attributes:
        sizes: Weights per unit.
        target: Global sparsity S (fraction of weights removed), in [0, 1).
        step: Weights added to the removed count per level, the same for every unit.
        base: Weights removed at level 0; sums to ``floor(S * sum(sizes) + 0.5)``.
        low: Lowest level per unit (<= 0).
        high: Highest level per unit (>= 0).
    """

    sizes: tuple[int, ...]
    target: float
    step: int
    base: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def total(self) -> int:
        """Weights removed by any level vector summing to 0."""
        return int(self.base.sum())

    def removed(self, levels: Sequence[int] | np.ndarray) -> np.ndarray:
        """Weights removed per unit at ``levels`` (one integer per unit, within ``[low, high]``)."""
        lv = np.asarray(levels)
        if lv.shape != self.base.shape or not np.issubdtype(lv.dtype, np.integer):
            raise UserError(f"levels must be {len(self.sizes)} integers, got shape {lv.shape}")
        if np.any(lv < self.low) or np.any(lv > self.high):
            raise UserError("levels outside the table's [low, high] range")
        return self.base + lv.astype(np.int64) * self.step

    def sparsities(self, levels: Sequence[int] | np.ndarray) -> list[float]:
        """Per-unit sparsity (fraction removed) at ``levels``."""
        return [int(r) / n for r, n in zip(self.removed(levels), self.sizes)]


def level_table(sizes: Sequence[int], target: float, *, num_levels: int = 8,
                step: int | None = None) -> Levels:
    """The level table for units of ``sizes`` weights at global sparsity ``target``.

    Args:
        sizes: Weights per unit (positive integers).
        target: Global sparsity S in [0, 1).
        num_levels: Most levels on each side of 0 (official default 8).
        step: Weights per level (official ``weights_diff``); default
            ``max(1, int(0.5 * min(S, 1 - S) / num_levels * median(sizes)))``.

    Raises:
        UserError: On an empty ``sizes``, a size < 1, ``target`` outside [0, 1),
            ``num_levels`` < 0 or ``step`` < 1.
    """
    n = np.asarray([int(s) for s in sizes], dtype=np.int64)
    if n.size == 0 or np.any(n < 1):
        raise UserError("level_table needs at least one unit, each of at least one weight")
    if not 0.0 <= float(target) < 1.0:
        raise UserError(f"target sparsity must be in [0, 1), got {target}")
    if int(num_levels) < 0:
        raise UserError(f"num_levels must be >= 0, got {num_levels}")
    s = float(target)
    if step is None:
        step = max(1, int(0.5 * min(s, 1 - s) / max(num_levels, 1) * float(np.median(n))))
    if int(step) < 1:
        raise UserError(f"step (weights per level) must be >= 1, got {step}")
    step = int(step)
    # largest-remainder rounding of S * n_i to the global count floor(S * N + 0.5)
    exact = s * n.astype(np.float64)
    base = np.floor(exact).astype(np.int64)
    extra = int(np.floor(s * int(n.sum()) + 0.5)) - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:max(0, min(extra, n.size))]] += 1
    base = np.minimum(base, n)
    # official: min(int(S // (step / n)), num_levels) below, min(int((1 - S) // (step / n)), ...) above
    down = np.array([min(int(s // (step / k)), num_levels) for k in n], dtype=np.int64)
    up = np.array([min(int((1.0 - s) // (step / k)), num_levels) for k in n], dtype=np.int64)
    low = -np.minimum(down, base // step)
    high = np.minimum(up, (n - base) // step)
    return Levels(tuple(int(k) for k in n), s, step, base, low, high)


@dataclass(frozen=True)
class SampleSpec:
    """Which calibration tokens a fitness call uses: ``tokens`` tokens drawn with ``seed``
    (see :func:`minibatch`). All candidates of one stage share the same spec."""

    seed: int
    tokens: int
    generation: int
    stage: int


def minibatch(lengths: Sequence[int], sample: SampleSpec) -> list[tuple[int, int]]:
    """The official minibatch (``evo_prune_search.py`` L54-72): distinct random sequences until
    exactly ``sample.tokens`` tokens, the last one cut. Returns ``(sequence index, leading tokens
    taken)`` pairs, for sequences of ``lengths`` tokens."""
    if sum(int(k) for k in lengths) < sample.tokens:
        raise UserError(f"a stage needs {sample.tokens} calibration tokens, only "
                        f"{sum(int(k) for k in lengths)} available; lower the stage tokens")
    taken, left = [], sample.tokens
    for i in np.random.default_rng(sample.seed).permutation(len(lengths)):
        if left > 0 and lengths[i] > 0:
            taken.append((int(i), min(int(lengths[i]), left)))
            left -= taken[-1][1]
    return taken


@dataclass
class SearchResult:
    """The search's outcome: the final parent, its last-stage fitness (NaN after 0 generations),
    the per-generation winner fitness and parent, and the compute spent (fitness calls and
    calibration tokens, summed over calls)."""

    levels: np.ndarray
    fitness: float
    history: list[float] = field(default_factory=list)
    trajectory: list[np.ndarray] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0


def _takes_sample(fitness: Callable) -> bool:
    """Whether ``fitness`` takes ``(levels, sample)`` (two required positional or ``*args``)."""
    try:
        params = list(inspect.signature(fitness).parameters.values())
    except (TypeError, ValueError):
        return True
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _switch(child: np.ndarray, table: Levels, rng: np.random.Generator) -> bool:
    """One level switch in place: -1 to a unit that can go down, +1 to another that can go up."""
    down = np.flatnonzero(child > table.low)
    up = np.flatnonzero(child < table.high)
    if len(up) == 1:
        down = down[down != up[0]]
    if len(down) == 0 or len(up) == 0:
        return False
    d = down[rng.integers(len(down))]
    up = up[up != d]
    child[d] -= 1
    child[up[rng.integers(len(up))]] += 1
    return True


def evolve(table: Levels, fitness: Callable, *, generations: int, offspring: int,
           survivors: Sequence[int], tokens: Sequence[int], seed: int = 0,
           progress: bool = False) -> SearchResult:
    """EvoPress's (1 + offspring) search with staged selection, from uniform (all levels 0).

    Args:
        table: The level table (:func:`level_table`).
        fitness: ``fitness(levels, sample: SampleSpec) -> float`` or ``fitness(levels)``; lower
            is better. ``levels`` is a read-only int array, one level per unit.
        generations: Generations (official 400).
        offspring: Unique children per generation, each ``min(U{1,3}, U{1,3})`` switches away.
        survivors: Candidates kept after each stage (official 8, 2, 1).
        tokens: Calibration tokens per stage (official 2,048, 16,384, 65,536).
        seed: Seed of the numpy Generator; equal seeds give equal searches.
        progress: Print one line per generation to stderr.
    """
    if len(survivors) != len(tokens) or not survivors:
        raise UserError("survivors and tokens need one entry per selection stage")
    if min(min(survivors), min(tokens), offspring) < 1 or generations < 0:
        raise UserError("offspring, survivors and tokens must be >= 1, generations >= 0")
    if not _switch(np.zeros(len(table.sizes), dtype=np.int64), table, np.random.default_rng(0)):
        raise UserError("no level switch is possible (target 0 or step too large for the units)")
    rng, sampled = np.random.default_rng(seed), _takes_sample(fitness)
    parent = np.zeros(len(table.sizes), dtype=np.int64)
    result = SearchResult(parent, float("nan"))
    for gen in range(generations):
        children, seen = [], {tuple(parent)}
        for _ in range(100 * offspring + 1000):
            if len(children) == offspring:
                break
            child = parent.copy()
            for _ in range(min(rng.integers(1, 4), rng.integers(1, 4))):
                _switch(child, table, rng)
            if tuple(child) not in seen:
                seen.add(tuple(child))
                children.append(child)
        candidates, scores = children, []
        for stage, (keep, budget) in enumerate(zip(survivors, tokens)):
            if stage == len(survivors) - 1:
                candidates = candidates + [parent]  # elitist: the parent meets the last stage
            spec = SampleSpec(int(rng.integers(2**63 - 1)), int(budget), gen, stage)
            scores = []
            for cand in candidates:
                view = cand.copy()
                view.flags.writeable = False
                scores.append(float(fitness(view, spec) if sampled else fitness(view)))
            result.calls += len(candidates)
            result.tokens += len(candidates) * int(budget)
            best = np.argsort(scores, kind="stable")[:keep]
            candidates, scores = [candidates[i] for i in best], [scores[i] for i in best]
        parent = candidates[0]
        result.history.append(scores[0])
        result.trajectory.append(parent.copy())
        if progress:
            print(f"evopress generation {gen + 1}/{generations}: fitness {scores[0]:.4g}",
                  file=sys.stderr, flush=True)
    result.levels, result.fitness = parent, (result.history or [float("nan")])[-1]
    return result


#: the official script (scripts/run_prune_search.sh), written for Mistral-7B (224 linear units)
OFFICIAL = {"units": 224, "calib_tokens": 524_288, "generations": 400, "offspring": 64,
            "survivors": (8, 2, 1), "tokens": (2_048, 16_384, 65_536)}


def scaled_settings(num_units: int, calib_tokens: int) -> dict:
    """The official search settings scaled to ``num_units`` units and ``calib_tokens`` tokens.

    Rule: generations proportional to the units, ``max(1, round(400 * num_units / 224))``;
    offspring (64) and survivors (8, 2, 1) unchanged; each stage's tokens the official fraction
    of the calibration tokens (1/256, 1/32, 1/8 of 524,288), ``max(1, calib_tokens * k // 524288)``
    for k the official stage tokens. ``scaled_settings(224, 524288)`` gives the official values.
    Returns keyword arguments of :func:`evolve`.
    """
    if num_units < 1 or calib_tokens < 1:
        raise UserError("scaled_settings needs num_units >= 1 and calib_tokens >= 1")
    return {"generations": max(1, round(OFFICIAL["generations"] * num_units / OFFICIAL["units"])),
            "offspring": OFFICIAL["offspring"], "survivors": OFFICIAL["survivors"],
            "tokens": tuple(max(1, calib_tokens * k // OFFICIAL["calib_tokens"])
                            for k in OFFICIAL["tokens"])}
