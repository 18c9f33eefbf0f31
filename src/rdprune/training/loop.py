"""The one training loop: dense training, fine-tuning under masks, and ADMM's W-steps.

Training is step-based (``steps`` optimizer steps over drop-last epochs) and deterministic on CPU:
batches come from :meth:`rdprune.data.Splits.train_batches` as a function of ``(seed, step)`` and
the model's own randomness is reseeded at every step, so a run resumed from a checkpoint ends
exactly where an uninterrupted run would. A checkpoint holds everything the rest of the run
depends on: weights, optimizer and scheduler state, history, the partly averaged log window, and
the state of a :class:`Penalty`.

With masks, removed weights are held at exactly zero: their gradients are zeroed before the
optimizer step (no momentum or Adam state builds up) and the weights are re-masked after it (weight
decay and momentum cannot revive them). A :class:`Penalty` adds a term to the loss and its own
state to the checkpoints (:mod:`rdprune.training.admm`). While the loop runs with a checkpoint file, a stop
signal (SIGUSR2, SIGTERM, SIGINT) ends it after the step in flight with a checkpoint
(:mod:`rdprune.training.preemption`). A :class:`Replica` says how the process shares the run with others:
alone here, a data-parallel worker in :mod:`rdprune.training.distributed`. Callers use
:func:`rdprune.training.train.fit`, which picks one or several processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rdprune import cache
from rdprune.data import Splits, step_seed
from rdprune.errors import UserError
from rdprune.pruning.layers import unwrap
from rdprune.pruning.masks import apply_masks, check_masks, mask_gradients
from rdprune.training.preemption import Guard
from rdprune.progress import bar as progress_bar

log = logging.getLogger(__name__)


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


#: training precisions: float32, or bfloat16 autocast
PRECISIONS = ("32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context: ``precision`` is "32" (off; "fp32" is accepted too) or "bf16"."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision not in (*PRECISIONS, "fp32"):
        raise UserError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return contextlib.nullcontext()


def masked_layers(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The modules of ``model`` named in ``masks``."""
    modules = dict(unwrap(model).named_modules())
    return {name: modules[name] for name in masks}


class Replica:
    """How the training process takes part in a run: here, as the only one.

    :class:`rdprune.training.distributed.Rank` overrides these for the workers of a data-parallel run.
    """

    rank: int = 0
    world: int = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for training steps (e.g. a DistributedDataParallel wrapper)."""
        return model

    def batches(
        self, data: Splits, batch_size: int, seed: int, start: int, stop: int,
        device: torch.device | None = None,
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the training batches of steps ``start .. stop-1`` (built on
        ``device`` when the data is held in memory: no per-step host-to-device copy)."""
        return data.train_batches(batch_size, seed, start, stop, device=device)

    def guard(self) -> Guard:
        """The stop-signal guard of a loop that checkpoints."""
        return Guard()

    def sync(self, loss: torch.Tensor, signum: int) -> tuple[float, int]:
        """The step's loss averaged over all processes (a host sync, as ``.item()``), and the
        stop signal every process acts on (0: none)."""
        return loss.item(), signum

    def stop(self, guard: Guard, signum: int) -> None:
        """After the checkpoint of a stop: hand the signal on (see :meth:`Guard.hand_on`)."""
        guard.hand_on()


class Penalty(Protocol):
    """A term added to every step's loss, with state kept in the loop's checkpoints.

    :mod:`rdprune.training.admm` uses it for the W-step's ``rho/2 ||W - Z + U||^2``, and its
    :meth:`after_step` for the Z- and U-steps at the end of every ADMM iteration.

    Per step the loop calls, in this order: the penalty itself (added to the step's loss), the
    optimizer step (masks re-applied), :meth:`after_step`, then, every
    ``log_every`` steps and at the end, :meth:`log`, then the checkpoint, if one is due.
    """

    def __call__(self) -> torch.Tensor:
        """The penalty of the coming step (a float32 scalar on the model's device)."""

    def after_step(self, step: int) -> None:
        """Called after every optimizer step; ``step``: the global steps done so far (1 after
        the first). May update the penalty's state (it is checkpointed after this call)."""

    def log(self, row: dict[str, float]) -> dict[str, Any]:
        """The history row of the ``log_every`` steps up to ``row["step"]``, from the loop's row
        (``step``, mean ``loss`` and ``penalty``); does not change the penalty's state."""

    def where(self, step: int) -> str:
        """Where global step ``step`` is, for error messages."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (merged into the loop's checkpoint: keys other than ``step``,
        ``model``, ``optimizer``, ``scheduler``, ``history``, ``window``)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint; raise :class:`UserError` if it does not fit."""


