"""The knapsack solver against brute force and an independent slow DP (no timing asserts here)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rdprune.methods.rd.dp import InfeasibleBudgetError, solve, total
from rdprune.errors import UserError

SEEDS = range(200)

# Weight counts of torchvision ResNet-50's 54 Conv2d/Linear layers, sorted (25,502,912 in all).
RESNET50_SIZES = (
    [4096, 9408] + [16384] * 6 + [32768] + [36864] * 3 + [65536] * 7 + [131072] * 2
    + [147456] * 4 + [262144] * 11 + [524288] * 2 + [589824] * 6 + [1048576] * 5
    + [2048000, 2097152] + [2359296] * 3
)


# ---------------------------------------------------------------- references


def brute(d, c, budget, allowed=None):
    """Least total distortion over ALL combinations with total cost <= budget (inf if none)."""
    n_layers, k = d.shape
    combos = np.array(list(itertools.product(range(k), repeat=n_layers)))
    rows = np.arange(n_layers)
    dist = d[rows, combos].sum(axis=1)
    cost = c[rows, combos].sum(axis=1)
    feasible = cost <= budget
    if allowed is not None:
        feasible &= allowed[rows, combos].all(axis=1)
    return dist[feasible].min() if feasible.any() else math.inf


def slow_exact(d, c):
    """Independent exact DP: ``f[b]`` = least distortion with total cost AT MOST b, every b.

    Full-width table, layers in model order, no option filtering. Returns ``f`` for budgets
    ``0..sum of max costs`` (inf where nothing fits).
    """
    c = c.astype(np.int64)
    top = int(c.max(axis=1).sum())
    f = np.zeros(top + 1)
    for layer in range(d.shape[0]):
        new = np.full(top + 1, np.inf)
        for k in range(d.shape[1]):
            ck = int(c[layer, k])
            new[ck:] = np.minimum(new[ck:], f[: top + 1 - ck] + d[layer, k])
        f = new
    return f


def random_instance(rng, integer_costs=True, max_cost=20):
    """L in 1..5, K in 1..6; dyadic distortions (sums are exact in float64), some negative."""
    n_layers, k = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    d = rng.integers(-200, 2000, size=(n_layers, k)) / 16.0
    if integer_costs:
        c = rng.integers(0, max_cost + 1, size=(n_layers, k)).astype(float)
    else:  # non-integers on a 2**-20 grid, so that float sums are exact too
        c = np.round(rng.uniform(0, max_cost, size=(n_layers, k)) * 2**20) / 2**20
    return d, c


def random_budget(rng, c):
    """Anything from just below the cheapest to above the dearest combination, or exactly one."""
    lo, hi = c.min(axis=1).sum(), c.max(axis=1).sum()
    pick = rng.random()
    if pick < 0.25:  # exactly the cost of some combination
        return float(c[np.arange(len(c)), rng.integers(0, c.shape[1], len(c))].sum())
    if pick < 0.3:
        return float(hi + 1.0)
    return float(np.floor(rng.uniform(lo, hi + 1)) if pick < 0.65 else rng.uniform(lo, hi))


def exact_cost(c, choice):
    return sum(Fraction(float(c[layer, k])) for layer, k in enumerate(choice))


def check_feasible(c, choice, budget, allowed=None):
    assert choice.shape == (c.shape[0],) and choice.dtype == np.int64
    assert ((choice >= 0) & (choice < c.shape[1])).all()
    assert exact_cost(c, choice) <= Fraction(float(budget))  # exact arithmetic, not float luck
    if allowed is not None:
        assert allowed[np.arange(len(choice)), choice].all()


# ---------------------------------------------------------------- brute force


@pytest.mark.parametrize("seed", SEEDS)
def test_integer_costs_exact(seed):
    rng = np.random.default_rng(seed)
    d, c = random_instance(rng)
    budget = random_budget(rng, c)
    opt = brute(d, c, budget)
    if math.isinf(opt):
        with pytest.raises(InfeasibleBudgetError):
            solve(d, c, budget)
        return
    choice = solve(d, c, budget)
    check_feasible(c, choice, budget)
    assert total(d, c, choice)[0] == opt  # dyadic distortions: exact equality


@pytest.mark.parametrize("seed", SEEDS)
def test_integer_costs_float_distortion(seed):
    rng = np.random.default_rng(10_000 + seed)
    d, c = random_instance(rng)
    d = rng.normal(size=d.shape) * 10.0 ** rng.integers(-3, 4)
    budget = c.max(axis=1).sum() * rng.uniform(0.3, 1.0) + c.min(axis=1).sum()
    opt = brute(d, c, budget)
    choice = solve(d, c, budget)
    check_feasible(c, choice, budget)
    assert total(d, c, choice)[0] == pytest.approx(opt, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_binned_integer_costs_within_tol(seed):
    rng = np.random.default_rng(20_000 + seed)
    d, c = random_instance(rng, max_cost=1000)
    budget = random_budget(rng, c)
    tol = float(rng.choice([0.01, 0.1, 0.3]))
    if math.isinf(brute(d, c, budget)):
        with pytest.raises(InfeasibleBudgetError):
            solve(d, c, budget, tol=tol, max_table=0)
        return
    choice = solve(d, c, budget, tol=tol, max_table=0)  # max_table=0: always bin
    check_feasible(c, choice, budget)
    got = total(d, c, choice)[0]
    assert brute(d, c, budget) <= got <= brute(d, c, budget * (1 - tol))


@pytest.mark.parametrize("seed", SEEDS)
def test_real_costs_within_tol(seed):
    rng = np.random.default_rng(30_000 + seed)
    d, c = random_instance(rng, integer_costs=False, max_cost=10)
    budget = random_budget(rng, c)
    tol = float(rng.choice([1e-6, 1e-3, 0.1, 0.3]))
    if math.isinf(brute(d, c, budget)):
        with pytest.raises(InfeasibleBudgetError):
            solve(d, c, budget, tol=tol)
        return
    choice = solve(d, c, budget, tol=tol)
    check_feasible(c, choice, budget)
    got = total(d, c, choice)[0]
    assert brute(d, c, budget) <= got <= brute(d, c, budget * (1 - tol))


@pytest.mark.parametrize("seed", range(50))
def test_arbitrary_real_costs_never_over_budget(seed):
    rng = np.random.default_rng(40_000 + seed)
    n_layers, k = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    d = rng.normal(size=(n_layers, k))
    c = rng.uniform(0, 1, size=(n_layers, k)) * 10.0 ** rng.integers(-5, 6)
    combo = rng.integers(0, k, n_layers)
    budget = math.fsum(c[np.arange(n_layers), combo])  # exactly (rounded) one combination
    if exact_cost(c, combo) > Fraction(budget):
        budget = float(np.nextafter(budget, np.inf))
    choice = solve(d, c, budget)
    check_feasible(c, choice, budget)
    assert total(d, c, choice)[0] >= brute(d, c, budget) - 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_allowed_options(seed):
    rng = np.random.default_rng(50_000 + seed)
    d, c = random_instance(rng)
    allowed = rng.random(d.shape) < 0.6
    allowed[np.arange(len(d)), rng.integers(0, d.shape[1], len(d))] = True  # >= 1 per layer
    budget = random_budget(rng, c)
    opt = brute(d, c, budget, allowed)
    if math.isinf(opt):
        with pytest.raises(InfeasibleBudgetError):
            solve(d, c, budget, allowed)
        return
    choice = solve(d, c, budget, allowed)
    check_feasible(c, choice, budget, allowed)
    assert total(d, c, choice)[0] == opt


def test_allowed_monotone_sparsity():
    """Iterative pruning: a layer may only stay at or above its current grid index."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 6)
    sizes = np.array([10, 40, 25, 7])
    c = np.round(sizes[:, None] * (1 - grid)).astype(float)
    d = np.exp(3 * grid) * rng.uniform(1, 2, (4, 1))
    current = np.array([0, 3, 1, 5])
    allowed = np.arange(6)[None, :] >= current[:, None]
    budget = 30.0
    choice = solve(d, c, budget, allowed)
    assert (choice >= current).all()
    assert total(d, c, choice)[0] == pytest.approx(brute(d, c, budget, allowed), rel=1e-12)


