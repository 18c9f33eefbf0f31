"""What both curve implementations share: argument checks, mode restoring, chunking."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rdprune.methods.rd.distortion import check_reduction
from rdprune.errors import UserError
from rdprune.methods.rd.graph import Placement
from rdprune.pruning.layers import find_prunable, is_prunable

Layers = Mapping[str, nn.Module] | Sequence[str] | None


def check_grid(grid: Sequence[float], reduction: str) -> list[float]:
    """The grid as floats, after checking it and ``reduction`` (one-line UserErrors)."""
    check_reduction(reduction)
    grid = [float(s) for s in np.asarray(grid, dtype=np.float64).reshape(-1)]
    if not grid:
        raise UserError("the sparsity grid is empty")
    bad = [s for s in grid if not 0.0 <= s <= 1.0]
    if bad:
        raise UserError(f"grid sparsities must lie in [0, 1], got {bad[:3]}")
    return grid


@contextlib.contextmanager
def preserve_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag (mixed train/eval models included)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def device_of(model: nn.Module, inputs: torch.Tensor) -> torch.device:
    """Where the model's parameters live (the inputs' device for a model without any)."""
    for p in model.parameters():
        return p.device
    return inputs.device


def resolve_layers(
    model: nn.Module, inputs: torch.Tensor, layers: Layers
) -> tuple[list[str], list[nn.Module]]:
    """Names and modules of the layers to profile (``None``: :func:`find_prunable`'s)."""
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise UserError("the calibration set is empty")
    if layers is None:
        example = inputs[:1].to(device_of(model, inputs))
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
        if not is_prunable(mod):
            raise UserError(f"layer {name!r} is a {type(mod).__name__}, not a Conv2d / Linear")
    return names, mods


def check_output(y: object) -> None:
    """Refuse (UserError) a model that does not return one tensor of logits."""
    if not isinstance(y, torch.Tensor) or y.dim() < 1:
        raise UserError(
            f"the model must return one tensor of logits [batch, ...], got {type(y).__name__}"
        )


def chunks(inputs: torch.Tensor, size: int, ctx: Placement) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``size`` inputs on ``ctx``'s device, in ``ctx``'s memory format."""
    for start in range(0, inputs.shape[0], size):
        yield ctx.fmt(inputs[start : start + size].to(ctx.device, non_blocking=True))