def run_steps(
    model: nn.Module,
    data: Splits,
    *,
    steps: int,
    batch_size: int,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., Any] | None = None,
    seed: int = 0,
    device: torch.device,
    masks: Mapping[str, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    precision: str = "32",
    desc: str = "train",
    log_every: int = 50,
    progress: bool = True,
    replica: Replica | None = None,
    penalty: Penalty | None = None,
    save_at_end: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` (already on ``device``) in place for ``steps`` steps; returns the history.

    The arguments up to ``progress`` are those of :func:`rdprune.training.train.fit`.

    Args:
        replica: how this process shares the run (default: it is alone). Only rank 0 writes
            checkpoints and shows progress; every rank enforces the masks.
        penalty: a term added to the loss (its mean is logged as ``penalty``), told of every
            step done (:meth:`Penalty.after_step`); its rows make up the history.
        save_at_end: also checkpoint after the last step (a phase that can be continued).

    Returns:
        One row every ``log_every`` steps and at the end: ``step``, mean ``loss``, ``lr`` (or
        the penalty's rows), including those before a resume.

    Raises:
        TrainingDivergedError: the loss is NaN/inf (the last checkpoint is kept).
    """
    replica = replica or Replica()
    main = replica.rank == 0
    layers = masked_layers(model, masks) if masks else {}
    if masks:
        masks = {k: v.to(device) for k, v in masks.items()}
        apply_masks(layers, masks)
    opt = optimizer(model.parameters())
    sched = scheduler(opt) if scheduler is not None else None
    start, history, window = 0, [], {"loss": [], "penalty": []}
    if checkpoint is not None and (state := cache.try_load(checkpoint)) is not None:
        if penalty is not None:
            penalty.load_state_dict(state)  # first: it checks that the checkpoint fits
        unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        # checkpoints of rdprune <= 0.1.0 have no window: the first row averages fewer steps
        window = state.get("window", window)
        if masks:
            check_masks(layers, masks, f"in the checkpoint {checkpoint}")
        if main:
            log.info("%s: resuming from step %d (%s)", desc, start, checkpoint)
    if start >= steps:
        return history

    def save_checkpoint(step: int) -> None:
        if main:
            cache.save(checkpoint, {
                "step": step, "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "history": history, "window": window,
                **(penalty.state_dict() if penalty is not None else {}),
            })

    # the data's own loss (Splits: cross-entropy; a text corpus: next-token cross-entropy)
    loss_fn = getattr(data, "loss", None) or nn.CrossEntropyLoss()
    per_epoch = max(1, len(data.train) // batch_size) if masks else 0
    net = replica.wrap(model)
    net.train()
    bar = progress_bar(total=steps, initial=start, desc=desc, disable=not (progress and main))
    # without a checkpoint there is nothing to save: signals act at once, as anywhere else
    guard = replica.guard() if checkpoint is not None else Guard(signals=())
    with guard:
        batches = replica.batches(data, batch_size, seed, start, steps, device)
        for step, (x, y) in enumerate(batches, start=start):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # each rank its own dropout/drop-path draws; rank 0 (and a single process) as before
            torch.manual_seed(step_seed(seed, step) + replica.rank)
            with autocast(device, precision):
                loss = loss_fn(net(x), y)
            extra = penalty() if penalty is not None else None
            objective = loss if extra is None else loss.float() + extra
            # NaN or a stop signal on any rank: every rank sees it and acts at the same step
            value, signum = replica.sync(objective, guard.pending[0] if guard.pending else 0)
            if not math.isfinite(value):
                where = penalty.where(step) if penalty is not None else f"step {step}"
                raise TrainingDivergedError(
                    f"{desc}: loss is {value} at {where}; the last checkpoint "
                    f"({checkpoint or 'none'}) is kept - lower the learning rate or check the data"
                )
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if masks:
                mask_gradients(layers, masks)
            opt.step()
            if sched is not None:
                sched.step()
            if masks:
                apply_masks(layers, masks)
            window["loss"].append(value if extra is None else loss.item())
            if extra is not None:
                window["penalty"].append(extra.item())
            done = step + 1
            if penalty is not None:
                penalty.after_step(done)
            if done % log_every == 0 or done == steps:
                row = {"step": done, "loss": _mean(window["loss"])}
                if penalty is not None:
                    row = penalty.log(row | {"penalty": _mean(window["penalty"])})
                else:
                    row["lr"] = opt.param_groups[0]["lr"]
                history.append(row)
                window = {"loss": [], "penalty": []}
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            stop = bool(signum) or guard.draining
            periodic = done % checkpoint_every == 0 and done < steps
            save = checkpoint is not None and (
                stop or periodic or (save_at_end and done == steps))
            if masks and (save or done % per_epoch == 0):  # every epoch and before every save
                check_masks(layers, masks, f"at step {done} of {desc}")
            if save:
                save_checkpoint(done)
            if stop:
                replica.stop(guard, signum)
        if guard.pending and replica.world == 1:  # arrived during the last step, after its sync
            save_checkpoint(steps)
            guard.hand_on()
    bar.close()
    if masks:
        check_masks(layers, masks, f"after {desc}")
    return history


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