# ---------------------------------------------------------------- infeasible


def test_infeasible_budget_one_line_message():
    c = np.array([[5.0, 3.0], [4.0, 2.0]])
    d = np.zeros((2, 2))
    with pytest.raises(InfeasibleBudgetError) as err:
        solve(d, c, 4.9)
    msg = str(err.value)
    assert "\n" not in msg and "4.9" in msg and "minimum achievable cost 5" in msg
    assert isinstance(err.value, UserError)
    assert (solve(d, c, 5.0) == [1, 1]).all()  # exactly the minimum is fine


def test_infeasible_because_of_allowed():
    c = np.array([[5.0, 3.0], [4.0, 2.0]])
    d = np.zeros((2, 2))
    with pytest.raises(InfeasibleBudgetError, match="minimum achievable cost 7"):
        solve(d, c, 6.0, np.array([[True, True], [True, False]]))
    with pytest.raises(InfeasibleBudgetError, match="layer 1 has no allowed option") as err:
        solve(d, c, 100.0, np.array([[True, True], [False, False]]))
    assert "\n" not in str(err.value)


def test_negative_budget_is_infeasible():
    with pytest.raises(InfeasibleBudgetError):
        solve(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)


# ---------------------------------------------------------------- binning path


@pytest.mark.parametrize("seed", range(5))
def test_binning_against_slow_exact_dp(seed):
    """Moderate instance (20 layers, costs up to 20k): binned vs an independent exact DP."""
    rng = np.random.default_rng(60_000 + seed)
    n_layers, k = 20, 21
    grid = np.linspace(0, 1, k)
    sizes = rng.integers(100, 20_000, n_layers)
    c = (sizes[:, None] - np.floor(grid * sizes[:, None] + 0.5)).astype(float)
    d = rng.uniform(0.1, 1, (n_layers, 1)) * (np.exp(rng.uniform(1, 6, (n_layers, 1)) * grid) - 1)
    d = np.round(d * 2**20) / 2**20
    f = slow_exact(d, c)
    budget = float(np.floor(sizes.sum() * rng.uniform(0.1, 0.7)))
    tol = 1e-3
    choice = solve(d, c, budget, tol=tol, max_table=0)
    check_feasible(c, choice, budget)
    got = total(d, c, choice)[0]
    assert f[int(budget)] <= got <= f[math.floor(budget * (1 - tol))]
    assert total(d, c, solve(d, c, budget))[0] == f[int(budget)]  # default: exact here


