"""SparseGPT (rdprune.pruning.sparsegpt) against independent references: a column-by-column OBS
sweep with explicit inverses of the remaining Hessian, closed-form least squares, direct sums."""

from __future__ import annotations

import pytest
import torch

from rdprune.pruning.sparsegpt import (
    HessianAccumulator,
    reconstruction_error,
    sparsegpt_levels,
    sparsegpt_prune,
)

F64 = torch.float64


def problem(d_out: int, d_in: int, seed: int = 0, tokens: int = 200, dead: tuple = ()):
    """Random weight and the Hessian (2/N) X^T X of correlated inputs (a random covariance)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, d_in, generator=g, dtype=F64) @ torch.randn(d_in, d_in, generator=g,
                                                                         dtype=F64)
    X[:, list(dead)] = 0.0
    W = torch.randn(d_out, d_in, generator=g, dtype=F64)
    return W, 2.0 / tokens * X.T @ X


def shares(k: int, d_in: int, blocksize: int) -> list[int]:
    """k split over column blocks by width, largest remainder (ties to the earlier block)."""
    widths = [min(blocksize, d_in - s) for s in range(0, d_in, blocksize)]
    exact = [k * w / d_in for w in widths]
    out = [int(e) for e in exact]
    for b in sorted(range(len(widths)), key=lambda b: (out[b] - exact[b], b))[: k - sum(out)]:
        out[b] += 1
    return out


def reference(W, H, k, blocksize, percdamp=0.01, forced=None):
    """Textbook OBS sweep in float64, no Cholesky and no lazy updates: pruning w_i with columns
    < i frozen moves the free columns j >= i by -w_i * Hf^-1[i, j] / Hf^-1[i, i], Hf = H[i:, i:];
    the saliency is w_i^2 / Hf^-1[i, i]. Mask per block as the module (its current weights)."""
    W, H = W.clone().to(F64), H.clone().to(F64)
    d_out, d_in = W.shape
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.diagonal(H).mean() * torch.eye(d_in, dtype=F64)
    inv_rows = [torch.linalg.inv(H[i:, i:])[0] for i in range(d_in)]  # row i of (H[i:, i:])^-1
    keep = torch.ones(d_out, d_in, dtype=torch.bool)
    for i1, quota in zip(range(0, d_in, blocksize), shares(k, d_in, blocksize)):
        i2 = min(i1 + blocksize, d_in)
        score = W[:, i1:i2] ** 2 / torch.stack([inv_rows[i][0] for i in range(i1, i2)])
        if forced is not None:
            score[forced[:, i1:i2]] = -float("inf")
        flat = sorted(range(score.numel()), key=lambda j: (score.flatten()[j].item(), j))
        for j in flat[:quota]:
            keep[j // (i2 - i1), i1 + j % (i2 - i1)] = False
        for i in range(i1, i2):
            pruned = ~keep[:, i]
            W[:, i:] -= torch.outer(W[:, i] * pruned, inv_rows[i] / inv_rows[i][0])
            W[pruned, i] = 0.0
    return W, keep


def least_squares(W, keep, H):
    """Per row, argmin (v - w) H (v - w)^T subject to v = 0 where keep is False (closed form)."""
    out = torch.zeros_like(W, dtype=F64)
    for r in range(W.shape[0]):
        K, P = keep[r], ~keep[r]
        out[r, K] = W[r, K] + torch.linalg.solve(H[K][:, K], H[K][:, P] @ W[r, P])
    return out


@pytest.mark.parametrize("d_out,d_in,blocksize,k,dead", [
    (6, 20, 8, 37, ()),          # 8 does not divide 20
    (16, 50, 8, 400, (3, 17)),   # dead input columns
    (10, 33, 7, 1, ()),
    (12, 24, 128, 200, ()),      # one block
    (9, 41, 5, 9 * 41 - 3, (0,)),
])
def test_matches_textbook_obs_reference(d_out, d_in, blocksize, k, dead):
    W, H = problem(d_out, d_in, seed=d_in, dead=dead)
    ref_w, ref_keep = reference(W, H, k, blocksize)
    new, keep = sparsegpt_prune(W, H, k, blocksize=blocksize, dtype=F64)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(new, ref_w, rtol=0, atol=1e-9)
    new32, keep32 = sparsegpt_prune(W.float(), H.float(), k, blocksize=blocksize)  # default float32
    assert new32.dtype == torch.float32 and torch.equal(keep32, ref_keep)
    torch.testing.assert_close(new32.double(), ref_w, rtol=0, atol=2e-5)


def test_forced_entries_match_reference_and_are_removed():
    W, H = problem(8, 26, seed=3)
    forced = torch.zeros(8, 26, dtype=torch.bool)
    forced[[0, 2, 5], [1, 12, 25]] = True  # one per block of 9 columns, below each block's share
    new, keep = sparsegpt_prune(W, H, 60, blocksize=9, forced=forced, dtype=F64)
    ref_w, ref_keep = reference(W, H, 60, 9, forced=forced)
    assert torch.equal(keep, ref_keep) and not keep[forced].any()
    torch.testing.assert_close(new, ref_w, rtol=0, atol=1e-9)


@pytest.mark.parametrize("d_out,d_in,blocksize", [(7, 23, 5), (3, 10, 4), (5, 16, 16), (4, 9, 1)])
def test_exact_count_zeros_and_block_shares(d_out, d_in, blocksize):
    W, H = problem(d_out, d_in, seed=1)
    numel = d_out * d_in
    for k in sorted({0, 1, 2, 3, numel // 3, numel // 2 + 1, numel - 1, numel}):
        new, keep = sparsegpt_prune(W, H, k, blocksize=blocksize)
        assert int((~keep).sum()) == k
        assert torch.equal(new[~keep], torch.zeros(k, dtype=F64))
        removed = [int((~keep[:, s:s + blocksize]).sum()) for s in range(0, d_in, blocksize)]
        assert removed == shares(k, d_in, blocksize)
    assert torch.equal(sparsegpt_prune(W, H, numel)[0], torch.zeros_like(W))


def test_ties_broken_by_flat_position():
    W, H = problem(4, 6, seed=8, dead=(1, 4))  # 8 weights zeroed: score 0, all tied
    new, keep = sparsegpt_prune(W, H, 3, blocksize=6)
    assert sorted(map(tuple, (~keep).nonzero().tolist())) == [(0, 1), (0, 4), (1, 1)]
    assert torch.equal(new[:, [1, 4]], torch.zeros(4, 2, dtype=F64))  # dead columns zeroed


def test_k_zero_returns_weight_unchanged_and_inputs_untouched():
    W, H = problem(5, 12, seed=2, dead=(4,))
    W_copy, H_copy = W.clone(), H.clone()
    new, keep = sparsegpt_prune(W, H, 0)
    assert torch.equal(new, W) and new is not W and keep.all()  # dead column not zeroed at k=0
    sparsegpt_prune(W, H, 30, forced=torch.rand(5, 12) < 0.2)
    assert torch.equal(W, W_copy) and torch.equal(H, H_copy)


def test_forced_exceeding_block_share_takes_from_later_blocks():
    W, H = problem(4, 12, seed=5, dead=(9,))  # zero score ties with the forced (0, 11)
    forced = torch.zeros(4, 12, dtype=torch.bool)
    forced[:, :3] = True  # all of block 0 (12 entries) while its share of k=15 is 4
    forced[0, 11] = True
    new, keep = sparsegpt_prune(W, H, 15, blocksize=3, forced=forced)
    assert int((~keep).sum()) == 15 and not keep[forced].any()
    assert torch.equal(new[~keep], torch.zeros(15, dtype=F64))
    assert [int((~keep[:, s:s + 3]).sum()) for s in range(0, 12, 3)] == [12, 0, 0, 3]  # shares [4, 4, 4, 3]
    new, keep = sparsegpt_prune(W, H, 13, blocksize=3, forced=forced)  # k == forced count
    assert torch.equal(~keep, forced)
    with pytest.raises(ValueError, match="forced"):
        sparsegpt_prune(W, H, 12, blocksize=3, forced=forced)


def test_fixed_mask_least_squares_optimality():
    """SparseGPT freezes column i once swept, so for a fixed mask it is the exact least-squares
    optimum only when every row's pruned columns precede its kept ones; in general it is only
    optimal over the kept columns after each row's last pruned column. Blocking is exact."""
    W, H = problem(6, 24, seed=7)
    g = torch.Generator().manual_seed(0)
    prefix = torch.arange(24)[None, :] < torch.tensor([[2], [5], [9], [0], [13], [24]])
    new, keep = sparsegpt_prune(W, H, int(prefix.sum()), forced=prefix, percdamp=0.0, dtype=F64)
    torch.testing.assert_close(new, least_squares(W, keep, H), rtol=0, atol=1e-9)

    mask = torch.rand(6, 24, generator=g) < 0.5  # pruned where True
    outs = [sparsegpt_prune(W, H, int(mask.sum()), forced=mask, percdamp=0.0, blocksize=b,
                            dtype=F64) for b in (1, 5, 128)]
    for new, keep in outs:
        assert torch.equal(keep, ~mask)
        torch.testing.assert_close(new, outs[-1][0], rtol=0, atol=1e-9)
    new = outs[-1][0]
    opt = least_squares(W, ~mask, H)
    err, err_opt = reconstruction_error(W, new, H), reconstruction_error(W, opt, H)
    assert err_opt < err < 3 * err_opt  # strictly suboptimal for a random mask
    grad = (new - W) @ H  # half the gradient of the error
    checked = 0
    for r in range(6):
        tail = grad[r, int(mask[r].nonzero().max()) + 1:] if mask[r].any() else grad[r]
        checked += tail.numel()
        assert (tail.abs() < 1e-8 * H.abs().max() * W.abs().max()).all()
    assert checked >= 3  # not vacuous
    kept_grad = grad[~mask]
    assert kept_grad.abs().max() > 1e-3 * H.abs().max() * W.abs().max()  # earlier kept: not 0


