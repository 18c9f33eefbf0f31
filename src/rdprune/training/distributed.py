"""Data-parallel training (DDP): :func:`rdprune.training.train.fit` with ``devices > 1``.

The pipeline stays one process (caches, outputs and run directories are untouched); only the
training steps run in ``devices`` worker processes, one per GPU (CUDA, NCCL) or several on one CPU
(gloo, for tests). ``fit`` starts them itself, so the same config runs with ``python run.py`` on
one CPU, one GPU or several GPUs of one node; do not launch it with ``torchrun``.

What a run with ``devices = n`` keeps from a single-process run:

- **Data**: every step's batch is the single-process batch (same samples, same order, same
  per-sample augmentation seeds), cut into ``n`` contiguous equal shares, one per rank. With equal
  shares, DDP's average of the ranks' mean-loss gradients is the full batch's gradient, so a model
  without batch statistics (no BatchNorm) follows the single-process trajectory up to float
  rounding. BatchNorm normalises over each rank's share (plain DDP, no SyncBatchNorm).
- **Masks**: broadcast from rank 0, then compared by digest on every rank (a mismatch stops the
  run); each rank zeroes pruned gradients and weights exactly as a single process does.
- **Checkpoints**: rank 0 writes the same periodic checkpoint as a single process (a run can be
  resumed with any number of devices); at the end it hands the weights and history back to the
  caller's model. The logged loss is the mean over ranks; NaN on any rank stops every rank at
  the same step, and the caller gets :class:`rdprune.training.train.TrainingDivergedError`.
- **Stop signals** (:mod:`rdprune.training.preemption`): the parent forwards SIGUSR2/SIGTERM/SIGINT to the
  workers (a scheduler may signal only the parent); a signal on any rank stops every rank after
  the same step, rank 0 writes the checkpoint, and the parent hands the signal on (submitit
  requeues). If that handler returns, the workers are started again and resume from the
  checkpoint; unlike a single process, they then checkpoint only every ``checkpoint_every``
  steps, and a signal that reaches the workers after their last step's all-reduce costs the
  steps since the last periodic checkpoint.

A worker's exception is re-raised in the caller with its type and message (the worker's traceback
is chained above it); the other workers are stopped, none is left behind.

The module is longer than most: the parent's and the workers' halves of one protocol (payload,
signals, result, errors) read best side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException
from torch.nn.parallel import DistributedDataParallel

from rdprune import cache
from rdprune.data import Splits
from rdprune.errors import UserError
from rdprune.pruning.layers import unwrap
from rdprune.training.loop import Replica, autocast, masked_layers, run_steps
from rdprune.pruning.masks import check_masks
from rdprune.training.preemption import Guard, StageInterrupted

log = logging.getLogger(__name__)


class ReplicaMismatchError(RuntimeError):
    """Ranks of one data-parallel run hold different masks."""


def resolve_devices(devices: int | str, device: torch.device | str) -> int:
    """Number of training processes for ``devices`` (an int or "auto") on ``device``.

    Raises:
        UserError: not a positive integer, more GPUs than visible, or no usable backend.
    """
    device = torch.device(device)
    if devices == "auto":
        return max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise UserError(f"devices must be a positive integer or 'auto', got {devices!r}")
    if devices == 1:
        return 1
    if not dist.is_available():
        raise UserError(f"devices={devices} needs torch.distributed, which this torch build lacks")
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise UserError(
                f"device={device} with devices={devices}: the workers use GPUs 0..{devices - 1}; "
                "pick the GPUs with CUDA_VISIBLE_DEVICES and set device=cuda"
            )
        visible = torch.cuda.device_count()
        if devices > visible:
            raise UserError(f"devices={devices} but only {visible} GPU(s) are visible")
        if not dist.is_nccl_available():
            raise UserError(f"devices={devices} on CUDA needs NCCL, which this torch build lacks")
    elif device.type == "cpu":
        if not dist.is_gloo_available():
            raise UserError(f"devices={devices} on CPU needs gloo, which this torch build lacks")
    else:
        raise UserError(f"devices={devices} needs device cpu or cuda, got {device}")
    return devices


class Rank(Replica):
    """One worker of a data-parallel run (inside an initialised process group)."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    def wrap(self, model: nn.Module) -> nn.Module:
        # static_graph: models with parameters that never get a gradient (e.g. a defined but
        # unused module) train without find_unused_parameters' per-step graph search
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, static_graph=True)

    def batches(
        self, data: Splits, batch_size: int, seed: int, start: int, stop: int,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return data.train_batches(batch_size, seed, start, stop, self.rank, self.world,
                                  device=self.device)

    def guard(self) -> Guard:
        # a worker may get a signal twice (from the scheduler and from its parent): no escalation
        return Guard(escalate=False)

    def sync(self, loss: torch.Tensor, signum: int) -> tuple[float, int]:
        # the stop flag rides on the loss's all-reduce: no extra collective on ordinary steps
        both = torch.stack([loss.detach().float().reshape(()),
                            torch.tensor(float(signum > 0), device=loss.device)])
        dist.all_reduce(both)
        total, stopping = both.tolist()
        if stopping:  # every rank takes this branch: which signal (any rank's)
            which = torch.tensor([signum], device=loss.device)
            dist.all_reduce(which, op=dist.ReduceOp.MAX)
            signum = int(which.item())
        return total / self.world, signum

    def stop(self, guard: Guard, signum: int) -> None:
        # no rank exits (and gets its peers stopped) before rank 0's checkpoint is on disk
        dist.barrier()
        raise StageInterrupted(signum)  # the parent hands the signal on


def broadcast_masks(
    masks: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (one flat uint8 broadcast), on ``device``."""
    if not masks:
        return {}
    flat = torch.cat([m.reshape(-1) for m in masks.values()]).to(device, torch.uint8)
    dist.broadcast(flat, src=0)
    out, offset = {}, 0
    for name, mask in masks.items():
        out[name] = flat[offset : offset + mask.numel()].view(mask.shape).bool()
        offset += mask.numel()
    return out


def compare_digests(digests: Sequence[str], what: str) -> None:
    """Raise :class:`ReplicaMismatchError` unless every rank's digest equals rank 0's."""
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ReplicaMismatchError(f"{what} of rank(s) {differ} differ from rank 0's")


def gather_digests(obj: Any) -> list[str]:
    """Every rank's :func:`rdprune.cache.digest` of ``obj``, in rank order."""
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, cache.digest(obj))
    return digests


def fit(
    model: nn.Module,
    data: Splits,
    *,
    devices: int,
    device: torch.device | str,
    masks: Mapping[str, torch.Tensor] | None,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., Any] | None,
    batch_size: int,
    precision: str,
    desc: str,
    **settings: Any,
) -> list[dict[str, float]]:
    """:func:`rdprune.training.train.fit` over ``devices`` worker processes; same arguments and result.

    The model, data, masks and optimizer/scheduler factories reach the workers pickled, so they
    must be importable objects (``functools.partial`` or Hydra ``_partial_``, no lambdas).
    """
    device = torch.device(device)
    if batch_size % devices:
        raise UserError(
            f"batch size {batch_size} is not divisible by devices={devices}: each device takes "
            "an equal share of every batch (the batch size is the total over devices)"
        )
    autocast(device, precision)  # a bad precision fails here, not in every worker
    if "LOCAL_RANK" in os.environ or dist.is_initialized():
        raise UserError(
            f"devices={devices} starts its own worker processes: launch with python run.py, "
            "not torchrun (or set devices=1)"
        )
    payload = {"model": unwrap(model), "data": data, "masks": masks, "optimizer": optimizer,
               "scheduler": scheduler}
    spec = {
        "parent": os.getpid(),
        "device": device.type,
        "threads": max(1, torch.get_num_threads() // devices),
        "log_level": logging.getLogger("rdprune").getEffectiveLevel(),
        "settings": {"batch_size": batch_size, "precision": precision, "desc": desc, **settings},
    }
    workers: list[Any] = []

    def forward(signum: int) -> None:
        for p in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)

    checkpointing = settings.get("checkpoint") is not None
    with Guard(on_signal=forward) if checkpointing else Guard(signals=()) as guard:
        while True:
            try:
                result = _launch(payload, spec, devices, workers)
                break
            except StageInterrupted as e:  # rank 0 wrote the checkpoint of the last whole step
                if not guard.pending:  # a worker was signalled alone
                    guard.pending.append(e.signum)
                guard.hand_on()  # returns only if the handler did: resume from the checkpoint
        if guard.pending:  # arrived after the workers' last step: the rerun redoes the steps
            guard.hand_on()  # since the last periodic checkpoint
    if not result["in_sync"]:
        log.warning("%s: the ranks' final parameters differ; rank 0's are kept", desc)
    unwrap(model).load_state_dict(result["model"])
    model.to(device)
    model.train()
    if masks:
        check_masks(masked_layers(model, masks), masks, f"after {desc}")
    return result["history"]


