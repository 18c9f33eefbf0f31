"""Training entry point, learning-rate schedules, and evaluation.

:func:`fit` trains in this process or, with ``devices > 1``, in data-parallel worker processes
(:mod:`rdprune.training.distributed`); both run the one training loop of :mod:`rdprune.training.loop` (deterministic,
resumable, masks held at zero, checkpoint on a stop signal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdprune.training import distributed
from rdprune.data import Splits
from rdprune.errors import UserError
from rdprune.training.loop import TrainingDivergedError, run_steps
from rdprune.progress import bar as progress_bar

__all__ = ["SCHEDULES", "TrainingDivergedError", "correct", "evaluate", "fit", "lr_schedule",
           "predict", "top1"]

#: learning-rate schedules of ``recipe.dense_schedule`` / ``recipe.finetune_schedule``
SCHEDULES = ("constant", "cosine")


def lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of a training stage of ``steps`` optimizer steps.

    Args:
        optimizer: the stage's optimizer.
        kind: ``"constant"`` (the optimizer's lr throughout: the official CIFAR fine-tuning) or
            ``"cosine"`` (cosine annealing from the optimizer's lr to zero at step ``steps``).
        steps: the stage's number of optimizer steps.

    Raises:
        UserError: an unknown ``kind``.
    """
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    if kind == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise UserError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def fit(
    model: nn.Module,
    data: Splits,
    *,
    steps: int,
    batch_size: int,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., Any] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    masks: Mapping[str, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    precision: str = "32",
    desc: str = "train",
    log_every: int = 50,
    progress: bool = True,
    devices: int | str = 1,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``steps`` steps; returns the loss/lr history.

    The one place that decides between this process and data-parallel workers.

    Args:
        model: the network (moved to ``device``).
        data: the dataset splits; batches from ``data.train``.
        steps: number of optimizer steps.
        batch_size: samples per step (over all devices together).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_`` object).
        scheduler: ``optimizer -> LR scheduler`` stepped once per step, or None.
        seed: seeds the batch order, augmentation and the model's randomness.
        device: where to train ("cuda" with ``devices > 1``: GPUs 0 .. devices-1).
        masks: ``{layer name: bool mask}``; removed weights are kept exactly zero.
        checkpoint: file for resumable checkpoints (resumed from if present), written every
            ``checkpoint_every`` steps and on a stop signal (:mod:`rdprune.training.preemption`).
        checkpoint_every: steps between checkpoints.
        precision: "32" or "bf16" (autocast).
        desc: progress-bar label.
        log_every: steps per history entry.
        progress: show a progress bar.
        devices: training processes, one per device; above 1, data-parallel (DDP) workers
            each take an equal share of every step's batch (see :mod:`rdprune.training.distributed`);
            "auto": every visible GPU (1 on CPU).

    Raises:
        TrainingDivergedError: the loss is NaN/inf (the last checkpoint is kept).
        UserError: ``devices`` is unusable, or ``batch_size`` is not divisible by it.
    """
    settings = dict(
        steps=steps, batch_size=batch_size, optimizer=optimizer, scheduler=scheduler, seed=seed,
        masks=masks, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        precision=precision, desc=desc, log_every=log_every, progress=progress,
    )
    world = distributed.resolve_devices(devices, device)
    if world > 1:
        return distributed.fit(model, data, devices=world, device=device, **settings)
    device = torch.device(device)
    model.to(device)
    return run_steps(model, data, device=device, **settings)


@torch.inference_mode()
def predict(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits of ``model`` (eval mode, restored afterwards) on ``inputs``, as float32 on CPU."""
    was_training = model.training
    model.eval()
    try:
        out = [model(inputs[i : i + batch_size].to(device)).float().cpu()
               for i in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.inference_mode()
def correct(
    model: nn.Module, data: Splits, device: torch.device | str = "cpu", split: str = "test",
    progress: bool = False,
) -> torch.Tensor:
    """Whether each sample of a split is classified correctly (top-1): a bool tensor ``[N]``, in
    the split's order (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, y in progress_bar(data.loader(getattr(data, split)), desc=f"eval {split}",
                                 disable=not progress):
            out.append(model(x.to(device)).argmax(1).cpu() == y)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def top1(flags: torch.Tensor) -> float:
    """Top-1 accuracy in percent of :func:`correct`'s flags (nan for an empty split)."""
    return 100.0 * int(flags.sum()) / len(flags) if len(flags) else math.nan


def evaluate(
    model: nn.Module, data: Splits, device: torch.device | str = "cpu", split: str = "test",
    progress: bool = False,
) -> float:
    """Top-1 accuracy in percent on a split (eval mode, restored afterwards)."""
    return top1(correct(model, data, device, split, progress))