def test_beats_magnitude_and_wanda_without_reconstruction():
    W, H = problem(16, 48, seed=11, tokens=400)
    k = W.numel() // 2
    new, _ = sparsegpt_prune(W.float(), H.float(), k, blocksize=16)
    err = reconstruction_error(W, new, H)
    for score in (W.abs(), W.abs() * torch.diagonal(H).sqrt()):  # magnitude, Wanda
        order = torch.argsort(score.flatten(), stable=True)[:k]
        baseline = W.flatten().clone()
        baseline[order] = 0.0
        assert err < 0.7 * reconstruction_error(W, baseline.view_as(W), H)


def test_levels_equal_separate_calls():
    W, H = problem(8, 30, seed=4, dead=(6,))
    forced = torch.zeros(8, 30, dtype=torch.bool)
    forced[1, 2] = forced[7, 29] = True
    counts = [2, 17, 120, 239, 240]
    levels = sparsegpt_levels(W, H, counts, blocksize=8, forced=forced)
    assert len(levels) == len(counts)
    for k, (new, keep) in zip(counts, levels):
        one_new, one_keep = sparsegpt_prune(W, H, k, blocksize=8, forced=forced)
        assert torch.equal(new, one_new) and torch.equal(keep, one_keep)
    new, keep = sparsegpt_levels(W, H, [0])[0]
    assert torch.equal(new, W) and keep.all()


