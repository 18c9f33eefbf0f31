"""SparseGPT (Frantar & Alistarh, ICML 2023): prune one linear layer and reconstruct it with OBS
updates, given the layer-input Hessian ``H = (2/N) sum_seq X X^T``.

Follows the official code, IST-DASLab/sparsegpt ``sparsegpt.py::SparseGPT`` (``add_batch`` and
``fasterprune``, commit 147d215): dead columns (``diag H == 0``) get ``H_ii = 1`` and a zero weight
column, ``H += percdamp * mean(diag H) * I``, ``U`` = upper Cholesky factor of ``H^-1``; columns
are swept in blocks of ``blocksize``; at the start of each block the mask is chosen jointly over
rows x block columns by the score ``w^2 / U_ii^2`` on the block's *current* weights; each pruned
entry is zeroed with ``err = w / U_ii`` and ``W[:, i:] -= err U[i, i:]``, with a lazy update of
the columns after the block. Pure torch + stdlib.

Deviations from the official code:

- **Exact count.** The official code prunes ``int(numel_block * s) + 1`` (+ ties) per block; here
  the layer loses exactly ``k`` weights. ``k`` is spread over the column blocks in proportion to
  their number of columns (largest remainder; equal remainders go to the earlier block), and
  each block removes exactly its share: the lowest scores, ties broken by flat (row-major)
  position within the block (stable argsort).
- **Forced entries** (``forced``, e.g. weights pruned in an earlier round) get score ``-inf``,
  so they are always removed and count towards ``k``. A block whose share is smaller than its
  forced entries takes them all and the excess is taken from the shares of the following blocks
  (earliest first), keeping the total at exactly ``k`` (``k`` < forced count is an error).
- ``k == 0`` returns the weight unchanged (no dead-column zeroing) and an all-True mask.
- Dead columns are zeroed as in the official code but stay True in the mask (their inputs are
  always 0, so their value does not matter); only the ``k`` selected weights are "removed".
- Multi-level database (:func:`sparsegpt_levels`, as EvoPress ``src/fast_obc.py``): several
  counts from the same dense W, one Cholesky factorisation for all levels.
- TF32 is not switched off globally (the official script does); the sweep dtype is a keyword
  (``float32`` as the official code, or ``float64``); the Hessian is accumulated in float64.
- Quantisation and N:M sparsity are not implemented.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from rdprune.errors import UserError

__all__ = ["HessianAccumulator", "sparsegpt_prune", "sparsegpt_levels", "reconstruction_error"]


class HessianAccumulator:
    """Layer-input Hessian ``H = (2/N) sum_seq X X^T`` over ``N`` sequences (official
    ``add_batch``), ``X`` of shape (d_in, tokens).

    The official code keeps a float32 running average; here the plain sum is accumulated (in
    ``dtype``, float64 by default) and scaled by ``2/N`` on read, which is the same quantity with
    less rounding error.

    Attributes:
        count: number of sequences seen so far.
    """

    def __init__(self, d_in: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64):
        if d_in < 1:
            raise UserError(f"d_in must be >= 1, got {d_in}")
        self.d_in = d_in
        self.count = 0
        self._sum = torch.zeros(d_in, d_in, device=device, dtype=dtype)

    def add(self, x: torch.Tensor) -> None:
        """Add the inputs of one batch: ``[batch, tokens, d_in]`` (each batch row one sequence)
        or ``[tokens, d_in]`` (one sequence)."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise UserError(f"expected inputs [batch, tokens, {self.d_in}] or [tokens, "
                            f"{self.d_in}], got shape {tuple(x.shape)}")
        flat = x.detach().reshape(-1, self.d_in).to(device=self._sum.device, dtype=self._sum.dtype)
        self._sum.addmm_(flat.T, flat)
        self.count += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """``(2/N) sum X X^T``, [d_in, d_in] in the accumulator's dtype (zeros before any add)."""
        return self._sum * (2.0 / self.count) if self.count else self._sum.clone()