def _launch(
    payload: dict[str, Any], spec: dict[str, Any], devices: int, workers: list[Any]
) -> dict[str, Any]:
    """Start the workers, wait for them, and return rank 0's result (``workers``: the live ones)."""
    tmp = Path(tempfile.mkdtemp(prefix="rdprune-ddp-"))
    try:
        try:
            torch.save(payload, tmp / "payload.pt")
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise UserError(
                f"{spec['settings']['desc']}: devices={devices} sends the model, data, optimizer "
                f"and scheduler to worker processes, but one of them cannot be pickled ({e}); use "
                "importable classes and functools.partial (Hydra _partial_), not lambdas or local "
                "functions"
            ) from e
        context = mp.start_processes(
            _worker, args=(devices, str(tmp), spec), nprocs=devices, join=False,
            start_method="spawn",
        )
        workers[:] = context.processes
        try:
            # after a worker's error, its peers get 5 s to end, then SIGTERM, 5 s, SIGKILL:
            # a checkpointing worker defers SIGTERM to a step it may never reach
            while not context.join(grace_period=5):
                pass
        except ProcessException as e:
            raise _worker_error(e, tmp, devices) from e
        finally:
            workers.clear()
            _stop(context.processes)
        return torch.load(tmp / "result.pt", map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(processes: Sequence[Any]) -> None:
    """Kill and reap worker processes still running (after an error or an interrupt).

    SIGKILL, not SIGTERM: a checkpointing worker defers SIGTERM to its next step, which a worker
    blocked in a collective (its peer failed) never reaches.
    """
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join()


def _worker_error(e: ProcessException, tmp: Path, world: int) -> BaseException:
    """The failed worker's own exception (same type and message), else a RuntimeError."""
    where = f"training worker {e.error_index} of {world}"
    with contextlib.suppress(Exception):  # a missing or unreadable file: the generic error
        error = pickle.loads((tmp / f"error-{e.error_index}.pkl").read_bytes())
        if isinstance(error, BaseException):
            error.add_note(f"(raised in {where}; its traceback is above)")
            return error
    return RuntimeError(f"{where} failed: {str(e).strip().splitlines()[0]}")


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the parent process dies.

    torch's spawn asks for SIGINT, which is ignored in processes started in the background (a
    shell's ``&``, nohup): a killed pipeline would leave its workers training on.
    """
    with contextlib.suppress(Exception):  # not Linux: no such call
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the request
        os._exit(1)


def _worker(rank: int, world: int, tmp: str, spec: dict[str, Any]) -> None:
    """Entry point of a worker process: train, or leave the exception for the parent."""
    _die_with_parent(spec["parent"])
    try:
        _train(rank, world, Path(tmp), spec)
    except BaseException as e:
        with contextlib.suppress(Exception):
            (Path(tmp) / f"error-{rank}.pkl").write_bytes(pickle.dumps(e))
        raise


def _train(rank: int, world: int, tmp: Path, spec: dict[str, Any]) -> None:
    logging.basicConfig(
        level=spec["log_level"] if rank == 0 else logging.WARNING,
        format=f"[rank {rank}][%(name)s][%(levelname)s] - %(message)s",
    )
    torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    # a file store in the run's private temp dir: no port to choose, none to collide on
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=(tmp / "store").as_uri(), rank=rank,
        world_size=world, **({"device_id": device} if cuda else {}),
    )
    try:
        payload = torch.load(tmp / "payload.pt", map_location="cpu", weights_only=False)
        model = payload["model"].to(device)
        masks = broadcast_masks(payload["masks"] or {}, device)
        compare_digests(gather_digests(masks), "masks")
        if rank == 0:  # every rank has loaded it (the gather above): a killed run leaks less
            (tmp / "payload.pt").unlink()
        history = run_steps(
            model, payload["data"], device=device, masks=masks or None,
            optimizer=payload["optimizer"], scheduler=payload["scheduler"],
            replica=Rank(rank, world, device), **spec["settings"],
        )
        compare_digests(gather_digests(masks), "masks after training")
        params = gather_digests(dict(unwrap(model).named_parameters()))
        if rank == 0:
            state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
            torch.save({"model": state, "history": history, "in_sync": len(set(params)) == 1},
                       tmp / "result.tmp")
            os.replace(tmp / "result.tmp", tmp / "result.pt")
    finally:
        dist.destroy_process_group()