def test_resnet50_budget_is_binned_and_good():
    """25.5M-weight budget: binned, never over, and no worse than any solution under B(1 - tol)."""
    rng = np.random.default_rng(7)
    sizes = np.array(RESNET50_SIZES)
    assert sizes.sum() == 25_502_912
    grid = np.linspace(0, 1, 101)
    c = (sizes[:, None] - np.floor(grid * sizes[:, None] + 0.5)).astype(float)
    d = rng.uniform(0.1, 1, (54, 1)) * (np.exp(rng.uniform(2, 8, (54, 1)) * grid) - 1)
    for target in (0.5, 0.9):
        budget = float(sizes.sum() - np.floor(target * sizes.sum() + 0.5))
        choice = solve(d, c, budget)
        check_feasible(c, choice, budget)
        got = total(d, c, choice)[0]
        # Any solution of cost <= B(1 - tol) bounds the result from above: uniform, and greedy.
        inner = budget * (1 - 1e-3)
        uniform = min(j for j in range(101) if c[:, j].sum() <= inner)
        assert got <= d[:, uniform].sum()
        assert got <= total(d, c, greedy(d, c, inner))[0]


def greedy(d, c, budget):
    """Start from the cheapest option per layer; buy the best distortion drop per unit of cost."""
    choice = np.full(len(d), d.shape[1] - 1)
    spent = c[np.arange(len(d)), choice].sum()
    while True:
        best, gain = None, 0.0
        for layer, k in enumerate(choice):
            if k == 0:
                continue
            extra = c[layer, k - 1] - c[layer, k]
            drop = d[layer, k] - d[layer, k - 1]
            if spent + extra <= budget and drop / max(extra, 1e-12) > gain:
                best, gain = layer, drop / max(extra, 1e-12)
        if best is None:
            return choice
        spent += c[best, choice[best] - 1] - c[best, choice[best]]
        choice[best] -= 1


# ---------------------------------------------------------------- edge cases


def test_budget_equal_to_a_combination_cost():
    # Distortion falls fast with cost: the best solution spends the whole budget, exactly.
    c = np.array([[0.0, 3.0, 7.0], [0.0, 5.0, 11.0], [2.0, 4.0, 13.0]])
    d = -(c**2)
    budget = 3.0 + 11.0 + 4.0
    choice = solve(d, c, budget)
    check_feasible(c, choice, budget)
    assert total(d, c, choice) == (brute(d, c, budget), budget)


def test_zero_cost_options_and_zero_budget():
    d = np.array([[3.0, 1.0, 2.0], [0.5, 0.5, -1.0]])
    assert solve(d, np.zeros((2, 3)), 0.0).tolist() == [1, 2]
    c = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    assert solve(d, c, 0.0).tolist() == [2, 2]


def test_single_option_per_layer():
    d, c = np.array([[1.0], [2.0]]), np.array([[3.0], [4.0]])
    assert solve(d, c, 7.0).tolist() == [0, 0]
    with pytest.raises(InfeasibleBudgetError):
        solve(d, c, 6.0)


def test_negative_distortions():
    d = np.array([[-5.0, -1.0, -7.0], [-2.0, -3.0, 0.0]])
    c = np.array([[1.0, 2.0, 9.0], [1.0, 4.0, 0.0]])
    choice = solve(d, c, 9.0)
    assert total(d, c, choice)[0] == brute(d, c, 9.0) == -8.0
    assert solve(d, c, 2.0).tolist() == [0, 0]


