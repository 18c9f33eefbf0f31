"""Tests for rdprune.methods.baselines: the pruning baselines (how many weights each layer loses)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from rdprune.methods.baselines import (
    _lamp_scores,
    erk,
    global_magnitude,
    lamp,
    uniform,
    uniform_plus,
)
from rdprune.errors import UserError
from rdprune.methods.registry import info, methods
from rdprune.pruning.masks import magnitude_mask, num_pruned

#: the pure baselines, as the registry declares them
BASELINES = {n: e.fn for n, e in methods().items() if e.family == "baseline"}

# Shapes like a small CNN: stem conv, convs, a depthwise conv, a 1x1 shortcut, the classifier.
SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (32, 1, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3),
          (64, 32, 1, 1), (10, 64)]
# Small enough for the O(n^2) reference LAMP loop.
SMALL_SHAPES = [(8, 3, 3, 3), (16, 8, 3, 3), (16, 1, 3, 3), (10, 16)]
# Fraction of each layer zeroed beforehand (a partially pruned model).
ZERO_FRACTIONS = [0.0, 0.3, 0.1, 0.6, 0.5, 0.2, 0.4]
SPARSITIES = [0.0, 0.3, 0.5, 0.9, 0.98]


def make_weights(shapes, seed=0, zero_fractions=None):
    """Random normal weights with (optionally) a random subset of each layer set to exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for i, shape in enumerate(shapes):
        w = torch.randn(shape, generator=gen)
        if zero_fractions is not None:
            n = w.numel()
            idx = torch.randperm(n, generator=gen)[: int(zero_fractions[i] * n)]
            w.view(-1)[idx] = 0.0
        weights.append(w)
    return weights


def removed_by_masks(weights, sparsities):
    """Per-layer number of weights the magnitude masks remove, and the masks themselves."""
    masks = [magnitude_mask(w, s) for w, s in zip(weights, sparsities)]
    return [int((~m).sum()) for m in masks], masks


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the OpenMP
    pool's spinning makes every op 10-50x slower; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[None, ZERO_FRACTIONS], ids=["dense", "prezeroed"])
def weights(request):
    return make_weights(SHAPES, seed=1, zero_fractions=request.param)


# --- contract shared by every baseline ---------------------------------------------------------


def test_registry_names():
    assert set(BASELINES) == {"uniform", "uniform_plus", "global_magnitude", "lamp", "erk"}
    assert info("lamp").fn is lamp
    with pytest.raises(UserError, match="choose one of"):
        info("random")


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_meets_global_target(name, sparsity, weights):
    out = BASELINES[name](weights, sparsity)
    assert len(out) == len(weights)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in out)
    removed, _ = removed_by_masks(weights, out)
    assert removed == pruned_counts(weights, out)
    target = num_pruned(sum(w.numel() for w in weights), sparsity)
    if name in ("global_magnitude", "lamp"):
        assert sum(removed) == target
    else:
        assert abs(sum(removed) - target) <= len(weights)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_pure(name, weights):
    weights = weights + [torch.randn(12, 20).t()]  # a non-contiguous view too
    before = [w.clone() for w in weights]
    BASELINES[name](weights, 0.7)
    for w, b in zip(weights, before):
        assert torch.equal(w, b)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), float("inf"), "0.5", True, None])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_bad_sparsity(name, bad):
    with pytest.raises(ValueError):
        BASELINES[name](make_weights(SHAPES[:3]), bad)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_bad_weights(name):
    with pytest.raises(ValueError):
        BASELINES[name]([], 0.5)
    with pytest.raises(ValueError):
        BASELINES[name]([torch.randn(4, 4), torch.empty(0, 3)], 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["global_magnitude", "lamp"])
def test_non_finite_weights(name, bad):
    with pytest.raises(ValueError, match="nan or inf"):
        BASELINES[name]([torch.randn(4, 4), torch.tensor([[1.0, bad, -2.0]])], 0.5)


def pruned_counts(weights, sparsities) -> list[int]:
    """Weights each layer loses at the given per-layer sparsities (what the masks will remove)."""
    assert len(sparsities) == len(weights)
    return [num_pruned(w.numel(), float(s)) for w, s in zip(weights, sparsities)]


def test_per_layer_counts_round_half_up():
    ws = [torch.zeros(10), torch.zeros(3)]
    assert pruned_counts(ws, [0.25, 0.5]) == [3, 2]  # round half up: 2.5 -> 3, 1.5 -> 2


# --- uniform and uniform+ ----------------------------------------------------------------------


def test_uniform():
    assert uniform(make_weights(SHAPES), 0.37) == [0.37] * len(SHAPES)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_uniform_plus_structure(sparsity):
    out = uniform_plus(make_weights(SHAPES), sparsity)
    assert out[0] == 0.0
    assert out[-1] <= 0.8
    assert len(set(out[1:-1])) == 1
    if out[1] <= 0.8:
        assert out[-1] == out[1]  # cap not binding: the last layer shares the common sparsity


