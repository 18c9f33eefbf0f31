"""Tests for rdprune.methods.llm_baselines: OWL, ATP and AlphaPruning layer-wise sparsities.

The expected values are computed here independently: plain loops over blocks, and bisection
(not the module's breakpoint solver) wherever clipping makes the mean re-solved.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdprune.errors import UserError
from rdprune.methods.llm_baselines import (
    alpha_pruning,
    atp,
    atp_beta_grid,
    dlp,
    esd_alpha,
    owl,
    owl_outlier_ratio,
)
from rdprune.methods.registry import methods
from rdprune.pruning.masks import num_pruned
from rdprune.tasks.causal_lm import CausalLanguageModel

#: the block-wise LLM methods, as the registry declares them
LM_BASELINES = {n: e.fn for n, e in methods().items() if e.family == "llm"}
blocks_of = CausalLanguageModel().blocks

LLAMA_BLOCK = [(16, 16)] * 4 + [(40, 16), (40, 16), (16, 40)]  # q k v o gate up down
LLAMA = ([s for _ in range(4) for s in LLAMA_BLOCK], [b for b in range(4) for _ in range(7)])
UNEQUAL = (  # a LLaMA block, a GPT-2 block, a narrower LLaMA block, a 2-linear block
    LLAMA_BLOCK
    + [(48, 16), (16, 16), (64, 16), (16, 64)]
    + [(8, 8)] * 4 + [(24, 8), (24, 8), (8, 24)]
    + [(24, 24), (24, 24)],
    [0] * 7 + [1] * 4 + [2] * 7 + [3] * 2,
)
LAYOUTS = {"llama": LLAMA, "unequal": UNEQUAL}


def make(layout, seed=0):
    """Random weights of a layout, and Wanda-like scores with block b having b+1 outlier columns."""
    shapes, blocks = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    scores = []
    for w, b in zip(weights, blocks):
        norms = torch.rand(w.shape[1], generator=gen) + 0.5
        norms[: b + 1] *= 30.0 * (1 + b)
        scores.append(w.abs() * norms)
    return weights, blocks, scores


def block_sizes(weights, blocks):
    sizes = [0] * (max(blocks) + 1)
    for w, b in zip(weights, blocks):
        sizes[b] += w.numel()
    return sizes


def bisect(f, lo, hi, target, iters=200):
    """x in [lo, hi] with f(x) = target, f non-decreasing."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def check_target(weights, result, s):
    """In [0, 1]; weighted mean S; masks remove num_pruned(N, S) to within one weight per layer."""
    assert len(result) == len(weights) and all(isinstance(x, float) for x in result)
    assert all(0.0 <= x <= 1.0 for x in result)
    sizes = [w.numel() for w in weights]
    assert sum(n * x for n, x in zip(sizes, result)) / sum(sizes) == pytest.approx(s, abs=1e-12)
    removed = sum(num_pruned(n, x) for n, x in zip(sizes, result))
    assert abs(removed - num_pruned(sum(sizes), s)) <= len(weights)


def per_block(result, blocks):
    """One value per block (asserting every linear of a block shares it)."""
    values = {}
    for x, b in zip(result, blocks):
        assert values.setdefault(b, x) == x
    return [values[b] for b in range(len(values))]


# --- blocks_of ------------------------------------------------------------------------------------


def test_blocks_of_llama_and_gpt2_names():
    parts = ("self_attn.q_proj", "mlp.down_proj")
    llama = [f"model.layers.{i}.{p}" for i in (0, 3, 12) for p in parts]
    assert blocks_of(llama) == [0, 0, 3, 3, 12, 12]
    gpt2 = ["transformer.h.0.attn.c_attn", "transformer.h.3.mlp.c_proj", "h.11.attn.c_proj"]
    assert blocks_of(gpt2) == [0, 3, 11]
    assert blocks_of(["vit.blocks.7.mlp.fc1", "model.decoder.layers.5.fc2"]) == [7, 5]


