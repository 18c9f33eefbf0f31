"""The fast path for causal language models: only the blocks from the pruned layer's on run.

A decoder-only LM is a chain: embeddings -> block 0 -> ... -> block L-1 -> final norm -> lm_head.
Pruning a linear layer of block b changes nothing before block b, so per calibration chunk the
input of block b (and the arguments the model passes its blocks: position embeddings, masks) is
captured once by a dense forward stopped at block b, and each pruned variant runs block b, the
blocks after it and the final norm only; no KV cache is involved. The head is not run: the
squared error of the logits of a token is a quadratic form of the change ``d`` of its final
hidden state, ``||d W||^2 = d (W^T W) d^T`` (``W``: the head's ``[vocab, hidden]`` weight; its
bias cancels), computed in float64 with the Gram matrix ``W^T W`` (hidden x hidden instead of
hidden x vocab per token, and a reference of hidden instead of vocab values per token). Several grid points run stacked along
the batch (``grid_batch``; the pruned layer computes each variant with its own weight, the other
layers see one batch of ``grid_batch x chunk`` sequences). Rows may be single layers or groups of
layers of one block pruned together at the same sparsity (per-block curves, ``ours_block``).

Before profiling, the blocks and head run from block 0's captured input must reproduce the model's
logits within the model's own float32 noise (as the traced CNN path checks); a model whose
structure is not this chain (an unknown head, logit scaling, blocks that need different
arguments) falls back to the naive scheme with a warning. Distortions are those of
:mod:`rdprune.methods.rd.distortion` over the logits ``[tokens, vocab]`` of each calibration sequence (a
sample is a sequence).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdprune.methods.rd.distortion import Accumulator
from rdprune.pruning.layers import unwrap
from rdprune.pruning.masks import Criterion, kept_count, num_pruned
from rdprune.models.lm import block_index, out_in
from rdprune.methods.rd.profiling.common import check_grid, device_of, preserve_modes
from rdprune.methods.rd.profiling.store import Sink
from rdprune.progress import bar as progress_bar

_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
NOISE_FACTOR = 16  # as the traced CNN path: the head may differ by this many x the model's noise


class NotAChain(Exception):
    """The model is not an embeddings -> blocks -> norm -> head chain this path can run."""


class _Stop(Exception):
    """Ends a capturing forward at the block of interest."""


def structure(model: nn.Module) -> tuple[nn.ModuleList, nn.Module, nn.Module]:
    """The decoder blocks, the final norm and the output head of a :class:`CausalLM`."""
    hf = getattr(model, "hf", None)
    if hf is None:
        raise NotAChain("not a rdprune.models.lm.CausalLM")
    for name, m in hf.named_modules():
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks"):
            parent = hf.get_submodule(name.rpartition(".")[0])
            norm = next((getattr(parent, n) for n in _NORMS if hasattr(parent, n)), None)
            head = hf.get_output_embeddings()
            if norm is None or not isinstance(head, nn.Linear):
                raise NotAChain(f"no final norm ({'/'.join(_NORMS)}) or linear output head "
                                f"after {name}")
            return m, norm, head
    raise NotAChain("no decoder block list (layers / h / blocks)")


def _capture(model: nn.Module, block: nn.Module, x: torch.Tensor) -> tuple[tuple, dict]:
    """The arguments ``block`` is called with when the model runs on ``x`` (forward stopped)."""
    seen: list = []

    def hook(module, args, kwargs):
        seen.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise NotAChain("the block was not called")
    return seen[0]


def _repeat(value, b: int, g: int):
    """A block argument for ``g`` variants of a batch of ``b``: batch tensors repeated g times."""
    if g == 1:
        return value
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == b and b > 1:
        return value.repeat(g, *([1] * (value.dim() - 1)))
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, b, g) for v in value)
    return value


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


def _run_from(blocks, norm, head, b: int, hidden, args, kwargs) -> torch.Tensor:
    """Logits from block ``b``'s input on: blocks b.., final norm, head (None: the final
    hidden states, the head's input)."""
    h = hidden
    for block in blocks[b:]:
        out = block(h, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    h = norm(h)
    return h if head is None else head(h)


def _head_input(model: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the head is called with when the model runs on ``x``."""
    seen: list = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


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

    Arguments as :func:`rdprune.methods.rd.profiling.rd_curves` (``inputs``: token ids ``[N, T]``), plus
    ``criterion`` (which weights go at each grid point; default magnitude) and ``groups`` (rows
    of layer names pruned together, each within one block). Falls back to the naive scheme
    (with a warning) for a model that is not a block chain.
    """
    base = unwrap(model)
    grid = check_grid(grid, reduction)
    criterion = criterion or Criterion()
    rows = [list(g) for g in groups] if groups is not None else [[n] for n in layers]
    try:
        blocks, norm, head = structure(base)
        where = [{block_index(n) for n in row} for row in rows]
        if any(len(w) != 1 or None in w for w in where):
            raise NotAChain("a row's layers are not all in one decoder block")
    except NotAChain as exc:
        return _fallback(model, inputs, grid, reduction, layers, batch_size, progress, sink,
                         criterion, rows, f"not a block chain ({exc})")
    device = device_of(base, inputs)
    if grid_batch is None:
        grid_batch = 1 if device.type == "cpu" else 8
    out = np.zeros((len(rows), len(grid)), dtype=np.float64)
    with preserve_modes(base), torch.inference_mode():
        base.eval()
        xs = [inputs[i:i + batch_size].to(device) for i in range(0, len(inputs), batch_size)]
        mismatch = _mismatch(base, blocks, norm, head, xs[0], base(xs[0]))
        if mismatch:
            return _fallback(model, inputs, grid, reduction, layers, batch_size, progress, sink,
                             criterion, rows, mismatch)
        # the reference: every chunk's final hidden states; the head as its Gram matrix
        hs = [_head_input(base, head, x).double() for x in xs]
        gram = head.weight.detach().double().T @ head.weight.detach().double()
        vocab = head.weight.shape[0]
        block_of = [next(iter(w)) for w in where]
        caps: dict[int, list] = {}
        for ri in progress_bar(range(len(rows)), desc="RD curves (LM)", disable=not progress):
            if sink is not None and not sink.take(ri):
                continue
            start = time.perf_counter()
            b = block_of[ri]
            if b not in caps:  # the block's inputs, once per block (rows come in block order)
                caps = {b: [_capture(base, blocks[b], x) for x in xs]}
            out[ri] = _row(base, blocks, norm, b, rows[ri], layers, grid, reduction,
                           criterion, caps[b], hs, gram, vocab, grid_batch)
            if sink is not None:
                sink.put(ri, out[ri], time.perf_counter() - start)
    return out


def _row(base, blocks, norm, b, names, layers, grid, reduction, criterion, caps, hs, gram,
         vocab, grid_batch) -> np.ndarray:
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
    removed = {}
    for i, (n, m) in enumerate(zip(names, mods)):
        ks = sorted({c[i] for c in todo})
        removed.update({(n, k): idx for k, idx in zip(ks, criterion.removed(n, m, ks))})
    acc = Accumulator(len(todo), hs[0].device)
    for (args, kwargs), h in zip(caps, hs):
        hidden, rest = args[0], args[1:]
        bsz = hidden.shape[0]
        for start in range(0, len(todo), grid_batch):
            part = todo[start:start + grid_batch]
            g = len(part)
            swaps = {}
            for i, (n, m) in enumerate(zip(names, mods)):
                w = m.weight.detach()
                ws = [w.reshape(-1).index_fill(0, removed[n, c[i]], 0).view_as(w) for c in part]
                swaps[prefix[n]] = _Variants(m, ws)
            with _Swapped(base, swaps):
                out = _run_from(blocks, norm, None, b, _repeat(hidden, bsz, g),
                                _repeat(rest, bsz, g), _repeat(kwargs, bsz, g))
            d = out.double().reshape(g, bsz, -1, h.shape[-1]) - h  # [g, b, tokens, hidden]
            sums = torch.einsum("gbtd,de,gbte->gb", d, gram, d)  # ||d W^T||^2 per sequence
            acc.add_sums(sums, d.shape[2] * vocab, start)
    lookup = dict(zip(todo, acc.result(reduction, sum(len(h) for h in hs))))
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


def _mismatch(base, blocks, norm, head, x, y) -> str:
    """Why the chain from block 0's input does not give the model's logits (empty if it does).

    The tolerance is the model's own noise: the change of the logits when block 0's input moves
    by one ulp, times :data:`NOISE_FACTOR`, or 1000 ulp of ``max |logit|``, whichever is larger.
    """
    args, kwargs = _capture(base, blocks[0], x)
    got = _run_from(blocks, norm, head, 0, args[0], args[1:], kwargs)
    if got.shape != y.shape:
        return f"logits of shape {tuple(got.shape)}, the model gives {tuple(y.shape)}"
    noisy = _run_from(blocks, norm, head, 0, _nudge(args[0]), args[1:], kwargs)
    noise = float((noisy.double() - got.double()).abs().max())
    tol = max(1000 * torch.finfo(y.dtype).eps * float(y.abs().max()), NOISE_FACTOR * noise)
    err = float((got.double() - y.double()).abs().max())
    return "" if err <= tol + 1e-30 else f"the chain's logits differ by {err:.3g} > {tol:.3g}"


def _fallback(model, inputs, grid, reduction, layers, batch_size, progress, sink, criterion,
              rows, reason) -> np.ndarray:
    from rdprune.methods.rd.profiling.naive import rd_curves_naive

    warnings.warn(f"lm_curves: {reason}; falling back to the naive scheme (one full forward per "
                  "layer per grid point)", stacklevel=3)
    return rd_curves_naive(model, inputs, grid, reduction, layers=layers,
                           batch_size=batch_size, progress=progress, sink=sink,
                           criterion=criterion, groups=rows)