def test_hessian_accumulator_equals_direct_sum():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 5, 7, generator=g), torch.randn(1, 4, 7, generator=g),
               torch.randn(6, 7, generator=g), torch.randn(2, 5, 7, generator=g)]
    acc = HessianAccumulator(7)
    assert torch.equal(acc.hessian, torch.zeros(7, 7, dtype=F64))
    for x in batches:
        acc.add(x)
    seqs = [s.double() for x in batches for s in (x if x.dim() == 3 else [x])]
    direct = 2.0 / len(seqs) * sum(s.T @ s for s in seqs)
    assert acc.count == len(seqs) == 7
    torch.testing.assert_close(acc.hessian, direct, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="expected inputs"):
        acc.add(torch.randn(2, 3, 6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weight(dtype):
    W, H = problem(6, 20, seed=9)
    Wh = W.to(dtype)
    new, keep = sparsegpt_prune(Wh, H, 55, blocksize=8)
    assert new.dtype == dtype and int((~keep).sum()) == 55
    assert (new[~keep] == 0).all() and not torch.signbit(new[~keep]).any()
    ref, ref_keep = sparsegpt_prune(Wh.float(), H.float(), 55, blocksize=8)  # same float32 sweep
    assert torch.equal(keep, ref_keep) and torch.equal(new, ref.to(dtype))


def test_reconstruction_error_definition():
    W, H = problem(3, 5, seed=6)
    V = torch.randn(3, 5, dtype=F64)
    expected = sum(float((V[r] - W[r]) @ H @ (V[r] - W[r])) for r in range(3))
    assert reconstruction_error(W, V, H) == pytest.approx(expected, rel=1e-12)
    assert reconstruction_error(W, W, H) == 0.0


def test_bad_inputs_raise_one_line_value_errors():
    W, H = problem(4, 6, seed=0)
    bad = [
        dict(weight=W[0]), dict(hessian=H[:5, :5]), dict(k=-1), dict(k=25),
        dict(hessian=H.clone().fill_(float("nan"))), dict(blocksize=0), dict(percdamp=-0.1),
        dict(forced=torch.zeros(4, 5, dtype=torch.bool)), dict(forced=torch.zeros(4, 6)),
        dict(hessian=-torch.eye(6, dtype=F64), percdamp=0.0),  # not positive definite
    ]
    for change in bad:
        args = dict(weight=W, hessian=H, k=3) | change
        k = args.pop("k")
        with pytest.raises(ValueError) as info:
            sparsegpt_prune(args.pop("weight"), args.pop("hessian"), k, **args)
        assert "\n" not in str(info.value)
