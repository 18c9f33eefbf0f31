"""The fast path for causal language models: only the blocks from the pruned layer's on run.

A decoder-only LM is a chain: embeddings -> block 0 -> ... -> block L-1 -> tail -> head, the tail
being the final norm (OPT: and ``project_out`` when its embeddings are narrower than its blocks).
Pruning a linear layer of block b changes nothing before block b, so per calibration chunk the
arguments the model passes each block (its own: Gemma's sliding-window and global blocks get
different masks and rotary tables) are captured once (:func:`rdprune.models.lm.block_calls`),
block b's input is computed once (block after block, as the rows come in block order), and each
pruned variant runs block b, the blocks after it and the tail only; no KV cache is involved. The
head is not run: the squared error of the logits of a token is a quadratic form of the change
``d`` of its final hidden state, ``||d W||^2 = d (W^T W) d^T`` (``W``: the head's ``[vocab,
hidden]`` weight; its bias cancels), computed in float64 with the Gram matrix ``W^T W`` (hidden x
hidden instead of hidden x vocab per token, and a reference of hidden instead of vocab values per
token). With final logit soft-capping (Gemma 2: ``logits = c tanh(logits / c)``) the logits are
not a quadratic form of ``d``: there the head and the cap run, against the model's logits.
Several grid points run stacked along the batch (``grid_batch``; the pruned layer computes each
variant with its own weight, the other layers see one batch of ``grid_batch x chunk``
sequences), except for an expert's linears of a mixture-of-experts block, which see the tokens
routed to them from the whole stacked batch (one variant at a time there). Rows may be single
layers or groups of layers of one block pruned together at the same sparsity (per-block curves,
``ours_block``).

Before profiling, the chain run from block 0's captured input must reproduce the model's logits
within the model's own float32 noise (as the traced CNN path checks); a model whose structure is
not this chain (an unknown head, logit scaling as Cohere's or Granite's, blocks not in one
``layers`` / ``h`` / ``blocks`` list) falls back to the naive scheme with one warning that says
why. Distortions are those of :mod:`rdprune.methods.rd.distortion` over the logits ``[tokens,
vocab]`` of each calibration sequence (a sample is a sequence).

(Over 300 lines: the chain, its capture and check, and the per-row loop belong together; the
block-call capture itself lives in :mod:`rdprune.models.lm`.)
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdprune.methods.rd.distortion import Accumulator
from rdprune.methods.rd.profiling.common import check_grid, device_of, preserve_modes
from rdprune.methods.rd.profiling.store import Sink
from rdprune.models.lm import (
    BlockCalls, NotAChain, block_calls, block_index, blocks_path, run_block,
)
from rdprune.models.moe import routed
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.layers import out_in, unwrap
from rdprune.pruning.masks import kept_count, num_pruned
from rdprune.progress import bar as progress_bar

__all__ = ["NotAChain", "Chain", "structure", "lm_curves"]

_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
NOISE_FACTOR = 16  # as the traced CNN path: the head may differ by this many x the model's noise


@dataclass
class Chain:
    """A causal LM as blocks -> tail -> head.

    Attributes:
        blocks: the decoder blocks.
        tail: what runs between the last block and the head, in order (the final norm; OPT's
            ``project_out``).
        head: the output projection (``nn.Linear``, ``[vocab, hidden]``).
        softcap: final logit soft-capping ``c`` (``logits = c tanh(logits / c)``), or None.
        where: the names found, for messages (``model.layers -> model.norm -> lm_head``).
    """

    blocks: nn.ModuleList
    tail: list[nn.Module]
    head: nn.Linear
    softcap: float | None
    where: str

    def final_hidden(self, b: int, hidden: torch.Tensor, calls: BlockCalls) -> torch.Tensor:
        """The head's input from block ``b``'s input ``hidden`` on."""
        for j in range(b, len(self.blocks)):
            hidden = run_block(self.blocks, j, hidden, calls)
        for module in self.tail:
            hidden = module(hidden)
        return hidden

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """The logits of the head's input ``final``."""
        y = self.head(final)
        return y if self.softcap is None else torch.tanh(y / self.softcap) * self.softcap


