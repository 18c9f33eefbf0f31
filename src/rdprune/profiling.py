"""Rate-distortion curves: the output distortion of pruning one layer at a time.

For every prunable layer l (model order) and every grid sparsity s, the ``num_pruned(n_l, s)``
smallest-magnitude weights of layer l *only* are zeroed (exactly the choice of
:func:`rdprune.masks.magnitude_mask`), the calibration set is run, and the logits are compared with
the logits ``Y`` of the model as given (eval mode; in iterative pruning the model already holds
zeros, and ``Y`` is *its* output):

* ``"mean"``:  mean over samples and logits of ``(Y - Y_hat)^2``;
* ``"worst"``: max over samples of the per-sample mean over logits of ``(Y - Y_hat)^2``.

Two implementations with one signature and the same result:

* :func:`rd_curves_naive` is the baseline (what the official code does): one full forward of the
  calibration set per layer per grid point, pruning the model's weights in place and restoring them.
* :func:`rd_curves` traces the model with ``torch.fx`` and never redoes work that does not depend on
  layer l: the values that feed layer l's descendants are computed once per calibration chunk and
  only the descendants are re-run per grid point, with ReLU / add results written into buffers
  nobody else reads. Grid points that cannot change the output are not run (``s = 0``, points that
  prune only weights that are already zero: distortion exactly 0; repeated prune counts: copied).
  By default it also folds eval-mode BatchNorm into the preceding conv (the mask is chosen from the
  original weight magnitudes, then applied to the fused weight) and runs convolutions in
  channels-last memory format, which CPU and GPU kernels run faster; these change float32 rounding
  only (per-layer max |difference| / max |naive| measured <= 1e-5, see
  ``results/bench_profiling.txt``). With ``fold_bn=False, channels_last=False`` it runs the same
  kernels on the same values as the naive scheme: curves bitwise equal to the naive ones (same
  ``batch_size``). ``grid_batch`` runs several grid points in one forward along the batch
  dimension (for GPUs; slower on CPU). If the model cannot be traced faithfully, it falls back to
  the naive scheme with a warning.

Both leave the model exactly as it was (bitwise-equal parameters and buffers, per-module train/eval
mode), also when an exception is raised, and process the calibration set in chunks of
``batch_size`` samples. Distortions are accumulated in float64.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rdprune.errors import UserError
from rdprune.fxgraph import Ctx, Engine, Plan, Untraceable
from rdprune.layers import PRUNABLE_TYPES, find_prunable, unwrap
from rdprune.masks import kept_count, magnitude_mask, magnitude_order, num_pruned
from rdprune.progress import bar as progress_bar

REDUCTIONS = ("mean", "worst")
_CHECK_SAMPLES = 4  # samples on which the traced graph is checked against the eager model

__all__ = ["REDUCTIONS", "gaussian_inputs", "rd_curves", "rd_curves_naive", "warm_batchnorm"]

Layers = Mapping[str, nn.Module] | Sequence[str] | None


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def gaussian_inputs(
    n: int,
    shape: Sequence[int],
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Zero-data calibration set: ``n`` i.i.d. N(0, 1) samples in normalised input space.

    Drawn on the CPU from a private generator, so the result depends only on ``seed`` (not on the
    device or the global RNG state).

    Args:
        n: number of samples.
        shape: shape of one sample, e.g. ``(3, 32, 32)``.
        seed: generator seed.
        device: where the returned tensor lives (default CPU).
        dtype: floating dtype of the samples.

    Returns:
        Tensor of shape ``[n, *shape]``.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((int(n), *shape), generator=gen, dtype=dtype).to(device)


@torch.no_grad()
def warm_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the plain average over ``batches``.

    For models at random initialisation (benchmarks, tests), whose running statistics would
    otherwise be the identity, so that folding BN is not a no-op. Runs ``model`` in train mode on
    each batch with a cumulative average (``momentum=None``), restores each BN's momentum, and
    returns the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = None
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()


def rd_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    grid: Sequence[float],
    reduction: str = "mean",
    *,
    layers: Layers = None,
    batch_size: int = 256,
    progress: bool = True,
    grid_batch: int | None = None,
    fold_bn: bool = True,
    reuse: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> np.ndarray:
    """Per-layer rate-distortion curves, computed without redoing layer-independent work.

    Args:
        model: the network (any train/eval mode; it is evaluated in eval mode and left untouched).
        inputs: calibration inputs ``[N, ...]``, already normalised; moved chunk by chunk to the
            model's device.
        grid: layer sparsities (fractions of weights removed, each in [0, 1]).
        reduction: ``"mean"`` or ``"worst"`` (see the module docstring).
        layers: ``{name: module}`` or module names; default :func:`rdprune.layers.find_prunable`.
            Rows of the result follow this order.
        batch_size: most samples per forward pass (the memory bound). With ``grid_batch`` = g > 1
            each pass holds g grid points of ``batch_size // g`` samples.
        progress: show a tqdm bar over layers.
        grid_batch: grid points run together along the batch dimension; default 1 on CPU (where
            it measured slower: the larger working set falls out of cache) and 8 elsewhere.
        fold_bn: fold eval-mode BatchNorm2d into the preceding Conv2d of the traced graph
            (changes float32 rounding: curves match the naive ones to float32 precision;
            ``False`` with ``channels_last=False``: bitwise).
        reuse: recompute only layer l's descendants (``False`` re-runs the whole graph per grid
            point; an ablation knob for benchmarks).
        autocast_dtype: run forwards under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16`` on CUDA); ``None`` = the model's own precision.
        channels_last: use channels-last memory format for 4-D activations and conv weights
            (faster conv kernels; changes float32 rounding, like ``fold_bn``).

    Returns:
        float64 array ``[L, K]``: row l = layer l, column k = ``grid[k]``.
    """
    base = unwrap(model)
    grid = _check_grid(grid, reduction)
    with _preserve_modes(base):
        base.eval()
        names, mods = _resolve_layers(base, inputs, layers)

        def fallback(reason: str) -> np.ndarray:
            warnings.warn(
                f"rd_curves: {reason}; falling back to the naive scheme "
                "(one full forward per layer per grid point)",
                stacklevel=3,
            )
            # channels-last inputs could change what a view aliases in such a model: plain format
            return rd_curves_naive(
                model, inputs, grid, reduction, layers=dict(zip(names, mods)),
                batch_size=batch_size, progress=progress, autocast_dtype=autocast_dtype,
            )  # fmt: skip

        try:
            engine = Engine(base, mods, fold_bn=fold_bn, channels_last=channels_last)
        except Untraceable as exc:
            return fallback(f"cannot use the traced fast path ({exc})")
        device = _device_of(base, inputs)
        if grid_batch is None:
            grid_batch = 1 if device.type == "cpu" else 8
        grid_batch = max(1, int(grid_batch))
        if engine.batch_stats:  # batch-statistics BN: samples of different grid points would mix
            grid_batch = 1
        chunk = max(1, int(batch_size) // grid_batch)
        ctx = Ctx(device, autocast_dtype, channels_last)
        with torch.inference_mode():
            with ctx.autocast():
                ys = [engine.full(x, ctx) for x in _chunks(inputs, chunk, ctx)]
                check = min(_CHECK_SAMPLES, chunk)
                eager = base(next(_chunks(inputs, check, ctx)))
            _check_output(eager)
            mismatch = _trace_mismatch(ys[0][:check], eager, autocast_dtype)
        if mismatch:
            return fallback(f"the traced graph does not reproduce the model ({mismatch})")
        with torch.inference_mode():
            out = np.zeros((len(mods), len(grid)), dtype=np.float64)
            for li, mod in enumerate(progress_bar(mods, desc="RD curves", disable=not progress)):
                out[li] = _fast_layer_curve(
                    engine, li, mod, grid, reduction, inputs, ys, chunk, grid_batch, reuse, ctx
                )
    return out


def rd_curves_naive(
    model: nn.Module,
    inputs: torch.Tensor,
    grid: Sequence[float],
    reduction: str = "mean",
    *,
    layers: Layers = None,
    batch_size: int = 256,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    grid_batch: int | None = None,
    fold_bn: bool = False,
    reuse: bool = True,
) -> np.ndarray:
    """Baseline: one full forward of the calibration set per layer per grid point.

    Same arguments, semantics and result as :func:`rd_curves`; the fast path's own options
    (``grid_batch``, ``fold_bn``, ``reuse``) are accepted, so callers can swap the two, and
    ignored. ``channels_last`` here converts the inputs only (the model is not touched). Each
    layer's weight is pruned in place, as the official code does, and restored bitwise
    afterwards, also on error.
    """
    del grid_batch, fold_bn, reuse  # fast-path options: nothing to do here
    base = unwrap(model)
    grid = _check_grid(grid, reduction)
    with _preserve_modes(base):
        base.eval()
        names, mods = _resolve_layers(base, inputs, layers)
        ctx = Ctx(_device_of(base, inputs), autocast_dtype, channels_last)
        with torch.inference_mode(), ctx.autocast():
            ys = [base(x) for x in _chunks(inputs, batch_size, ctx)]
        _check_output(ys[0])
        out = np.zeros((len(mods), len(grid)), dtype=np.float64)
        bar = progress_bar(total=len(mods) * len(grid), desc="RD curves (naive)",
                           disable=not progress)
        with bar:
            for li, mod in enumerate(mods):
                weight = mod.weight
                original = weight.detach().clone()
                try:
                    for j, s in enumerate(grid):
                        with torch.no_grad():
                            mask = magnitude_mask(original, s)
                            weight.copy_(torch.where(mask, original, torch.zeros_like(original)))
                        acc = _Accumulator(1, weight.device)
                        with torch.inference_mode(), ctx.autocast():
                            for x, y in zip(_chunks(inputs, batch_size, ctx), ys):
                                acc.add(base(x).unsqueeze(0), y)
                        out[li, j] = acc.result(reduction, inputs.shape[0])[0]
                        bar.update()
                finally:
                    with torch.no_grad():
                        weight.copy_(original)
    return out


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _check_grid(grid: Sequence[float], reduction: str) -> list[float]:
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown distortion reduction {reduction!r}; choose one of {REDUCTIONS}")
    grid = [float(s) for s in np.asarray(grid, dtype=np.float64).reshape(-1)]
    if not grid:
        raise UserError("the sparsity grid is empty")
    bad = [s for s in grid if not 0.0 <= s <= 1.0]
    if bad:
        raise UserError(f"grid sparsities must lie in [0, 1], got {bad[:3]}")
    return grid


@contextlib.contextmanager
def _preserve_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag (mixed train/eval models included)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _device_of(model: nn.Module, inputs: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return inputs.device


def _resolve_layers(
    model: nn.Module, inputs: torch.Tensor, layers: Layers
) -> tuple[list[str], list[nn.Module]]:
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise UserError("the calibration set is empty")
    if layers is None:
        example = inputs[:1].to(_device_of(model, inputs))
        layers = find_prunable(model, example)
    if isinstance(layers, Mapping):
        names, mods = list(layers.keys()), list(layers.values())
    else:
        names = list(layers)
        try:
            mods = [model.get_submodule(n) for n in names]
        except AttributeError as exc:
            raise UserError(f"unknown layer name: {exc}") from exc
    for name, mod in zip(names, mods):
        if not isinstance(mod, PRUNABLE_TYPES):
            raise UserError(f"layer {name!r} is a {type(mod).__name__}, not a Conv2d / Linear")
    return names, mods


def _trace_mismatch(
    traced: torch.Tensor, eager: torch.Tensor, autocast_dtype: torch.dtype | None
) -> str:
    """Why the traced graph's unpruned output is not the model's (empty if it is).

    Guards against what tracing cannot see (e.g. an in-place update that other code reads later).
    The tolerance leaves room for BN folding and kernel choice, not for a different function.
    """
    if traced.shape != eager.shape:
        return f"output shape {tuple(traced.shape)} != {tuple(eager.shape)}"
    eps = torch.finfo(autocast_dtype or eager.dtype).eps
    tol = (8 * eps if autocast_dtype is not None else 1000 * eps) * float(eager.abs().max()) + 1e-30
    err = float((traced.double() - eager.double()).abs().max())
    return "" if err <= tol else f"max |difference| {err:.3g} > {tol:.3g}"


def _check_output(y: object) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() < 1:
        raise UserError(
            f"the model must return one tensor of logits [batch, ...], got {type(y).__name__}"
        )


def _chunks(inputs: torch.Tensor, size: int, ctx: Ctx) -> Iterator[torch.Tensor]:
    for start in range(0, inputs.shape[0], size):
        yield ctx.fmt(inputs[start : start + size].to(ctx.device, non_blocking=True))


class _Accumulator:
    """Per-grid-point sum of squared errors and max per-sample mean squared error (float64)."""

    def __init__(self, k: int, device: torch.device):
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.maxes = torch.zeros(k, dtype=torch.float64, device=device)
        self.per_sample = 1

    def add(self, y_hat: torch.Tensor, y: torch.Tensor, start: int = 0) -> None:
        """Add outputs ``y_hat`` ``[k, b, ...]`` of grid points ``start .. start+k-1``.

        ``y`` ``[b, ...]`` is the unpruned reference for the same samples.
        """
        k, b = y_hat.shape[:2]
        # Differences of float32 values are exact in float64, so no extra rounding enters here.
        sq = (y_hat.reshape(k, b, -1).double() - y.reshape(1, b, -1).double()).square()
        self.per_sample = sq.shape[-1]
        part = slice(start, start + k)
        self.sums[part] += sq.sum(dim=(1, 2))
        self.maxes[part] = torch.maximum(self.maxes[part], sq.mean(dim=2).amax(dim=1))

    def result(self, reduction: str, n: int) -> np.ndarray:
        if reduction == "mean":
            return (self.sums / (n * self.per_sample)).cpu().numpy()
        return self.maxes.cpu().numpy()


def _fast_layer_curve(
    engine: Engine,
    li: int,
    mod: nn.Module,
    grid: list[float],
    reduction: str,
    inputs: torch.Tensor,
    ys: list[torch.Tensor],
    chunk: int,
    grid_batch: int,
    reuse: bool,
    ctx: Ctx,
) -> np.ndarray:
    """One row of curves: only distinct prune counts that remove a non-zero weight are run."""
    plan = engine.plans[li] if reuse else engine.no_reuse_plan(li, mod)
    weight = mod.weight.detach()
    numel = weight.numel()
    # zeros come first in magnitude order: pruning them is a no-op
    zeros = numel - kept_count(weight != 0)
    counts = [num_pruned(numel, s) for s in grid]
    todo = sorted({c for c in counts if c > zeros})
    row = np.zeros(len(grid), dtype=np.float64)
    if not todo or not plan.reaches_output:
        return row
    order = magnitude_order(weight)  # from the ORIGINAL magnitudes, also when BN is folded
    kb = grid_batch if plan.batchable else 1
    while True:
        try:
            values = _run_counts(engine, plan, weight, order, todo, inputs, ys, chunk, kb, ctx)
            break
        except Exception as exc:  # noqa: BLE001 - batched evaluation unsupported: go one by one
            if kb == 1:
                raise
            warnings.warn(
                f"rd_curves: grid batching failed for a layer ({exc}); running it point by point",
                stacklevel=3,
            )
            kb = 1
    lookup = dict(zip(todo, values.result(reduction, inputs.shape[0])))
    for j, c in enumerate(counts):
        if c > zeros:
            row[j] = lookup[c]
    return row


def _run_counts(
    engine: Engine,
    plan: Plan,
    weight: torch.Tensor,
    order: torch.Tensor,
    todo: list[int],
    inputs: torch.Tensor,
    ys: list[torch.Tensor],
    chunk: int,
    kb: int,
    ctx: Ctx,
) -> _Accumulator:
    """Distortion accumulators for the prune counts ``todo``, ``kb`` of them per forward."""
    acc = _Accumulator(len(todo), ctx.device)
    with ctx.autocast():
        for x, y in zip(_chunks(inputs, chunk, ctx), ys):
            b = x.shape[0]
            boundary = engine.upstream(plan, x, ctx)
            for start in range(0, len(todo), kb):
                group = todo[start : start + kb]
                # Pruned variants are built per group (cheap) to keep memory at kb weight copies.
                weights = {}
                for node in plan.sources:
                    base = engine.weighted[node][1] if node in engine.weighted else weight
                    flat = base.reshape(-1)
                    weights[node] = [flat.index_fill(0, order[:c], 0).view_as(base) for c in group]
                y_hat = engine.downstream(plan, boundary, weights, b, ctx)
                acc.add(y_hat.reshape(len(group), b, *y_hat.shape[1:]), y, start)
    return acc