def _block_quotas(k: int, d_out: int, d_in: int, blocksize: int,
                  forced_per_block: Sequence[int]) -> list[int]:
    """Weights removed per column block: ``k`` split in proportion to the block widths (largest
    remainder, ties to the earlier block), raised to each block's forced count at the expense of
    the following blocks, so that the total is exactly ``k``."""
    widths = [min(blocksize, d_in - start) for start in range(0, d_in, blocksize)]
    shares = [k * w // d_in for w in widths]
    order = sorted(range(len(widths)), key=lambda b: (-(k * widths[b] % d_in), b))
    for b in order[: k - sum(shares)]:
        shares[b] += 1
    caps = [d_out * w for w in widths]
    quotas, remaining, carry = [], k, 0
    for b in range(len(widths)):
        forced_later, cap_later = sum(forced_per_block[b + 1:]), sum(caps[b + 1:])
        low = max(forced_per_block[b], remaining - cap_later)
        high = min(caps[b], remaining - forced_later)
        quota = min(max(shares[b] + carry, low), high)
        carry += shares[b] - quota
        remaining -= quota
        quotas.append(quota)
    return quotas


def _prepare(weight, hessian, counts, blocksize, percdamp, forced, dtype):
    """Validate; return (dense W in ``dtype`` with dead columns zeroed, U, forced, forced count)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise UserError(f"weight must be a 2-D float tensor (d_out, d_in), got {weight.dtype} "
                        f"of shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if hessian.shape != (d_in, d_in):
        raise UserError(f"hessian must be ({d_in}, {d_in}) for a weight of shape "
                        f"{tuple(weight.shape)}, got {tuple(hessian.shape)}")
    if blocksize < 1:
        raise UserError(f"blocksize must be >= 1, got {blocksize}")
    if not percdamp >= 0:
        raise UserError(f"percdamp must be >= 0, got {percdamp}")
    if dtype not in (torch.float32, torch.float64):
        raise UserError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    n_forced = 0
    if forced is not None:
        if forced.shape != weight.shape or forced.dtype != torch.bool:
            raise UserError(f"forced must be a bool tensor of shape {tuple(weight.shape)}, got "
                            f"{forced.dtype} of shape {tuple(forced.shape)}")
        forced = forced.to(weight.device)
        n_forced = int(torch.count_nonzero(forced))
    for k in counts:
        if not n_forced <= k <= weight.numel():
            raise UserError(f"k must be in [{n_forced}, {weight.numel()}] (forced entries .. "
                            f"numel), got {k}")
    H = hessian.detach().to(device=weight.device, dtype=dtype, copy=True)
    if not bool(torch.isfinite(H).all()):
        raise UserError("hessian has non-finite entries (NaN or inf)")
    W = weight.detach().to(dtype=dtype, copy=True)
    if not bool(torch.isfinite(W).all()):
        raise UserError("weight has non-finite entries (NaN or inf)")
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    torch.diagonal(H).add_(percdamp * torch.diagonal(H).mean())
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise UserError(f"damped hessian is not positive definite (percdamp={percdamp}); "
                        "increase percdamp or use dtype=torch.float64")
    return W, U, forced, n_forced


def _sweep(W: torch.Tensor, U: torch.Tensor, k: int, blocksize: int,
           forced: torch.Tensor | None) -> torch.Tensor:
    """Prune exactly ``k`` entries of ``W`` in place with OBS updates; return the keep-mask."""
    d_out, d_in = W.shape
    starts = range(0, d_in, blocksize)
    per_block = ([int(torch.count_nonzero(forced[:, s:s + blocksize])) for s in starts]
                 if forced is not None else [0] * len(starts))
    keep = torch.ones(W.shape, dtype=torch.bool, device=W.device)
    for i1, quota in zip(starts, _block_quotas(k, d_out, d_in, blocksize, per_block)):
        i2 = min(i1 + blocksize, d_in)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]  # views: updates land in W
        diag = torch.diagonal(U1)
        score = W1.square() / diag.square()
        if forced is not None:
            score = score.masked_fill(forced[:, i1:i2], float("-inf"))
        prune = torch.zeros(W1.numel(), dtype=torch.bool, device=W.device)
        prune[torch.argsort(score.flatten(), stable=True)[:quota]] = True
        prune = prune.view(W1.shape)
        keep[:, i1:i2] = ~prune
        if quota == 0:
            continue  # nothing pruned: no error to propagate
        err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = torch.where(prune[:, i], W1[:, i], 0.0) / diag[i]
            err[:, i] = col
            W1[:, i + 1:] -= torch.outer(col, U1[i, i + 1:])
            W1[:, i].masked_fill_(prune[:, i], 0.0)
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return keep


def sparsegpt_levels(weight: torch.Tensor, hessian: torch.Tensor, counts: Sequence[int], *,
                     blocksize: int = 128, percdamp: float = 0.01,
                     forced: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SparseGPT at several removal counts from the same dense weight (EvoPress database).

    One Cholesky factorisation of the damped ``H^-1`` serves every level; each level sweeps the
    original weight. Arguments as :func:`sparsegpt_prune`, with ``counts`` a sequence of numbers
    of weights to remove.

    Returns:
        One ``(new_weight, keep_mask)`` per count, in the order of ``counts``.
    """
    counts = [operator.index(k) for k in counts]
    W0, U, forced, _ = _prepare(weight, hessian, counts, blocksize, percdamp, forced, dtype)
    results = []
    for k in counts:
        if k == 0:
            results.append((weight.detach().clone(),
                            torch.ones(weight.shape, dtype=torch.bool, device=weight.device)))
            continue
        W = W0.clone()
        keep = _sweep(W, U, k, blocksize, forced)
        results.append((W.to(weight.dtype).masked_fill_(~keep, 0.0), keep))
    return results


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, k: int, *, blocksize: int = 128,
                    percdamp: float = 0.01, forced: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove exactly ``k`` weights of a linear layer and reconstruct the rest (SparseGPT).

    Args:
        weight: (d_out, d_in) float tensor (any float dtype, any device). Not modified.
        hessian: (d_in, d_in) ``(2/N) sum X X^T`` of the layer inputs, finite. Not modified.
        k: number of weights to remove, ``0 <= k <= numel`` and at least the forced count
            (``k = num_pruned(numel, s)`` for sparsity ``s``, the fraction removed).
        blocksize: columns per block (mask chosen per block, lazy updates between blocks).
        percdamp: damping ``H += percdamp * mean(diag H) * I`` (fraction of the mean diagonal).
        forced: optional bool tensor shaped like ``weight``, True where a weight must be removed.
        dtype: float32 (as the official code; use it for large layers on GPU) or float64.

    Returns:
        ``(new_weight, keep_mask)``: the reconstructed weight in ``weight``'s dtype and device,
        with every removed entry exactly 0.0, and the bool mask (True = kept, ``numel - k``
        True). With ``k == 0``: a copy of ``weight`` and an all-True mask.

    Raises:
        UserError (a ValueError): bad shapes or dtypes, ``k`` out of range, non-finite inputs,
            ``blocksize < 1``, ``percdamp < 0``, or a damped Hessian that is not positive definite.
    """
    return sparsegpt_levels(weight, hessian, [k], blocksize=blocksize, percdamp=percdamp,
                            forced=forced, dtype=dtype)[0]


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor,
                         hessian: torch.Tensor) -> float:
    """``tr((W' - W) H (W' - W)^T)`` in float64: with ``H = (2/N) sum X X^T``, twice the mean
    (over sequences) squared error of the layer output, the quantity SparseGPT minimises."""
    if weight.dim() != 2 or new_weight.shape != weight.shape:
        raise UserError(f"weights must both be 2-D of the same shape, got "
                        f"{tuple(weight.shape)} and {tuple(new_weight.shape)}")
    if hessian.shape != (weight.shape[1], weight.shape[1]):
        raise UserError(f"hessian must be ({weight.shape[1]}, {weight.shape[1]}), "
                        f"got {tuple(hessian.shape)}")
    delta = new_weight.detach().double() - weight.detach().to(new_weight.device).double()
    H = hessian.detach().to(device=delta.device, dtype=torch.float64)
    return float(((delta @ H) * delta).sum())
