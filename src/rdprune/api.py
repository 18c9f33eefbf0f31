"""Prune your own model from Python: allocate, prune, fine-tune.

::

    import rdprune
    sparsities = rdprune.allocate(model, calib=images, sparsity=0.9, method="ours")
    masks = rdprune.prune(model, sparsities)            # zeros the weights, returns the masks
    rdprune.finetune(model, masks, loader, steps=500)   # optional; pruned weights stay zero

These are the functions ``run.py``'s pipeline runs, not a second implementation: the method comes
from the registry (:mod:`rdprune.methods.registry`), the problem from the one builder
(:func:`~rdprune.methods.problem.build_problem`), and everything that depends on the kind of model
from its task (:mod:`rdprune.tasks`: a ``transformers`` causal LM is wrapped, its layers named
as in the model). Units: *sparsity* is the fraction of weights removed, in [0, 1); ``flops_kept``
is the fraction of the dense conv/linear MACs kept. (Over 300 lines: the whole public API, with
its argument checks, in one module.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from rdprune.errors import UserError, UserTypeError, one_line
from rdprune.methods.problem import Allocation, build_problem, check_target
from rdprune.methods.registry import method as build_method
from rdprune.pruning.criteria import CRITERIA, Criterion, measure
from rdprune.pruning.flops import layer_macs
from rdprune.pruning.layers import is_prunable, unprunable_weights, unwrap
from rdprune.tasks import Task, adapt

log = logging.getLogger(__name__)

__all__ = ["allocate", "calibration_tensor", "check_target", "finetune", "make_method", "prune"]


def make_method(method: str | Any, **options: Any) -> Any:
    """A method object by name (``options``: the ``rd.*`` options of ``ours*``, the
    hyperparameters of the others), or ``method`` itself.

    Raises:
        UserError: unknown name, or options the method does not take.
    """
    if not isinstance(method, str):
        if options:
            raise UserError("options are for a method given by name; configure the object itself")
        return method
    from rdprune.methods.registry import info

    if info(method).profiles:
        return build_method(method, options=options)
    return build_method(method, **options)


def calibration_tensor(calib: torch.Tensor | Iterable[Any]) -> torch.Tensor:
    """The calibration inputs as one tensor ``[N, ...]``.

    Args:
        calib: a tensor of inputs, or a DataLoader / iterable of batches (a batch is a tensor of
            inputs or an ``(inputs, labels, ...)`` tuple).
    """
    if isinstance(calib, torch.Tensor):
        x = calib
    else:
        if not isinstance(calib, (DataLoader, Iterable)):
            raise UserTypeError(
                f"calib must be a tensor or a DataLoader, got {type(calib).__name__}")
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calib]
        if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
            raise UserError("calib yields no tensor batches")
        x = torch.cat(batches)
    return x


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _layers(model: nn.Module, task: Task, example: torch.Tensor) -> dict[str, nn.Module]:
    """The model's prunable layers, or a one-line error (no layer, or input the model rejects);
    warns with the count of weights they leave dense."""
    try:
        layers = task.prunable(model, example)
    except Exception as e:  # noqa: BLE001 - the model's own error, reported in one line
        raise UserError(f"{type(unwrap(model)).__name__} rejects an input of shape "
                        f"{tuple(example.shape)} ({one_line(e)})") from None
    if not layers:
        raise UserError(f"{type(unwrap(model)).__name__} has no Conv2d or Linear layer to prune")
    fused = [n for n, m in unwrap(model).named_modules() if isinstance(m, nn.MultiheadAttention)]
    if fused:
        outside = unprunable_weights(model, layers)
        dense = sum(v for k, v in outside.items() if k.startswith(tuple(f + "." for f in fused)))
        log.warning("%d nn.MultiheadAttention modules keep their %s weights dense (fused "
                    "attention is not a prunable layer): call "
                    "rdprune.models.unfuse_attention(model) first to prune them too",
                    len(fused), f"{dense:,}")
    return layers


def allocate(
    model: nn.Module,
    calib: torch.Tensor | Iterable[Any],
    sparsity: float | None = None,
    method: str | Any = "ours",
    *,
    flops_kept: float | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    criterion: str = "magnitude",
    **options: Any,
) -> Allocation:
    """Per-layer sparsities for ``model`` under a global target; the model is not modified.

    Args:
        model: the network (on its device; eval mode is used and restored), or a
            ``transformers`` causal LM (``calib``: token ids; its decoder blocks' linears).
        calib: calibration inputs: a tensor ``[N, ...]`` or a DataLoader (see
            :func:`calibration_tensor`); always checked to run.
        sparsity: global fraction of prunable weights removed, in [0, 1).
        method: a name of :mod:`rdprune.methods.registry` (``"ours"``, ``"ours_zerodata"``,
            ``"lamp"``, ``"global_magnitude"``, ``"erk"``, ``"uniform"``, ``"uniform_plus"``;
            for a language model also ``"ours_block"``, ``"owl"``, ``"dlp"``, ``"atp"`` (give
            ``beta=``), ``"alpha_pruning"``, ``"evopress"``), or a method object.
        flops_kept: instead of ``sparsity``: the fraction of the dense conv/linear MACs kept, in
            (0, 1] (``ours`` only: the DP solves under a MACs budget).
        masks: masks already applied (iterative pruning): no layer loses fewer weights.
        layers: the prunable layers ``{name: module}`` (default: every Conv2d / Linear that runs).
        cache_dir: cache RD curves and DP solutions there (content-hashed), as the pipeline does.
        progress: show progress bars.
        criterion: which weights of a layer go (``magnitude``, ``wanda`` or ``sparsegpt``):
            ``ours`` measures its curves with it (pass the same to :func:`prune`).
        **options: the method's options: ``grid_points``, ``reduction``, ``batch_size``, ``tol``,
            ``calib_seed``, ``estimator`` of ``ours`` (see
            :class:`rdprune.methods.rd.RateDistortion`); the hyperparameters of the others.

    Returns:
        ``{layer name: sparsity}`` in model order (an :class:`~rdprune.methods.problem.Allocation`,
        which also carries ``info``, and for ``ours`` the ``curves`` and ``grid``).

    Raises:
        UserError: a bad target, method or option, a model without prunable layers, or a
            calibration batch the model rejects (one line each).
    """
    solver = make_method(method, **options)
    x = calibration_tensor(calib)
    model, prefix, task = adapt(model)
    task.check_calibration(x)
    device = _device(model)
    example = x[:1].to(device)
    if layers is None:
        layers = _layers(model, task, example)
    else:
        layers = {prefix + k: v for k, v in layers.items()}
    if (sparsity is None) == (flops_kept is None):
        raise UserError("give exactly one target: sparsity=... or flops_kept=...")
    if flops_kept is None:
        check_target(layers, sparsity)
        budget, target = "params", float(sparsity)
    else:
        if isinstance(flops_kept, bool) or not isinstance(flops_kept, (int, float)) or \
                not 0.0 < flops_kept <= 1.0:
            raise UserError(f"flops_kept must be in (0, 1], got {flops_kept!r}")
        budget, target = "flops", 1.0 - float(flops_kept)
    solver.check(layers, target, budget, task)
    problem = build_problem(
        model, layers, target, budget, calibration=x, task=task,
        criterion=measure(criterion, model, layers, x, device=device),
        masks=None if masks is None else {prefix + k: v for k, v in masks.items()},
        # counting MACs runs the model once more: only a FLOPs budget needs them
        macs=layer_macs(model, task.mac_sample(example), list(layers)) if budget == "flops"
        else None, cache_dir=cache_dir, device=device, progress=progress)
    alloc = solver.allocate(problem)
    return Allocation([k[len(prefix):] for k in alloc], alloc.values(), alloc.info,
                      curves=alloc.curves, grid=alloc.grid)


def prune(
    model: nn.Module,
    sparsities: Mapping[str, float],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    criterion: str | Criterion = "magnitude",
    calib: torch.Tensor | Iterable[Any] | None = None,
    sequential: bool = True,
) -> dict[str, torch.Tensor]:
    """Remove each layer's weights by ``criterion``, in place; returns the masks.

    Args:
        model: the network (or a ``transformers`` causal LM); its layers named in
            ``sparsities`` are pruned.
        sparsities: ``{layer name: fraction of its weights removed}`` (e.g. :func:`allocate`'s).
        masks: masks already applied: weights removed before stay removed.
        criterion: ``magnitude`` (smallest ``|w|`` of the layer), ``wanda`` (smallest
            ``|w| * ||x||`` per output row), ``sparsegpt`` (OBS choice and reconstruction of the
            other weights); the last two need ``calib``. Or a
            :class:`~rdprune.pruning.criteria.Criterion` with its statistics.
        calib: calibration inputs of the data criteria.
        sequential: a language model is pruned block by block, each block's statistics taken
            from the outputs of the blocks already pruned (the published protocol of Wanda and
            SparseGPT); False: every layer's statistics from the model as given.

    Returns:
        ``{layer name: bool mask}`` (True = kept), on the weights' device.
    """
    wrapped, prefix, task = adapt(unwrap(model))
    layers = {}
    for name in sparsities:
        try:
            layers[prefix + name] = wrapped.get_submodule(prefix + name)
        except AttributeError:
            raise UserError(f"the model has no layer {name!r}") from None
        if not is_prunable(layers[prefix + name]):
            raise UserTypeError(f"layer {name!r} is a {type(layers[prefix + name]).__name__}, "
                                "not a Conv2d / Linear")
    x = calibration_tensor(calib) if calib is not None else None
    if x is not None:
        task.check_calibration(x)
    if isinstance(criterion, Criterion):
        crit: Criterion | str = Criterion(criterion.name, None if criterion.stats is None else
                                          {prefix + k: v for k, v in criterion.stats.items()})
    elif criterion not in CRITERIA:
        raise UserError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    else:
        crit = criterion
    new = task.prune(wrapped, layers, {prefix + k: float(s) for k, s in sparsities.items()},
                     crit, x, None if masks is None else
                     {prefix + k: v for k, v in masks.items()}, sequential=sequential)
    return {k[len(prefix):]: v for k, v in new.items()}


class LoaderData:
    """A DataLoader (or any re-iterable of ``(inputs, labels)`` batches) as training data.

    :func:`rdprune.training.train.fit` asks its data for the batches of steps ``start .. stop-1``;
    a loader is cycled, epoch after epoch, in its own order (so resuming is exact only if the
    loader's order is deterministic). The loss is the classification cross-entropy (a language
    model's batches: ``(ids, ids)``, the next-token cross-entropy).
    """

    def __init__(self, loader: Iterable[Any], loss: Callable[..., torch.Tensor]) -> None:
        self.loader, self.loss = loader, loss
        self.train = getattr(loader, "dataset", None) or list(range(len(loader)))

    def train_batches(self, batch_size: int, seed: int, start: int, stop: int,
                      rank: int = 0, world: int = 1, device: torch.device | None = None):
        if world != 1:
            raise UserError("rdprune.finetune on a DataLoader trains in one process (devices=1)")
        step = 0
        while step < stop:
            empty = True
            for batch in self.loader:
                empty = False
                if step >= start:
                    yield batch[0], batch[1]
                step += 1
                if step >= stop:
                    return
            if empty:
                raise UserError("the training loader yields no batches")


def finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    data: Iterable[Any],
    *,
    steps: int,
    batch_size: int | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    schedule: str = "constant",
    seed: int = 0,
    precision: str = "32",
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``steps`` steps with the pruned weights held at exactly zero.

    Args:
        model: the pruned network, on the device to train on.
        masks: :func:`prune`'s masks.
        data: a DataLoader of ``(inputs, labels)`` (cycled), or a :class:`rdprune.data.Splits`.
        steps: optimizer steps.
        batch_size: samples per step (default: the DataLoader's; required for a Splits).
        optimizer: ``params -> Optimizer`` (default: AdamW lr 3e-4, the official CIFAR recipe).
        schedule: learning rate over the steps: ``"constant"`` or ``"cosine"``.
        seed: seeds the model's own randomness at each step (and a Splits' batches).
        precision: ``"32"`` or ``"bf16"`` (autocast).
        checkpoint: file for resumable checkpoints.
        progress: show a progress bar.

    Returns:
        The loss / learning-rate history.
    """
    from rdprune.data import Splits
    from rdprune.training.train import fit, lr_schedule

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"steps must be a non-negative integer, got {steps!r}")
    wrapped, prefix, task = adapt(unwrap(model))
    if isinstance(data, Splits):
        source = data
    else:
        source = LoaderData(data, task.loss)
    batch_size = batch_size or getattr(data, "batch_size", None)
    if not batch_size:
        raise UserError("give batch_size= (the data has none)")
    return fit(
        wrapped, source, steps=steps, batch_size=batch_size,
        optimizer=optimizer or functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.01),
        scheduler=functools.partial(lr_schedule, kind=schedule, steps=steps), seed=seed,
        device=_device(wrapped), masks={prefix + k: v for k, v in masks.items()},
        checkpoint=checkpoint, precision=precision, desc="fine-tune", progress=progress,
    )