@pytest.mark.parametrize(
    "name", ["lm_head", "model.embed_tokens", "model.layers.q_proj", "heads.2.x"]
)
def test_blocks_of_rejects_names_without_a_block(name):
    with pytest.raises(UserError, match="decoder block"):
        blocks_of(["model.layers.0.mlp.up_proj", name])


@pytest.mark.parametrize("blocks", [[1, 1, 2], [0, 2, 2], [0, 1, 0], [0, 0]])
def test_blocks_must_run_from_zero_in_order(blocks):
    weights = [torch.ones(2, 2)] * 3
    for fn, extra in [(atp, {"beta": 0.0}), (alpha_pruning, {"alphas": [2.0] * 3})]:
        with pytest.raises(ValueError):
            fn(weights, 0.5, blocks=blocks, **extra)


# --- OWL ------------------------------------------------------------------------------------------


def test_owl_outlier_ratio_hand_made():
    a = torch.tensor([1.0] * 9 + [20.0])
    b = torch.tensor([10.0] * 10)
    # one mean over the concatenation: 129 / 20 = 6.45, threshold 9.675 -> 20 and the ten 10s
    assert owl_outlier_ratio([a, b], 1.5) == pytest.approx(55.0)
    # (per-tensor thresholds would give 1 of 20 = 5%)
    assert owl_outlier_ratio([a], 1.5) == pytest.approx(10.0)
    # strict: mean 1.25, threshold exactly 5 -> the 5 is not an outlier
    c = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    assert owl_outlier_ratio([c], 4.0) == 0.0
    assert owl_outlier_ratio([c], 3.9) == pytest.approx(25.0)


def hand_scores():
    """Three 20-entry blocks with outlier ratios 0%, 5% and 10% at m = 5."""
    ones = torch.ones(20)
    one = ones.clone()
    one[7] = 100.0  # mean 5.95, threshold 29.75
    two = ones.clone()
    two[[3, 11]] = 100.0  # mean 10.9, threshold 54.5
    return [s.reshape(4, 5) for s in (ones, one, two)]


def test_owl_maps_hand_made_ratios():
    scores = hand_scores()
    assert [owl_outlier_ratio([s], 5.0) for s in scores] == pytest.approx([0.0, 5.0, 10.0])
    weights = [torch.randn(4, 5) for _ in range(3)]
    result = owl(weights, 0.6, blocks=[0, 1, 2], scores=scores, m=5.0, lam=0.08)
    # r = 0, lam, 2 lam; mean(r) = lam: more outliers -> lower sparsity
    assert result == pytest.approx([0.68, 0.6, 0.52], abs=1e-12)
    check_target(weights, result, 0.6)


def reference_owl(weights, blocks, scores, s, m, lam):
    """OWL's ratios and mapping with numpy, block by block; bisection on the shift if clipped."""
    sizes = block_sizes(weights, blocks)
    ratios = []
    for b in range(len(sizes)):
        v = np.concatenate([sc.double().numpy().ravel()
                            for sc, bb in zip(scores, blocks) if bb == b])
        ratios.append(100.0 * np.sum(v > m * v.mean()) / v.size)
    ratios = np.array(ratios)
    r = (ratios - ratios.min()) / (ratios.max() - ratios.min()) * 2 * lam
    n = np.array(sizes, dtype=float)
    x = s + np.sum(n * r) / n.sum() - r
    if x.min() < 0 or x.max() > 1:
        c = bisect(lambda c: np.sum(n * np.clip(s + c - r, 0, 1)), -2.0, 2.0, s * n.sum())
        x = np.clip(s + c - r, 0, 1)
    return ratios, x


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", [0.02, 0.3, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("m,lam", [(5.0, 0.08), (3.0, 0.2)])
def test_owl_target_band_and_reference(layout, s, m, lam):
    weights, blocks, scores = make(layout)
    result = owl(weights, s, blocks=blocks, scores=scores, m=m, lam=lam)
    check_target(weights, result, s)
    ratios, expected = reference_owl(weights, blocks, scores, s, m, lam)
    assert len(set(ratios)) == len(ratios)  # the layout really has distinct ratios
    got = per_block(result, blocks)
    assert got == pytest.approx(list(expected), abs=1e-9)
    assert all(s - 2 * lam - 1e-12 <= x <= s + 2 * lam + 1e-12 for x in got)
    assert got[int(np.argmax(ratios))] < got[int(np.argmin(ratios))]


