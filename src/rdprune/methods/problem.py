"""What a pruning method is asked in one round (:class:`Problem`, built by :func:`build_problem`
for the pipeline and the API alike) and what it answers (:class:`Allocation`): the interface
every method implements as ``allocate(problem) -> Allocation``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from rdprune import cache
from rdprune.errors import UserError
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import kept_count, num_pruned
from rdprune.tasks import Task

T = TypeVar("T")


class Budget(str, Enum):
    """What a target counts: the prunable weights (``sparsity``), or their dense MACs
    (``flops_kept``)."""

    PARAMS = "params"
    FLOPS = "flops"


@dataclass
class Problem:
    """What a method is asked to solve in one pruning round.

    Attributes:
        model: the current network (masked weights are exact zeros); must not be modified.
        layers: its prunable layers ``{name: module}`` in model order.
        target: fraction of the budget quantity to remove this round, in [0, 1): of the
            prunable weights (``budget="params"``) or of their dense MACs (``budget="flops"``).
        budget: ``"params"`` or ``"flops"`` (a :class:`Budget` value).
        pruned: per-layer number of weights already removed (a layer may not lose fewer).
        macs: dense MACs per sample of each layer; only a FLOPs budget needs them (else None).
        calibration: the calibration inputs ``[N, *input_shape]`` (the same every round).
        task: the model's task (:mod:`rdprune.tasks`): units, profiler, synthetic inputs.
        cache_dir: root of the stage caches (None: nothing cached).
        device: where to compute.
        progress: show progress bars.
        criterion: which weights of a layer go, with the calibration statistics it reads,
            measured on the model as given; RD curves are measured with it.
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
    task: Task
    cache_dir: Path | None = None
    device: torch.device = torch.device("cpu")
    progress: bool = True
    criterion: Criterion = field(default_factory=Criterion)
    validate: Callable[[dict[str, float]], float] | None = None


def check_target(layers: Mapping[str, nn.Module], sparsity: float) -> None:
    """A sparsity target must be in [0, 1) and keep at least one weight."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or \
            not 0.0 <= sparsity < 1.0:
        raise UserError("sparsity must be in [0, 1) (fraction of weights removed), got "
                        f"{sparsity!r}")
    total = sum(m.weight.numel() for m in layers.values())
    if num_pruned(total, sparsity) >= total:
        largest = 1.0 - 1.0 / total
        raise UserError(f"sparsity {sparsity} removes all {total:,} prunable weights; the largest "
                        f"target that keeps one is {largest!r}")


def to_the_weight(sizes: Sequence[int], sparsities: Sequence[float], target: float,
                  pruned: Sequence[int] | None = None) -> list[float]:
    """Per-layer sparsities whose removed counts add up to ``num_pruned(sum(sizes), target)``
    exactly: each layer's ``s_l n_l`` rounded down or up (largest remainder first, ties to the
    earlier layer), never below its ``pruned`` weights nor above its size. Methods whose
    continuous solution is rounded layer by layer (uniform, ERK, the LLM methods) meet the
    global target to the weight this way, as the others do by construction."""
    n = np.asarray(sizes, dtype=np.int64)
    low = np.zeros_like(n) if pruned is None else np.asarray(pruned, dtype=np.int64)
    real = np.asarray(sparsities, dtype=np.float64) * n
    k = np.clip(np.floor(real + 1e-9).astype(np.int64), low, n)
    want = num_pruned(int(n.sum()), float(target))
    order = np.argsort(-(real - np.floor(real + 1e-9)), kind="stable")  # largest remainder
    while k.sum() != want:
        step = 1 if k.sum() < want else -1
        moved = False
        for i in (order if step > 0 else order[::-1]):
            if k.sum() == want:
                break
            if low[i] <= k[i] + step <= n[i]:
                k[i] += step
                moved = True
        if not moved:
            raise ValueError(f"cannot remove exactly {want} of {int(n.sum())} weights")
    return [float(a) / float(b) for a, b in zip(k, n)]


def build_problem(
    model: nn.Module, layers: Mapping[str, nn.Module], target: float, budget: str, *,
    calibration: torch.Tensor, task: Task, criterion: Criterion,
    masks: Mapping[str, torch.Tensor] | None = None, macs: Mapping[str, int] | None = None,
    cache_dir: str | Path | None = None, device: torch.device | None = None,
    progress: bool = True, validate: Callable[[dict[str, float]], float] | None = None,
) -> Problem:
    """The one way a :class:`Problem` is made (pipeline and API): the weights already removed
    from ``masks`` (keyed like ``layers``), MACs only for a FLOPs budget."""
    pruned = [0] * len(layers) if masks is None else [
        masks[k].numel() - kept_count(masks[k]) for k in layers]
    return Problem(
        model=model, layers=dict(layers), target=float(target), budget=Budget(budget).value,
        pruned=pruned, macs=dict(macs) if macs is not None and budget == Budget.FLOPS else None,
        calibration=calibration, task=task,
        cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else None,
        device=device if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu")),
        progress=progress, criterion=criterion, validate=validate)


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