def test_everything_fits_takes_best_per_layer():
    rng = np.random.default_rng(1)
    d, c = rng.normal(size=(6, 9)), rng.integers(0, 50, (6, 9)).astype(float)
    assert (solve(d, c, 1e9) == d.argmin(axis=1)).all()


def test_ties_prefer_lower_cost_then_lower_index():
    d = np.zeros((3, 4))
    c = np.array([[4.0, 3.0, 2.0, 2.0], [1.0, 1.0, 5.0, 6.0], [7.0, 0.0, 0.0, 0.0]])
    assert solve(d, c, 100.0).tolist() == [2, 0, 1]
    again = solve(d, c, 100.0, tol=0.5, max_table=0)
    assert again.tolist() == [2, 0, 1]


def test_ties_across_layers():
    # Equal distortion 1: (1, 0) costs 1, (0, 1) costs 2 -> the cheaper total wins.
    d = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert solve(d, np.array([[0.0, 1.0], [0.0, 2.0]]), 2.0).tolist() == [1, 0]
    # Equal distortion and equal cost: scan order decides (the layer processed last, here layer 1,
    # keeps its cheaper option).
    assert solve(d, np.array([[0.0, 1.0], [0.0, 1.0]]), 1.0).tolist() == [1, 0]


@pytest.mark.parametrize("seed", SEEDS)
def test_real_costs_eager_to_overspend(seed):
    """Distortion falls with cost, so the solver is pushed against the budget from every side."""
    rng = np.random.default_rng(70_000 + seed)
    n_layers, k = int(rng.integers(2, 6)), int(rng.integers(2, 7))
    c = rng.uniform(0, 10, size=(n_layers, k))
    d = -c * rng.uniform(0.9, 1.1, size=(n_layers, k))
    budget = float(rng.uniform(c.min(axis=1).sum(), c.max(axis=1).sum()))
    tol = float(rng.choice([1e-3, 0.1, 0.3]))
    choice = solve(d, c, budget, tol=tol)
    check_feasible(c, choice, budget)
    got = total(d, c, choice)[0]
    assert brute(d, c, budget) - 1e-9 <= got <= brute(d, c, budget * (1 - tol)) + 1e-9


def test_cheapest_fallback_for_real_costs():
    # The only feasible solution is the cheapest one, whose cost is not a multiple of any bin.
    c = np.array([[0.1, 5.0], [0.2, 6.0]])
    d = np.array([[9.0, 0.0], [9.0, 0.0]])
    budget = 0.1 + 0.2
    choice = solve(d, c, budget)
    assert choice.tolist() == [0, 0]
    check_feasible(c, choice, budget)


def test_inputs_not_modified_and_array_likes():
    d = [[1.0, 0.0], [2.0, 0.5]]
    c = np.array([[0, 3], [0, 3]])
    c_before = c.copy()
    assert solve(d, c, np.int64(3)).tolist() in ([1, 0], [0, 1])
    assert (c == c_before).all()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(distortion=np.zeros(3), cost=np.zeros(3)),
        dict(distortion=np.zeros((0, 3)), cost=np.zeros((0, 3))),
        dict(distortion=np.zeros((2, 3)), cost=np.zeros((3, 2))),
        dict(distortion=np.array([[np.nan, 0.0]]), cost=np.zeros((1, 2))),
        dict(distortion=np.array([[np.inf, 0.0]]), cost=np.zeros((1, 2))),
        dict(distortion=np.zeros((1, 2)), cost=np.array([[-1.0, 0.0]])),
        dict(distortion=np.zeros((1, 2)), cost=np.array([[np.nan, 0.0]])),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), budget=np.nan),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), budget=[1.0]),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), tol=0.0),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), tol=1.0),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), allowed=np.ones((1, 2))),
        dict(distortion=np.zeros((1, 2)), cost=np.zeros((1, 2)), allowed=np.ones((2, 1), bool)),
    ],
)
def test_validation(kwargs):
    kwargs = {"budget": 1.0, **kwargs}
    with pytest.raises(ValueError):
        solve(**kwargs)


def test_max_table_must_be_non_negative():
    with pytest.raises(ValueError, match="max_table"):
        solve(np.zeros((1, 2)), np.zeros((1, 2)), 1.0, max_table=-1)


def test_tol_too_small_for_memory():
    c = np.array([[0.5, 3.7]] * 10)
    with pytest.raises(ValueError, match="larger tol"):
        solve(np.zeros((10, 2)), c, 30.0, tol=1e-9)


def test_total():
    d = np.array([[1.0, 2.0], [3.0, 4.0]])
    c = np.array([[5.0, 6.0], [7.0, 8.0]])
    assert total(d, c, [1, 0]) == (5.0, 13.0)