@pytest.mark.parametrize("s", [0.02, 0.05, 0.97])
def test_owl_clips_and_keeps_the_mean(s):
    scores = hand_scores()
    weights = [torch.randn(4, 5) for _ in range(3)]
    result = owl(weights, s, blocks=[0, 1, 2], scores=scores, lam=0.08)
    check_target(weights, result, s)
    assert min(result) == 0.0 or max(result) == 1.0  # the official mapping leaves [0, 1] here
    _, expected = reference_owl(weights, [0, 1, 2], scores, s, 5.0, 0.08)
    assert result == pytest.approx(list(expected), abs=1e-9)
    assert all(s - 0.16 - 1e-12 <= x <= s + 0.16 + 1e-12 for x in result)


def test_owl_equal_ratios_give_uniform_sparsity():
    weights, blocks, _ = make("unequal")
    scores = [torch.ones_like(w) for w in weights]
    assert owl(weights, 0.4, blocks=blocks, scores=scores) == [0.4] * len(weights)


def test_owl_rejects_mismatched_scores():
    weights, blocks, scores = make("llama")
    with pytest.raises(ValueError, match="shape"):
        owl(weights, 0.5, blocks=blocks, scores=[s.T for s in scores])
    with pytest.raises(ValueError, match="score tensors"):
        owl(weights, 0.5, blocks=blocks, scores=scores[:-1])


# --- ATP ------------------------------------------------------------------------------------------