def structure(model: nn.Module) -> Chain:
    """The :class:`Chain` of a :class:`~rdprune.models.lm.CausalLM`.

    Raises:
        NotAChain: no block list, no final norm beside it, or a head that is not linear.
    """
    hf = getattr(model, "hf", None)
    if hf is None:
        raise NotAChain("not a rdprune.models.lm.CausalLM")
    path = blocks_path(hf)
    owner = path.rpartition(".")[0]
    parent = hf.get_submodule(owner)
    norm = next((n for n in _NORMS if hasattr(parent, n)), None)
    if norm is None:
        raise NotAChain(f"no final norm ({' / '.join(_NORMS)}) beside {path}")
    names = [n for n in (norm, "project_out") if isinstance(getattr(parent, n, None), nn.Module)]
    head = hf.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise NotAChain(f"the output head is a {type(head).__name__}, not a linear layer")
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    softcap = getattr(config, "final_logit_softcapping", None)
    prefix = f"{owner}." if owner else ""
    head_name = next((n for n, m in hf.named_modules() if m is head), "head")
    where = " -> ".join([path, *(prefix + n for n in names), head_name])
    return Chain(hf.get_submodule(path), [getattr(parent, n) for n in names], head,
                 float(softcap) if softcap else None, where)


def _repeat(value, b: int, g: int, memo: dict):
    """A block argument for ``g`` variants of a batch of ``b``: batch tensors repeated g times
    (each tensor once: blocks share their masks and rotary tables)."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == b and b > 1:
            if id(value) not in memo:
                memo[id(value)] = value.repeat(g, *([1] * (value.dim() - 1)))
            return memo[id(value)]
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, b, g, memo) for v in value)
    if isinstance(value, dict):
        return {k: _repeat(v, b, g, memo) for k, v in value.items()}
    return value


def _stacked(calls: BlockCalls, b: int, g: int) -> BlockCalls:
    """``calls`` for a batch of ``g`` stacked variants of its ``b`` sequences."""
    if g == 1:
        return calls
    memo: dict = {}
    return dataclasses.replace(calls, hidden=_repeat(calls.hidden, b, g, memo),
                               args=_repeat(calls.args, b, g, memo),
                               kwargs=_repeat(calls.kwargs, b, g, memo))


class _Variants(nn.Module):
    """Stands in for a linear layer: variant i of the stacked batch uses ``weights[i]``."""

    def __init__(self, module: nn.Module, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.w = torch.stack([out_in(module, w) for w in weights])  # [g, d_out, d_in]
        self.bias = module.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.w.shape[0]
        if g == 1:
            return F.linear(x, self.w[0], self.bias)
        xs = x.reshape(g, -1, x.shape[-1])
        y = torch.bmm(xs, self.w.transpose(1, 2).to(xs.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


class _Swapped:
    """Replace modules of a model for the duration of a ``with`` block."""

    def __init__(self, root: nn.Module, swaps: dict[str, nn.Module]) -> None:
        self.root, self.swaps, self.saved = root, swaps, {}

    def __enter__(self) -> None:
        for name, new in self.swaps.items():
            parent, _, attr = name.rpartition(".")
            holder = self.root.get_submodule(parent) if parent else self.root
            self.saved[name] = (holder, attr, getattr(holder, attr))
            setattr(holder, attr, new)

    def __exit__(self, *exc) -> None:
        for holder, attr, old in self.saved.values():
            setattr(holder, attr, old)


def _reference(model: nn.Module, head: nn.Module, x: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input and the model's logits when the model runs on ``x``."""
    seen: list = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        y = model(x)
    finally:
        handle.remove()
    return seen[0], y