def test_uniform_plus_cap_binds():
    ws = make_weights(SHAPES)
    out = uniform_plus(ws, 0.95)
    assert out[-1] == 0.8 and out[1] > 0.8
    assert magnitude_mask(ws[-1], out[-1]).sum() == 128  # keeps exactly 20% of 640


def test_uniform_plus_cap_keeps_a_fifth_after_rounding():
    # 7 weights: 80% would round to 6 removed (keeps 1 < 1.4); the cap is floor(5.6) / 7.
    ws = [torch.randn(50), torch.randn(1000), torch.randn(7)]
    out = uniform_plus(ws, 0.9)
    assert out[-1] == 5 / 7
    assert num_pruned(7, out[-1]) == 5


def test_uniform_plus_infeasible():
    ws = make_weights(SHAPES)
    with pytest.raises(UserError) as err:
        uniform_plus(ws, 0.995)
    msg = str(err.value)
    assert "\n" not in msg
    m = re.fullmatch(
        r"uniform_plus cannot reach sparsity 0\.995: with the first layer dense and the last "
        r"keeping 20%, at most (0\.\d{4}) is possible",
        msg,
    )
    assert m, msg
    n_first, n_last = ws[0].numel(), ws[-1].numel()
    total = sum(w.numel() for w in ws)
    best = float(m.group(1))
    assert best == math.floor((total - n_first - math.ceil(n_last / 5)) / total * 1e4) / 1e4
    uniform_plus(ws, best)  # the advertised maximum is reachable


def test_uniform_plus_few_layers():
    assert uniform_plus([torch.randn(5, 5)], 0.0) == [0.0]
    with pytest.raises(UserError, match="single prunable layer"):
        uniform_plus([torch.randn(5, 5)], 0.5)
    out = uniform_plus([torch.randn(100), torch.randn(300)], 0.5)  # 200 of 300 from the last
    assert out == [0.0, 200 / 300]
    with pytest.raises(UserError, match="at most 0.6000"):
        uniform_plus([torch.randn(100), torch.randn(300)], 0.7)


# --- global magnitude --------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.05, 0.3, 0.9, 0.98])  # 0.05 < zero share: ties at 0
def test_global_magnitude_keeps_globally_largest(sparsity, weights):
    out = global_magnitude(weights, sparsity)
    _, masks = removed_by_masks(weights, out)
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = num_pruned(flat.numel(), sparsity)
    expected = torch.ones(flat.numel(), dtype=torch.bool)
    expected[torch.argsort(flat, stable=True)[:k]] = False
    assert torch.equal(torch.cat([m.flatten() for m in masks]), expected)


# --- LAMP --------------------------------------------------------------------------------------


def reference_lamp_counts(weights, sparsity):
    """Per-layer pruned counts straight from the definition, with plain Python loops."""
    scored = []  # (score, layer), in layer order so a stable sort breaks ties by layer
    for layer, w in enumerate(weights):
        vals = [float(v) for v in w.flatten()]
        for x in vals:
            # sum over v >= u in the ascending |w| order (no ties among non-zero random normals)
            denom = sum(y * y for y in vals if abs(y) >= abs(x))
            scored.append((x * x / denom if denom > 0 else 0.0, layer))
    order = sorted(range(len(scored)), key=lambda i: scored[i][0])
    counts = [0] * len(weights)
    for i in order[: num_pruned(len(scored), sparsity)]:
        counts[scored[i][1]] += 1
    return counts


@pytest.mark.parametrize("zeros", [None, [0.2, 0.0, 0.5, 0.3]], ids=["dense", "prezeroed"])
@pytest.mark.parametrize("sparsity", [0.05, 0.1, 0.5, 0.9, 0.98])  # 0.05: ties among zeros
def test_lamp_matches_definition(sparsity, zeros):
    ws = make_weights(SMALL_SHAPES, seed=2, zero_fractions=zeros)
    assert pruned_counts(ws, lamp(ws, sparsity)) == reference_lamp_counts(ws, sparsity)