def test_atp_progression_on_equal_blocks():
    weights, blocks, _ = make("llama")
    result = atp(weights, 0.5, blocks=blocks, beta=0.1)
    assert per_block(result, blocks) == pytest.approx([0.35, 0.45, 0.55, 0.65], abs=1e-12)
    check_target(weights, result, 0.5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", [0.1, 0.5, 0.8])
def test_atp_target_and_legal_band(layout, s):
    weights, blocks, _ = make(layout)
    sizes = block_sizes(weights, blocks)
    centre = sum(b * n for b, n in enumerate(sizes)) / sum(sizes)
    largest = min(s / centre, (1 - s) / (len(sizes) - 1 - centre))
    for beta in [0.0, largest / 3, largest]:
        result = atp(weights, s, blocks=blocks, beta=beta)
        check_target(weights, result, s)
        got = per_block(result, blocks)
        assert np.diff(got) == pytest.approx([beta] * (len(sizes) - 1), abs=1e-12)
    assert min(got) == pytest.approx(0.0, abs=1e-12) or max(got) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(UserError):
        atp(weights, s, blocks=blocks, beta=largest * 1.001)


@pytest.mark.parametrize("beta", [-0.001, 0.3])
def test_atp_illegal_beta_names_the_largest(beta):
    weights, blocks, _ = make("llama")  # L = 4, S = 0.7: largest = min(1.4, 0.6) / 3 = 0.2
    with pytest.raises(UserError) as info:
        atp(weights, 0.7, blocks=blocks, beta=beta)
    message = str(info.value)
    assert "\n" not in message and "[0, 0.2]" in message and str(beta) in message


def test_atp_beta_grid():
    grid = atp_beta_grid(0.7, 32)  # LLaMA-2-7B: largest 0.6 / 31 = 0.01935
    assert grid[0] == 0.002 and grid[-1] == 0.018 and len(grid) == 9
    grid = atp_beta_grid(0.5, 4)  # largest 1 / 3
    assert grid[-1] == 0.332 and len(grid) == 166
    assert atp_beta_grid(0.5, 3)[-1] == 0.5  # the bound itself is legal
    assert atp_beta_grid(0.0, 8) == []
    weights, blocks, _ = make("llama")
    for beta in atp_beta_grid(0.7, 4, step=0.01):
        atp(weights, 0.7, blocks=blocks, beta=beta)
    with pytest.raises(UserError):
        atp(weights, 0.7, blocks=blocks, beta=atp_beta_grid(0.7, 4, step=0.01)[-1] + 0.01)


# --- esd_alpha ------------------------------------------------------------------------------------


def with_spectrum(eigs, seed=0):
    """A square matrix whose W^T W has exactly these eigenvalues (random rotations)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigs)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(eigs, dtype=torch.float64).sqrt()) @ v.T


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
def test_esd_alpha_recovers_a_power_law(alpha):
    """Eigenvalues at the N = 256 mid-quantiles of a Pareto density ~ lambda^-alpha (xmin 1).

    In log10 the density falls, so the histogram peak is the first bin and the candidates are the
    eigenvalues up to 1.5. On exact quantiles the Hill estimate is off only by the midpoint-rule
    error of sum(-ln(1 - q)) ~ (alpha - 1) ln(N) / N, here <= 0.01 (a random sample of 256 would
    scatter by (alpha - 1) / 16 = 0.06-0.19); 0.03 leaves room for the KS choice of xmin yet fails
    on a wrong n, log base or exponent sign.
    """
    n = 256
    q = (np.arange(n) + 0.5) / n
    eigs = (1 - q) ** (-1 / (alpha - 1))
    assert esd_alpha(with_spectrum(eigs)) == pytest.approx(alpha, abs=0.03)
    assert esd_alpha(with_spectrum(eigs).float()) == pytest.approx(alpha, abs=0.03)


def hill(eigs, i):
    n = len(eigs) - i
    return 1 + n / sum(math.log(x / eigs[i]) for x in eigs[i:])


def test_esd_alpha_hand_checked_selection():
    # log10 spans [0.602, 2] in bins of 0.01398: 10 and 10.1 share bin 28 (the peak), 10.2 is in
    # bin 29. xmin2 = 10^(0.602 + 28 * 0.01398) = 9.851: candidates <= 14.78 (4, 10, 10.1, 10.2).
    # KS distances: 0.3016, 0.3763, 0.3254, 0.3971 -> xmin = 4 wins, as the official lower bound
    # log10(0.95 * 9.851) = 0.971 lets 4 in; the intended bound 9.358 leaves it out -> xmin = 10.1.
    eigs = [4.0, 10.0, 10.1, 10.2, 60.0, 100.0]
    w = torch.diag(torch.tensor(eigs, dtype=torch.float64).sqrt())
    assert esd_alpha(w) == pytest.approx(hill(eigs, 0), rel=1e-12)
    assert hill(eigs, 0) == pytest.approx(1.6892154, abs=1e-6)
    assert esd_alpha(w, official_lower_bound=False) == pytest.approx(hill(eigs, 2), rel=1e-12)
    # Every value in its own bin: the peak is the first bin, xmin2 = 1, only xmin = 1 <= 1.5 is a
    # candidate, although xmin = 3 fits better (KS 0.166 < 0.289).
    eigs = [1.0, 3.0, 5.0, 8.0, 30.0]
    w = torch.diag(torch.tensor(eigs, dtype=torch.float64).sqrt())
    assert esd_alpha(w) == pytest.approx(1 + 5 / math.log(3 * 5 * 8 * 30), rel=1e-12)


def reference_esd_alpha(weight, official=True):
    """net_esd_estimator(fix_fingers='xmin_peak'), written out with plain loops (float64)."""
    eigs = sorted(float(x) ** 2 for x in np.linalg.svd(weight.double().numpy(), compute_uv=False))
    logs = [math.log10(x) for x in eigs]
    lo, hi = logs[0], logs[-1]
    counts = [0] * 100
    for v in logs:
        counts[min(int((v - lo) / (hi - lo) * 100), 99)] += 1
    xmin2 = 10 ** (lo + (hi - lo) * counts.index(max(counts)) / 100)
    lower = math.log10(0.95 * xmin2) if official else 0.95 * xmin2
    best_d, best_alpha = 1.0, 0.0
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < lower or xmin > 1.5 * xmin2:
            continue
        n, alpha = len(eigs) - i, hill(eigs, i)
        d = max(abs(1 - (x / xmin) ** (1 - alpha) - k / n) for k, x in enumerate(eigs[i:]))
        if d < best_d:
            best_d, best_alpha = d, alpha
    return best_alpha


@pytest.mark.parametrize("shape,scale", [((24, 40), 1.0), ((40, 24), 1.0), ((30, 30), 40.0)])
@pytest.mark.parametrize("official", [True, False])
def test_esd_alpha_matches_a_plain_reference(shape, scale, official):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    w[:, :3] *= 8.0  # a few strong directions: a heavier tail
    assert esd_alpha(w, official_lower_bound=official) == pytest.approx(
        reference_esd_alpha(w, official), rel=1e-9
    )


def test_esd_alpha_rejects_bad_input():
    for bad in [torch.ones(4), torch.zeros(3, 3), torch.full((2, 2), math.nan)]:
        with pytest.raises(ValueError):
            esd_alpha(bad)


# --- AlphaPruning ---------------------------------------------------------------------------------


def reference_alpha_pruning(weights, blocks, alphas, s, eps):
    """ww_sparsity block_wise, with bisection on the scale when a layer would exceed 1."""
    means = {b: np.mean([a for a, bb in zip(alphas, blocks) if bb == b]) for b in set(blocks)}
    layer = np.array([means[b] for b in blocks])
    r = (layer - layer.min()) / (layer.max() - layer.min()) * 2 * eps + (1 - eps)
    n = np.array([w.numel() for w in weights], dtype=float)
    k = s * n.sum() / np.sum(n * r)
    if k * r.max() > 1:
        k = bisect(lambda k: np.sum(n * np.minimum(1, k * r)), 0.0, 10.0, s * n.sum())
    return r, n.sum() / np.sum(n * r), np.minimum(1, k * r)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", [0.1, 0.5, 0.7])
@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5])
def test_alpha_pruning_target_band_and_reference(layout, s, eps):
    weights, blocks, _ = make(layout)
    alphas = list(np.random.default_rng(2).uniform(2.0, 6.0, len(weights)))
    result = alpha_pruning(weights, s, blocks=blocks, epsilon=eps, alphas=alphas)
    check_target(weights, result, s)
    r, factor, expected = reference_alpha_pruning(weights, blocks, alphas, s, eps)
    assert result == pytest.approx(list(expected), abs=1e-12)
    ratios = np.array(result) / s / factor
    if s * factor * (1 + eps) <= 1:  # unclamped: in [1 - eps, 1 + eps], both ends reached
        assert ratios.min() == pytest.approx(1 - eps) and ratios.max() == pytest.approx(1 + eps)
    else:  # clamped (S = 0.7, eps = 0.5): the most pruned layers are at 1
        assert max(result) == 1.0 and ratios.min() > 1 - eps
    per_block(result, blocks)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", [0.8, 0.9, 0.97])
def test_alpha_pruning_clamps_and_redistributes(layout, s):
    weights, blocks, _ = make(layout)
    alphas = [3.0 + b + 0.1 * (i % 3) for i, b in enumerate(blocks)]
    result = alpha_pruning(weights, s, blocks=blocks, epsilon=0.3, alphas=alphas)
    check_target(weights, result, s)
    r, factor, expected = reference_alpha_pruning(weights, blocks, alphas, s, 0.3)
    assert s * factor * r.max() > 1  # the official mapping exceeds 1 here
    assert result == pytest.approx(list(expected), abs=1e-9)
    res = np.array(result)
    assert np.any(res == 1.0)
    free = res < 1.0
    scale = res[free] / r[free]  # the unclamped layers keep the proportions of r, scaled up
    assert scale == pytest.approx(np.full(free.sum(), scale[0]), rel=1e-12)
    assert scale[0] >= s * factor


def test_alpha_pruning_computes_alphas_and_handles_ties():
    weights, blocks, _ = make("llama")
    alphas = [esd_alpha(w) for w in weights]
    result = alpha_pruning(weights, 0.6, blocks=blocks)
    assert result == alpha_pruning(weights, 0.6, blocks=blocks, alphas=alphas)
    check_target(weights, result, 0.6)
    assert alpha_pruning(weights, 0.6, blocks=blocks, alphas=[4.0] * 28) == [0.6] * 28
    for bad in [dict(epsilon=1.0), dict(alphas=[1.0] * 27), dict(alphas=[math.inf] * 28)]:
        with pytest.raises(ValueError):
            alpha_pruning(weights, 0.6, blocks=blocks, **bad)


# --- the registry ---------------------------------------------------------------------------------

HYPER = {
    "owl": lambda scores, s: {"scores": scores},
    "dlp": lambda scores, s: {"scores": scores},
    "atp": lambda scores, s: {"beta": 0.02 * s},  # S = 0 admits beta = 0 only
    "alpha_pruning": lambda scores, s: {"alphas": [2.0 + i % 5 for i in range(len(scores))]},
}


@pytest.mark.parametrize("name", ["owl", "dlp", "atp", "alpha_pruning"])
@pytest.mark.parametrize("s", [0.0, 0.5])
def test_registry_shares_one_signature(name, s):
    assert set(LM_BASELINES) == set(HYPER)
    weights, blocks, scores = make("unequal")
    before = [w.clone() for w in weights]
    result = LM_BASELINES[name](weights, s, blocks=blocks, **HYPER[name](scores, s))
    check_target(weights, result, s)
    if s == 0.0:
        assert result == [0.0] * len(weights)
    assert all(torch.equal(a, b) for a, b in zip(weights, before))
    with pytest.raises(ValueError):
        LM_BASELINES[name](weights, 1.0, blocks=blocks, **HYPER[name](scores, 0.5))


# --- DLP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("s, alpha", [(0.5, 0.15), (0.7, 0.15), (0.6, 0.05)])
def test_dlp_is_the_official_mapping_on_equal_blocks(s, alpha):
    """ironartisan/DLP get_dlp_ratios, written out: s_l = mean of the block's Wanda scores,
    u = 1 - s / sum(s), density = minmax(u) * 2 alpha - mean(minmax(u) * 2 alpha) + (1 - S)."""
    weights, blocks, scores = make("llama")
    result = dlp(weights, s, blocks=blocks, scores=scores, alpha=alpha)
    check_target(weights, result, s)
    means = np.array([torch.cat([sc.flatten().double() for sc, b in zip(scores, blocks)
                                 if b == k]).mean().item() for k in range(max(blocks) + 1)])
    u = 1 - means / means.sum()
    scaled = (u - u.min()) / (u.max() - u.min()) * 2 * alpha
    density = scaled - scaled.mean() + (1 - s)
    assert per_block(result, blocks) == pytest.approx(list(1 - density), abs=1e-12)
    # a higher mean score, more pruning
    assert np.argsort(per_block(result, blocks)).tolist() == np.argsort(means).tolist()


def test_dlp_clips_and_resolves_the_shift_so_the_target_holds():
    weights, blocks, scores = make("unequal")
    result = dlp(weights, 0.95, blocks=blocks, scores=scores, alpha=0.15)
    check_target(weights, result, 0.95)
    assert max(result) == 1.0  # clipped at 100%, the rest raised to keep the mean
    flat = dlp(weights, 0.6, blocks=blocks, scores=[torch.ones_like(w) for w in weights])
    assert flat == [0.6] * len(weights)  # equal scores: uniform
