"""EvoPress level table and evolutionary search (rdprune.methods.evolution), on toy fitnesses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rdprune.errors import UserError
from rdprune.methods.evolution import (SampleSpec, evolve, level_table, minibatch,
                                      scaled_settings)

SIZES = [101, 257, 999, 64, 33, 512]  # unequal units, S * n_i never an integer at S = 0.37


def global_count(sizes, target):
    return math.floor(target * sum(sizes) + 0.5)


def test_level_table_by_hand():
    # S = 0.5, step 20: S*n/step = 25, 2.5, 0.25 -> levels [-8, 8], [-2, 2], [0, 0]
    table = level_table([1000, 100, 10], 0.5, step=20)
    assert table.base.tolist() == [500, 50, 5]
    assert table.low.tolist() == [-8, -2, 0] and table.high.tolist() == [8, 2, 0]
    assert table.removed([3, -2, 0]).tolist() == [560, 10, 5]
    assert table.sparsities([3, -2, 0]) == [0.56, 0.1, 0.5]
    # default step: int(0.5 * min(S, 1 - S) / num_levels * median size) = int(0.25 / 8 * 100)
    assert level_table([1000, 100, 10], 0.5).step == 3


def test_base_is_largest_remainder_of_the_global_count():
    # 1.5 removed per unit: per-unit rounding gives 6 (or 6 with half-even), the global count is 5
    table = level_table([3, 3, 3], 0.5, step=1)
    assert table.total == global_count([3, 3, 3], 0.5) == 5
    assert sorted(table.base.tolist()) == [1, 2, 2]
    table = level_table(SIZES, 0.37, num_levels=4)
    exact = 0.37 * np.asarray(SIZES)
    assert table.total == global_count(SIZES, 0.37)
    assert np.all(np.abs(table.base - exact) < 1)
    removed_low = table.base + table.low * table.step
    removed_high = table.base + table.high * table.step
    assert np.all(removed_low >= 0) and np.all(removed_high <= np.asarray(SIZES))
    assert np.all(table.low <= 0) and np.all(table.high >= 0)
    assert np.all(-table.low <= 4) and np.all(table.high <= 4)


def test_every_evaluated_individual_meets_the_global_count_and_ranges():
    table = level_table(SIZES, 0.37, num_levels=3)
    target = global_count(SIZES, 0.37)
    weights = np.random.default_rng(1).normal(size=len(SIZES))
    seen = []

    def fitness(levels):
        levels = np.asarray(levels)
        seen.append(levels.copy())
        removed = table.base + levels * table.step  # independent of Levels.removed
        assert levels.sum() == 0 and removed.sum() == target
        assert np.all(levels >= table.low) and np.all(levels <= table.high)
        assert np.all(removed >= 0) and np.all(removed <= np.asarray(SIZES))
        return float(weights @ levels + 0.3 * (levels ** 2).sum())

    result = evolve(table, fitness, generations=15, offspring=10, survivors=(3, 1),
                    tokens=(1, 1), seed=3)
    assert len(seen) == result.calls and result.calls > 0
    assert table.removed(result.levels).sum() == target


def test_children_unique_and_differ_from_parent():
    table = level_table(SIZES, 0.37, num_levels=3)
    children: dict[int, list[tuple]] = {}

    def fitness(levels, sample: SampleSpec):
        if sample.stage == 0:
            children.setdefault(sample.generation, []).append(tuple(levels))
        return float(np.abs(levels - np.arange(len(SIZES)) % 3 + 1).sum())

    result = evolve(table, fitness, generations=12, offspring=9, survivors=(4, 2, 1),
                    tokens=(1, 2, 3), seed=0)
    assert sorted(children) == list(range(12))
    for gen, kids in children.items():
        parent = np.zeros(len(SIZES), int) if gen == 0 else result.trajectory[gen - 1]
        assert len(kids) == 9 and len(set(kids)) == 9
        for kid in kids:
            diff = np.asarray(kid) - parent
            assert diff.any() and diff.sum() == 0 and np.abs(diff).sum() <= 6  # 1 to 3 switches


def test_additive_fitness_reaches_the_exact_optimum():
    # 5 units; the 40-weight unit has levels -1..1 only, the others -2..2
    sizes = [200, 150, 40, 300, 120]
    table = level_table(sizes, 0.5, num_levels=2, step=15)
    assert table.low.tolist() == [-2, -2, -1, -2, -2] and table.high.tolist() == [2, 2, 1, 2, 2]
    rng = np.random.default_rng(7)
    curv, centre = rng.uniform(0.5, 2.0, 5), rng.uniform(-2.5, 2.5, 5)

    def cost(levels):
        return float((curv * (np.asarray(levels) - centre) ** 2).sum())

    ranges = [range(lo, hi + 1) for lo, hi in zip(table.low, table.high)]
    optimum = min(cost(v) for v in itertools.product(*ranges) if sum(v) == 0)
    result = evolve(table, cost, generations=40, offspring=8, survivors=(3, 1),
                    tokens=(1, 1), seed=0)
    assert result.fitness == pytest.approx(optimum)
    assert cost(result.levels) == pytest.approx(optimum)
    # elitism: the winner never gets worse, and never worse than uniform
    assert all(b <= a + 1e-12 for a, b in zip(result.history, result.history[1:]))
    assert result.history[0] <= cost(np.zeros(5, int))


@pytest.mark.parametrize("survivors,tokens", [((3, 2, 1), (5, 20, 80)), ((1,), (7,)),
                                              ((4, 1), (2, 9))])
def test_calls_and_tokens_match_the_settings(survivors, tokens):
    generations, offspring = 4, 6
    table = level_table(SIZES, 0.37)
    calls, spent = [0], [0]

    def fitness(levels, sample):
        calls[0] += 1
        spent[0] += sample.tokens
        return float(levels @ np.arange(len(SIZES)))

    result = evolve(table, fitness, generations=generations, offspring=offspring,
                    survivors=survivors, tokens=tokens)
    # candidates per stage: all children, then the previous stage's survivors; +1 parent at last
    counts = [offspring] + list(survivors[:-1])
    counts[-1] += 1
    assert result.calls == calls[0] == generations * sum(counts)
    assert result.tokens == spent[0] == generations * sum(c * t for c, t in zip(counts, tokens))


def test_deterministic_given_seed():
    table = level_table(SIZES, 0.37)

    def run(seed):
        samples = []

        def fitness(levels, sample):
            samples.append(sample)
            return float(np.sin(levels * (1 + np.arange(len(SIZES)))).sum() + sample.seed % 7)

        result = evolve(table, fitness, generations=6, offspring=5, survivors=(2, 1),
                        tokens=(3, 4), seed=seed)
        return [t.tolist() for t in result.trajectory], result.history, samples

    assert run(11) == run(11)
    assert run(11)[0] != run(12)[0]


def test_level_table_errors_are_one_line():
    for args, kwargs in [(([10, 20], 1.0), {}), (([10, 20], -0.1), {}), (([], 0.5), {}),
                         (([10, 0], 0.5), {}), (([10, 20], 0.5), {"step": 0}),
                         (([10, 20], 0.5), {"step": -3})]:
        with pytest.raises(ValueError) as err:
            level_table(*args, **kwargs)
        assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    table = level_table([10, 20], 0.5, step=2)
    with pytest.raises(UserError):
        table.removed([99, -99])
    with pytest.raises(UserError, match="no level switch"):  # S = 0: nothing can go down
        evolve(level_table([10, 20], 0.0), lambda lv: 0.0, generations=1, offspring=1,
               survivors=(1,), tokens=(1,))


def test_minibatch_takes_exactly_the_tokens():
    lengths = [10, 7, 3, 12]
    spec = SampleSpec(seed=5, tokens=15, generation=0, stage=0)
    taken = minibatch(lengths, spec)
    assert sum(k for _, k in taken) == 15 and len({i for i, _ in taken}) == len(taken)
    assert all(k == lengths[i] for i, k in taken[:-1]) and taken[-1][1] <= lengths[taken[-1][0]]
    assert minibatch(lengths, spec) == taken
    with pytest.raises(UserError):
        minibatch(lengths, SampleSpec(seed=5, tokens=33, generation=0, stage=0))


def test_scaled_settings():
    assert scaled_settings(224, 524_288) == {"generations": 400, "offspring": 64,
                                             "survivors": (8, 2, 1),
                                             "tokens": (2_048, 16_384, 65_536)}
    small = scaled_settings(12, 100_000)
    assert small["generations"] == round(400 * 12 / 224) == 21
    assert small["tokens"] == (100_000 // 256, 100_000 // 32, 100_000 // 8)
    assert scaled_settings(1, 10)["tokens"] == (1, 1, 1)
    assert scaled_settings(1, 10)["generations"] == 2