def lm_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    grid: Sequence[float],
    reduction: str = "mean",
    *,
    layers: dict[str, nn.Module],
    batch_size: int = 16,
    progress: bool = True,
    sink: Sink | None = None,
    criterion: Criterion | None = None,
    groups: Sequence[Sequence[str]] | None = None,
    grid_batch: int | None = None,
) -> np.ndarray:
    """Rate-distortion curves of a causal LM, one row per layer (or per group of ``groups``).

    Arguments as :func:`rdprune.methods.rd.profiling.rd_curves` (``inputs``: token ids
    ``[N, T]``), plus ``criterion`` (which weights go at each grid point; default magnitude) and
    ``groups`` (rows of layer names pruned together, each within one block). Falls back to the naive scheme
    (with one warning) for a model that is not a block chain.
    """
    base = unwrap(model)
    grid = check_grid(grid, reduction)
    criterion = criterion or Criterion()
    rows = [list(g) for g in groups] if groups is not None else [[n] for n in layers]
    args = (model, inputs, grid, reduction, layers, batch_size, progress, sink, criterion, rows)
    try:
        chain = structure(base)
        where = [{block_index(n) for n in row} for row in rows]
        if any(len(w) != 1 or None in w for w in where):
            raise NotAChain("a row's layers are not all in one decoder block")
    except NotAChain as exc:
        return _fallback(*args, f"not a block chain ({exc})")
    device = device_of(base, inputs)
    if grid_batch is None:
        grid_batch = 1 if device.type == "cpu" else 8
    out = np.zeros((len(rows), len(grid)), dtype=np.float64)
    with preserve_modes(base), torch.inference_mode():
        base.eval()
        xs = [inputs[i:i + batch_size].to(device) for i in range(0, len(inputs), batch_size)]
        try:
            calls = [block_calls(base, chain.blocks, x) for x in xs]
        except NotAChain as exc:
            return _fallback(*args, f"not a block chain ({exc})")
        final, y = _reference(base, chain.head, xs[0])
        mismatch = _mismatch(chain, calls[0], y)
        if mismatch:
            return _fallback(*args, f"{chain.where}: {mismatch}")
        if chain.softcap is None:  # the reference: final hidden states; the head: W^T W
            refs = [final.double()] + [_reference(base, chain.head, x)[0].double()
                                       for x in xs[1:]]
            w = chain.head.weight.detach().double()
            gram = w.T @ w
        else:  # soft-capped logits: the reference is the logits
            refs = [y] + [_reference(base, chain.head, x)[1] for x in xs[1:]]
            gram = None
        del final, y
        block_of = [next(iter(w)) for w in where]
        at, hidden = 0, [c.hidden for c in calls]  # block ``at``'s inputs, per chunk
        for ri in progress_bar(range(len(rows)), desc="RD curves (LM)", disable=not progress):
            if sink is not None and not sink.take(ri):
                continue
            start = time.perf_counter()
            b = block_of[ri]
            if b < at:
                at, hidden = 0, [c.hidden for c in calls]
            for j in range(at, b):  # rows come in block order: each block's input once
                hidden = [run_block(chain.blocks, j, h, c) for h, c in zip(hidden, calls)]
            at = b
            out[ri] = _row(base, chain, b, rows[ri], layers, grid, reduction, criterion, calls,
                           hidden, refs, gram, grid_batch)
            if sink is not None:
                sink.put(ri, out[ri], time.perf_counter() - start)
    return out


