"""Training, fine-tuning under masks, and evaluation.

Training is step-based (``steps`` optimizer steps over drop-last epochs) and deterministic on CPU:
batches come from :meth:`rdprune.data.Splits.train_batches` and the model's own randomness is
reseeded at every step, so a run resumed from a checkpoint ends exactly where an uninterrupted run
would. With masks, removed weights are held at exactly zero: their gradients are zeroed before the
optimizer step (no momentum or Adam state builds up) and the weights are re-masked after it (weight
decay and momentum cannot revive them). With ``devices > 1`` the same loop runs in data-parallel
worker processes, one per GPU, over equal shares of the same batches (:mod:`rdprune.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdprune import cache
from rdprune.data import Splits, step_seed
from rdprune.errors import UserError
from rdprune.layers import unwrap
from rdprune.masks import apply_masks, check_masks, mask_gradients
from rdprune.progress import bar as progress_bar

log = logging.getLogger(__name__)


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context: ``precision`` is "32" (off) or "bf16"."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision not in ("32", "fp32"):
        raise UserError(f"precision must be 32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


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


def masked_layers(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The modules of ``model`` named in ``masks``."""
    modules = dict(unwrap(model).named_modules())
    return {name: modules[name] for name in masks}


class Replica:
    """How the training process takes part in a run: here, as the only one.

    :class:`rdprune.distributed.Rank` overrides these for the workers of a data-parallel run.
    """

    rank: int = 0
    world: int = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for training steps (e.g. a DistributedDataParallel wrapper)."""
        return model

    def batches(
        self, data: Splits, batch_size: int, seed: int, start: int, stop: int
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the training batches of steps ``start .. stop-1``."""
        return data.train_batches(batch_size, seed, start, stop)

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The step's loss averaged over all processes (a host sync, as ``.item()``)."""
        return loss.item()


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
        checkpoint: file for periodic resumable checkpoints (resumed from if present).
        checkpoint_every: steps between checkpoints.
        precision: "32" or "bf16" (autocast).
        desc: progress-bar label.
        log_every: steps per history entry.
        progress: show a progress bar.
        devices: training processes, one per device; above 1, data-parallel (DDP) workers
            each take an equal share of every step's batch (see :mod:`rdprune.distributed`);
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
    if devices != 1:
        from rdprune import distributed  # torch.distributed only when asked for

        world = distributed.resolve_devices(devices, device)
        if world > 1:
            return distributed.fit(model, data, devices=world, device=device, **settings)
    device = torch.device(device)
    model.to(device)
    return run_steps(model, data, device=device, **settings)


def run_steps(
    model: nn.Module,
    data: Splits,
    *,
    steps: int,
    batch_size: int,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., Any] | None,
    seed: int,
    device: torch.device,
    masks: Mapping[str, torch.Tensor] | None,
    checkpoint: str | Path | None,
    checkpoint_every: int,
    precision: str,
    desc: str,
    log_every: int,
    progress: bool,
    replica: Replica | None = None,
) -> list[dict[str, float]]:
    """The training loop of :func:`fit`, for a model already on ``device``.

    ``replica`` says how this process shares the run with others (default: it is alone). Only
    rank 0 writes checkpoints and shows progress; every rank enforces the masks.
    """
    replica = replica or Replica()
    main = replica.rank == 0
    layers = masked_layers(model, masks) if masks else {}
    if masks:
        masks = {k: v.to(device) for k, v in masks.items()}
        apply_masks(layers, masks)
    opt = optimizer(model.parameters())
    sched = scheduler(opt) if scheduler is not None else None
    start, history = 0, []
    if checkpoint is not None:
        state = cache.try_load(checkpoint)
        if state is not None:
            unwrap(model).load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                sched.load_state_dict(state["scheduler"])
            start, history = state["step"], state["history"]
            if masks:
                check_masks(layers, masks, f"in the checkpoint {checkpoint}")
            if main:
                log.info("%s: resuming from step %d (%s)", desc, start, checkpoint)
    if start >= steps:
        return history

    def save_checkpoint(step: int) -> None:
        cache.save(checkpoint, {
            "step": step, "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None, "history": history,
        })

    loss_fn = nn.CrossEntropyLoss()
    per_epoch = max(1, len(data.train) // batch_size)
    net = replica.wrap(model)
    net.train()
    window = []
    bar = progress_bar(total=steps, initial=start, desc=desc, disable=not (progress and main))
    batches = replica.batches(data, batch_size, seed, start, steps)
    for step, (x, y) in enumerate(batches, start=start):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # each rank its own dropout/drop-path draws; rank 0 (and a single process) as before
        torch.manual_seed(step_seed(seed, step) + replica.rank)
        with autocast(device, precision):
            loss = loss_fn(net(x), y)
        value = replica.mean_loss(loss)  # NaN on any rank: NaN on every rank, all stop here
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"{desc}: loss is {value} at step {step}; the last checkpoint "
                f"({checkpoint or 'none'}) is kept - lower the learning rate or check the data"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if masks:
            mask_gradients(layers, masks)
        opt.step()
        if sched is not None:
            sched.step()
        if masks:
            apply_masks(layers, masks)
        window.append(value)
        done = step + 1
        if done % log_every == 0 or done == steps:
            history.append({"step": done, "loss": sum(window) / len(window),
                            "lr": opt.param_groups[0]["lr"]})
            window = []
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        bar.update(1)
        save = checkpoint is not None and done % checkpoint_every == 0 and done < steps
        if masks and (save or done % per_epoch == 0):  # every epoch and before every save
            check_masks(layers, masks, f"at step {done} of {desc}")
        if save and main:
            save_checkpoint(done)
    bar.close()
    if masks:
        check_masks(layers, masks, f"after {desc}")
    return history


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
def evaluate(
    model: nn.Module, data: Splits, device: torch.device | str = "cpu", split: str = "test",
    progress: bool = False,
) -> float:
    """Top-1 accuracy in percent on a split (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in progress_bar(data.loader(getattr(data, split)), desc=f"eval {split}",
                                 disable=not progress):
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return 100.0 * correct / total if total else math.nan
