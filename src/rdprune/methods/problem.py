"""What a pruning method is asked in one round (:class:`Problem`) and what it answers
(:class:`Allocation`): the interface every method of :mod:`rdprune.methods` implements as
``allocate(problem) -> Allocation``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from rdprune import cache
from rdprune.pruning.masks import Criterion

T = TypeVar("T")


@dataclass
class Problem:
    """What a method is asked to solve in one pruning round.

    Attributes:
        model: the current network (masked weights are exact zeros); must not be modified.
        layers: its prunable layers ``{name: module}`` in model order.
        target: fraction of the budget quantity to remove this round, in [0, 1): of the
            prunable weights (``budget="params"``) or of their dense MACs (``budget="flops"``).
        budget: ``"params"`` or ``"flops"``.
        pruned: per-layer number of weights already removed (a layer may not lose fewer).
        macs: dense MACs per sample of each layer; only a FLOPs budget needs them (else None).
        calibration: the calibration inputs ``[N, *input_shape]`` (the same every round).
        cache_dir: root of the stage caches (None: nothing cached).
        device: where to compute.
        progress: show progress bars.
        criterion: which weights of a layer go (magnitude, or wanda with its input norms); RD
            curves are measured with the criterion that will prune.
        validate: ``{layer: sparsity} -> validation loss`` of the model pruned so (lower is
            better), for methods that choose a hyperparameter on the validation split (ATP's
            beta); None where the data has no validation split.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    target: float
    budget: str
    pruned: list[int]
    macs: dict[str, int] | None
    calibration: torch.Tensor
    cache_dir: Path | None = None
    device: torch.device = torch.device("cpu")
    progress: bool = True
    criterion: Criterion = field(default_factory=Criterion)
    validate: Callable[[dict[str, float]], float] | None = None


class Allocation(dict):
    """``{layer name: sparsity}`` in model order, plus what the method measured on the way.

    Attributes:
        info: seconds, budgets, predicted distortion (plain values, logged per round).
        curves: the RD curves ``[layers, grid points]`` (rate-distortion methods), else None.
        grid: their grid sparsities, else None.
    """

    def __init__(self, layers: Iterable[str], sparsities: Iterable[float],
                 info: dict[str, Any] | None = None, curves: np.ndarray | None = None,
                 grid: np.ndarray | None = None) -> None:
        layers, sparsities = list(layers), [float(s) for s in sparsities]
        if len(layers) != len(sparsities):
            raise ValueError(f"{len(sparsities)} sparsities for {len(layers)} layers")
        super().__init__(zip(layers, sparsities))
        self.info = info or {}
        self.curves, self.grid = curves, grid


def cached_stage(
    cache_dir: Path | None, stage: str, key: str, compute: Callable[[], T]
) -> tuple[T, bool]:
    """:func:`rdprune.cache.cached` under ``cache_dir/stage``, or just ``compute()`` without one."""
    if cache_dir is None:
        return compute(), False
    return cache.cached(cache_dir / stage / f"{key}.pt", compute)