def _row(base, chain, b, names, layers, grid, reduction, criterion, calls, hidden, refs, gram,
         grid_batch) -> np.ndarray:
    """One row: the distortion at each grid point of pruning ``names`` (in block b) together."""
    mods = [layers[n] for n in names]
    sizes = [m.weight.numel() for m in mods]
    zeros = [n - kept_count(m.weight.detach() != 0) for n, m in zip(sizes, mods)]
    counts = [tuple(num_pruned(n, s) for n in sizes) for s in grid]
    # points that prune only already-zero weights leave the output as it is: distortion 0
    todo = sorted({c for c in counts if any(k > z for k, z in zip(c, zeros))})
    row = np.zeros(len(grid), dtype=np.float64)
    if not todo:
        return row
    prefix = {n: _prefix(base, layers[n]) for n in names}
    if any(routed(base, p) for p in prefix.values()):
        grid_batch = 1  # an expert sees the tokens routed to it, of every stacked variant
    removed, rebuilt = {}, {}  # per (layer, count): removed indices, or the rebuilt weight
    for i, (n, m) in enumerate(zip(names, mods)):
        ks = sorted({c[i] for c in todo})
        if criterion.zeros_only:
            removed.update({(n, k): idx for k, idx in zip(ks, criterion.removed(n, m, ks))})
        else:  # SparseGPT: one Cholesky per layer for all its counts
            rebuilt.update({(n, k): w for k, (w, _) in zip(
                ks, criterion.pruned_weights(n, m, ks))})
    acc = Accumulator(len(todo), refs[0].device)
    vocab = chain.head.weight.shape[0]
    for c, h, ref in zip(calls, hidden, refs):
        bsz = h.shape[0]
        for start in range(0, len(todo), grid_batch):
            part = todo[start:start + grid_batch]
            g = len(part)
            swaps = {}
            for i, (n, m) in enumerate(zip(names, mods)):
                w = m.weight.detach()
                ws = [rebuilt[n, c_[i]] if rebuilt else
                      w.reshape(-1).index_fill(0, removed[n, c_[i]], 0).view_as(w) for c_ in part]
                swaps[prefix[n]] = _Variants(m, ws)
            with _Swapped(base, swaps):
                stacked = _stacked(dataclasses.replace(c, hidden=h), bsz, g)
                out = chain.final_hidden(b, stacked.hidden, stacked)
            if gram is None:  # soft-capped: the logits themselves
                acc.add(chain.logits(out).reshape(g, *ref.shape), ref, start)
                continue
            d = out.double().reshape(g, bsz, -1, ref.shape[-1]) - ref  # [g, b, tokens, hidden]
            sums = torch.einsum("gbtd,de,gbte->gb", d, gram, d)  # ||d W^T||^2 per sequence
            acc.add_sums(sums, d.shape[2] * vocab, start)
    lookup = dict(zip(todo, acc.result(reduction, sum(len(h) for h in hidden))))
    for j, c in enumerate(counts):
        if c in lookup:
            row[j] = lookup[c]
    return row


def _prefix(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


def _nudge(x: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    return x * (1 + torch.finfo(x.dtype).eps * sign)


def _mismatch(chain: Chain, calls: BlockCalls, y: torch.Tensor) -> str:
    """Why the chain from block 0's input does not give the model's logits ``y`` (empty if it
    does).

    The tolerance is the model's own noise: the change of the logits when block 0's input moves
    by one ulp, times :data:`NOISE_FACTOR`, or 1000 ulp of ``max |logit|``, whichever is larger.
    """
    got = chain.logits(chain.final_hidden(0, calls.hidden, calls))
    if got.shape != y.shape:
        return f"logits of shape {tuple(got.shape)}, the model gives {tuple(y.shape)}"
    noisy = chain.logits(chain.final_hidden(0, _nudge(calls.hidden), calls))
    noise = float((noisy.double() - got.double()).abs().max())
    tol = max(1000 * torch.finfo(y.dtype).eps * float(y.abs().max()), NOISE_FACTOR * noise)
    err = float((got.double() - y.double()).abs().max())
    return "" if err <= tol + 1e-30 else (
        f"the chain's logits differ from the model's by {err:.3g} > {tol:.3g} (a head that "
        "is not a linear layer, e.g. logit scaling?)")


def _fallback(model, inputs, grid, reduction, layers, batch_size, progress, sink, criterion,
              rows, reason) -> np.ndarray:
    from rdprune.methods.rd.profiling.naive import rd_curves_naive

    warnings.warn(f"lm_curves: {reason}; falling back to the naive scheme (one full forward per "
                  "layer per grid point)", stacklevel=3)
    return rd_curves_naive(model, inputs, grid, reduction, layers=layers,
                           batch_size=batch_size, progress=progress, sink=sink,
                           criterion=criterion, groups=rows)
