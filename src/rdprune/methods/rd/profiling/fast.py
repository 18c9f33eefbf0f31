"""The traced fast path: only layer l's descendants run per grid point.

See the package docstring for what it computes and how it relates to the naive scheme.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from rdprune.methods.rd.distortion import Accumulator
from rdprune.errors import one_line
from rdprune.methods.rd.graph import Placement, TracedModel, Untraceable
from rdprune.pruning.layers import unwrap
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import kept_count, num_pruned
from rdprune.methods.rd.profiling.common import (
    Layers, check_grid, check_output, chunks, device_of, preserve_modes, resolve_layers,
)
from rdprune.methods.rd.profiling.naive import rd_curves_naive
from rdprune.methods.rd.profiling.store import Sink
from rdprune.progress import bar as progress_bar

_CHECK_SAMPLES = 4  # samples on which the traced graph is checked against the eager model
# The traced graph may differ from the eager model by this many times the model's own float32
# noise (its output change under a one-ulp input perturbation); see _trace_mismatch.
NOISE_FACTOR = 16


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
    sink: Sink | None = None,
    criterion: Criterion | None = None,
) -> np.ndarray:
    """Per-layer rate-distortion curves, computed without redoing layer-independent work.

    Args:
        model: the network (any train/eval mode; it is evaluated in eval mode and left untouched).
        inputs: calibration inputs ``[N, ...]``, already normalised; moved chunk by chunk to the
            model's device.
        grid: layer sparsities (fractions of weights removed, each in [0, 1]).
        reduction: ``"mean"`` or ``"worst"`` (see :mod:`rdprune.methods.rd.distortion`).
        layers: ``{name: module}`` or module names; default :func:`rdprune.pruning.layers.find_prunable`.
            Rows of the result follow this order.
        batch_size: most samples per forward pass (the memory bound). With ``grid_batch`` = g > 1
            each pass holds g grid points of ``batch_size // g`` samples.
        progress: show a tqdm bar over layers.
        grid_batch: grid points run together along the batch dimension; default 1 on CPU (where
            it measured slower: the larger working set falls out of cache) and 8 elsewhere. A
            layer whose variants cannot run stacked (the model reads the batch size other than
            through ``.shape`` / ``.size()``) runs point by point; one warning per call says
            how many layers did.
        fold_bn: fold eval-mode BatchNorm2d into the preceding Conv2d of the traced graph
            (changes float32 rounding: curves match the naive ones to float32 precision;
            ``False`` with ``channels_last=False``: bitwise).
        reuse: recompute only layer l's descendants (``False`` re-runs the whole graph per grid
            point; an ablation knob for benchmarks).
        autocast_dtype: run forwards under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16`` on CUDA); ``None`` = the model's own precision.
        channels_last: use channels-last memory format for 4-D activations and conv weights
            (faster conv kernels; changes float32 rounding, like ``fold_bn``).
        sink: measure only the layers ``sink.take(l)`` accepts and report each row to
            ``sink.put(l, row, seconds)`` as soon as it is measured (resumable profiling,
            :mod:`rdprune.methods.rd.profiling.store`); rows not measured stay zero.
        criterion: which weights go at each grid point (:class:`rdprune.pruning.masks.Criterion`;
            default magnitude).

    Returns:
        float64 array ``[L, K]``: row l = layer l, column k = ``grid[k]``.
    """
    base = unwrap(model)
    grid = check_grid(grid, reduction)
    criterion = criterion or Criterion()
    with preserve_modes(base):
        base.eval()
        names, mods = resolve_layers(base, inputs, layers)

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
                sink=sink, criterion=criterion,
            )  # fmt: skip

        if not criterion.zeros_only:
            return fallback(f"criterion {criterion.name} also changes the weights it keeps")
        try:
            traced = TracedModel(base, mods, fold_bn=fold_bn, channels_last=channels_last)
        except Untraceable as exc:
            return fallback(f"cannot use the traced fast path ({exc})")
        device = device_of(base, inputs)
        if grid_batch is None:
            grid_batch = 1 if device.type == "cpu" else 8
        grid_batch = max(1, int(grid_batch)) if traced.grid_batchable else 1
        chunk = max(1, int(batch_size) // grid_batch)
        ctx = Placement(device, autocast_dtype, channels_last)
        with torch.inference_mode():
            with ctx.autocast():
                ys = [traced.reference(x, ctx) for x in chunks(inputs, chunk, ctx)]
            x = next(chunks(inputs, min(_CHECK_SAMPLES, chunk), ctx))
            mismatch = _trace_mismatch(traced, base, x, replace(ctx, autocast_dtype=None))
        if mismatch:
            return fallback(f"the traced graph does not reproduce the model ({mismatch})")
        out = np.zeros((len(mods), len(grid)), dtype=np.float64)
        unbatched: list[str] = []
        with torch.inference_mode():
            for li, mod in enumerate(progress_bar(mods, desc="RD curves", disable=not progress)):
                if sink is not None and not sink.take(li):
                    continue
                start = time.perf_counter()
                out[li], failure = _fast_layer_curve(
                    traced, li, mod, grid, reduction, inputs, ys, chunk, grid_batch, reuse, ctx,
                    lambda counts, name=names[li], mod=mod: criterion.removed(name, mod, counts),
                )
                if failure:
                    unbatched.append(f"{names[li]}: {failure}")
                if sink is not None:
                    sink.put(li, out[li], time.perf_counter() - start)
        if unbatched:  # one warning per call, not one per layer
            warnings.warn(
                f"rd_curves: grid batching failed for {len(unbatched)} of {len(mods)} layers "
                f"(first {unbatched[0]}); they ran point by point",
                stacklevel=2,
            )
    return out


def _nudge(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every element moved by about one ulp (a fixed random sign per element)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    return x * (1 + torch.finfo(x.dtype).eps * sign)


def _trace_mismatch(traced: TracedModel, model: nn.Module, x: torch.Tensor, ctx: Placement) -> str:
    """Why the traced graph's unpruned output on ``x`` is not the model's (empty if it is).

    Guards against what tracing cannot see (e.g. an in-place update that other code reads later):
    a different function. Checked in the model's own precision (``ctx`` without autocast, which
    both would apply op by op alike). BN folding, channels-last and batch-size dependent kernels
    change rounding only, by an amount the model itself decides: its *noise*, the output change
    when the input moves by one ulp. The tolerance is the larger of :data:`NOISE_FACTOR` x that
    noise and 1000 ulp of ``max |output|``. On random-init EfficientNet-B0 and ResNet-50 with
    warmed BN, folding and channels-last stay within 2 x the noise (ResNet-50 at 32x32: 1.6 x,
    two thirds of the 1000-ulp floor); on an ill-conditioned model (tests: ``Cancelling``) they
    move the output by 10 x the floor and still stay within the noise. (Under bf16 autocast, that
    ResNet-50 moves by ~60 % with folding: a check in bf16 could not tell anything apart.) A
    different function is off by orders of magnitude more.
    """
    eager = model(x)
    check_output(eager)
    got = traced.reference(x, ctx)
    if got.shape != eager.shape:
        return f"output shape {tuple(got.shape)} != {tuple(eager.shape)}"
    noise = float((model(_nudge(x)).double() - eager.double()).abs().max())
    floor = 1000 * torch.finfo(eager.dtype).eps * float(eager.abs().max())
    tol = max(floor, NOISE_FACTOR * noise) + 1e-30
    err = float((got.double() - eager.double()).abs().max())
    return "" if err <= tol else f"max |difference| {err:.3g} > {tol:.3g}"


def _fast_layer_curve(
    traced: TracedModel,
    li: int,
    mod: nn.Module,
    grid: list[float],
    reduction: str,
    inputs: torch.Tensor,
    ys: list[torch.Tensor],
    chunk: int,
    grid_batch: int,
    reuse: bool,
    ctx: Placement,
    removed: Callable[[list[int]], list[torch.Tensor]],
) -> tuple[np.ndarray, str]:
    """One row of curves, and why grid batching failed for it (empty if it did not).

    Only distinct prune counts that remove a non-zero weight are run; ``removed(counts)`` gives
    the weights each count removes (chosen from the ORIGINAL weight, also when BN is folded).
    """
    weight = mod.weight.detach()
    numel = weight.numel()
    # zeros come first in magnitude order: pruning them is a no-op
    zeros = numel - kept_count(weight != 0)
    counts = [num_pruned(numel, s) for s in grid]
    todo = sorted({c for c in counts if c > zeros})
    row = np.zeros(len(grid), dtype=np.float64)
    if not todo or not traced.affects_output(li):
        return row, ""
    zeroed = removed(todo)
    failure = ""
    try:
        acc = _accumulate(traced, li, zeroed, inputs, ys, chunk, grid_batch, reuse, ctx)
    except Exception as exc:  # noqa: BLE001 - batched evaluation unsupported: go one by one
        if grid_batch == 1:
            raise
        failure = one_line(exc)
        acc = _accumulate(traced, li, zeroed, inputs, ys, chunk, 1, reuse, ctx)
    lookup = dict(zip(todo, acc.result(reduction, inputs.shape[0])))
    for j, c in enumerate(counts):
        if c > zeros:
            row[j] = lookup[c]
    return row, failure


def _accumulate(
    traced: TracedModel,
    li: int,
    zeroed: list[torch.Tensor],
    inputs: torch.Tensor,
    ys: list[torch.Tensor],
    chunk: int,
    group: int,
    reuse: bool,
    ctx: Placement,
) -> Accumulator:
    """Distortions of the variants ``zeroed`` of layer ``li``, ``group`` of them per forward."""
    acc = Accumulator(len(zeroed), ctx.device)
    with ctx.autocast():
        for x, y in zip(chunks(inputs, chunk, ctx), ys):
            start = 0
            for y_hat in traced.pruned_outputs(li, x, zeroed, ctx, group=group, reuse=reuse):
                acc.add(y_hat, y, start)
                start += y_hat.shape[0]
    return acc