def test_lamp_scores_definition():
    w = torch.tensor([0.0, -3.0, 1.0, 2.0, 0.0])
    # ascending |w|: 0, 0, 1, 2, 3 -> suffix sums of squares 14, 14, 14, 13, 9
    expected = np.array([0.0, 0.0, 1 / 14, 4 / 13, 1.0])
    scores = _lamp_scores(w, 0)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-15, atol=0)
    assert np.array_equal(_lamp_scores(torch.zeros(3), 0), np.zeros(3))
    # what lamp() removes follows these scores: with a second layer [1, 1, 1, 1] (scores 1/4,
    # 1/3, 1/2, 1), the global order is 0 0 1/14 (first layer) 1/4 (second) 4/13 (first) 1/3 1/2
    # (second): 1/4 < 4/13 < 1/3, where magnitudes alone would tie 1 with 1, 1, 1, 1
    ws = [w, torch.ones(4)]
    removed = [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (4, 1), (4, 2), (4, 3)]
    for k, (a, b) in enumerate(removed):
        assert lamp(ws, k / 9) == [a / 5, b / 4], k
    # zeros score 0 (0/0 := 0): an all-zero layer goes before any non-zero weight
    assert lamp([torch.zeros(3), torch.tensor([1.0, 2.0])], 3 / 5) == [1.0, 0.0]


@pytest.mark.parametrize("sparsity", [0.9, 0.98, 0.999])
def test_lamp_never_empties_a_layer(sparsity):
    # A tiny layer of large weights next to a big layer of small ones.
    ws = [torch.randn(3, 3) * 10, torch.randn(64, 64, 3, 3) * 0.01, torch.randn(2, 2)]
    out = lamp(ws, sparsity)
    for w, s in zip(ws, out):
        mask = magnitude_mask(w, s)
        assert mask.any()
        assert mask.flatten()[w.abs().flatten().argmax()]  # the largest weight has score 1


# --- ERK ---------------------------------------------------------------------------------------


def erk_ratio(w):
    return sum(w.shape) / w.numel()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9, 0.98])
def test_erk_density_ratios(sparsity):
    ws = make_weights(SHAPES) + [torch.randn(4, 2)]  # tiny layer: (4 + 2) / 8, forced dense
    out = erk(ws, sparsity)
    dense = [i for i, s in enumerate(out) if s == 0.0]
    sparse = [i for i, s in enumerate(out) if s > 0.0]
    assert len(ws) - 1 in dense and sparse
    eps = (1 - out[sparse[0]]) / erk_ratio(ws[sparse[0]])
    for i in sparse:
        for j in sparse:
            got = (1 - out[i]) / (1 - out[j])
            assert got == pytest.approx(erk_ratio(ws[i]) / erk_ratio(ws[j]), rel=1e-9)
    for i in dense:
        assert out[i] == 0.0  # density exactly 1
        assert eps * erk_ratio(ws[i]) >= 1 - 1e-12  # it would have exceeded 1
    # The continuous allocation meets the target exactly before rounding.
    kept = sum((1 - s) * w.numel() for s, w in zip(out, ws))
    total = sum(w.numel() for w in ws)
    assert kept == pytest.approx(total - num_pruned(total, sparsity), abs=1e-6)


def test_erk_clipping_is_repeated():
    # At 0.5 the stem (16,3,3,3) and the tiny layer both end up dense, one of them only after the
    # other was clipped and eps re-solved.
    ws = make_weights(SHAPES) + [torch.randn(4, 2)]
    total = sum(w.numel() for w in ws)
    target_kept = total - num_pruned(total, 0.5)
    eps_unclipped = target_kept / sum(erk_ratio(w) * w.numel() for w in ws)
    out = erk(ws, 0.5)
    first_pass = {i for i, w in enumerate(ws) if eps_unclipped * erk_ratio(w) >= 1}
    dense = {i for i, s in enumerate(out) if s == 0.0}
    assert first_pass < dense  # more layers became dense after re-solving


def test_erk_zero_sparsity_is_dense():
    assert erk(make_weights(SHAPES), 0.0) == [0.0] * len(SHAPES)


# --- already-zero weights and iterative pruning ------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("name", ["global_magnitude", "lamp"])
def test_existing_zeros_stay_pruned(name, sparsity):
    ws = make_weights(SHAPES, seed=3, zero_fractions=ZERO_FRACTIONS)
    out = BASELINES[name](ws, sparsity)
    _, masks = removed_by_masks(ws, out)
    for w, c, m in zip(ws, pruned_counts(ws, out), masks):
        assert c >= int((w == 0).sum())  # per-layer sparsity >= the existing zero fraction
        assert not (m & (w == 0)).any()


@pytest.mark.parametrize("name", ["global_magnitude", "lamp"])
def test_iterative_rounds_never_unprune(name):
    ws = make_weights(SHAPES, seed=4)
    previous = [0] * len(ws)
    for t in range(1, 6):  # prune 20% of the remaining weights per round
        out = BASELINES[name](ws, 1 - 0.8**t)
        counts = pruned_counts(ws, out)
        assert all(c >= p for c, p in zip(counts, previous))
        ws = [w * magnitude_mask(w, s) for w, s in zip(ws, out)]
        assert [int((w == 0).sum()) for w in ws] == counts
        previous = counts
