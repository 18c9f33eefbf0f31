"""Prune your own model from Python: allocate, prune, fine-tune.

::

    import rdprune
    sparsities = rdprune.allocate(model, calib=images, sparsity=0.9, method="ours")
    masks = rdprune.prune(model, sparsities)            # zeros the weights, returns the masks
    rdprune.finetune(model, masks, loader, steps=500)   # optional; pruned weights stay zero

These are the functions ``run.py``'s pipeline runs (:mod:`rdprune.run.pipeline` calls them with the
method built from ``conf/method``), not a second implementation. Units: *sparsity* is the fraction
of weights removed, in [0, 1); ``flops_kept`` is the fraction of the dense conv/linear MACs kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from rdprune.pruning.statistics import input_norms
from rdprune.methods.baselines import BASELINES
from rdprune.errors import UserError, UserTypeError, one_line
from rdprune.pruning.flops import layer_macs
from rdprune.pruning.layers import find_prunable, is_prunable, unwrap
from rdprune.pruning.masks import (
    CRITERIA,
    Criterion,
    apply_masks,
    check_criterion,
    check_masks,
    kept_count,
    num_pruned,
)
from rdprune.methods.llm_baselines import LM_BASELINES
from rdprune.methods import Allocation, Baseline, LMBaseline, Problem, rate_distortion
from rdprune.models.lm import CausalLM

#: the paper's method and its variants (``ours_zerodata``: curves on synthetic inputs;
#: ``ours_block``: one curve per decoder block of a language model)
RD_METHODS = {"ours": ("data", "layer"), "ours_zerodata": ("synthetic", "layer"),
              "ours_block": ("data", "block")}
#: method names :func:`allocate` accepts (the last three: language models only)
METHODS = (*RD_METHODS, *BASELINES, *LM_BASELINES)


def make_method(method: str | Any, **options: Any) -> Any:
    """A method object by name (``options``: the RD options of ``ours*``, the hyperparameters
    of ``owl`` / ``atp`` / ``alpha_pruning``), or ``method`` itself.

    Raises:
        UserError: unknown name, or options given to a method that has none.
    """
    if not isinstance(method, str):
        if options:
            raise UserError("options are for a method given by name; configure the object itself")
        return method
    if method in RD_METHODS:
        calibration, granularity = RD_METHODS[method]
        return rate_distortion(name=method, calibration=calibration, options=options,
                               granularity=granularity)
    if method in LM_BASELINES:
        return LMBaseline(method, **options)
    if method in BASELINES:
        if options:
            raise UserError(f"method {method} takes no options, got {', '.join(sorted(options))}")
        return Baseline(method)
    raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


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
    tokens = x.dtype in (torch.int64, torch.int32) and x.dim() == 2  # a language model's ids
    if x.dim() < 2 or x.shape[0] == 0 or not (x.is_floating_point() or tokens):
        raise UserError(f"calib must be a non-empty float batch [N, ...] or token ids [N, T], "
                        f"got a {x.dtype} tensor of shape {tuple(x.shape)}")
    return x


def adapted(model: nn.Module) -> tuple[nn.Module, str]:
    """``model`` as the pipeline runs it, and the prefix its layer names get there: a
    ``transformers`` causal LM is wrapped (token ids -> logits, :class:`CausalLM`), names under
    ``hf.``; anything else is itself."""
    if type(model).__module__.startswith("transformers.") and hasattr(
            model, "get_output_embeddings"):
        return CausalLM(model), "hf."
    return model, ""


def criterion_for(name: str, model: nn.Module, layers: Mapping[str, nn.Module],
                  calib: torch.Tensor | None) -> Criterion:
    """The within-layer criterion ``name``; ``wanda`` measures its input norms on ``calib``."""
    if name not in CRITERIA:
        raise UserError(f"criterion must be one of {', '.join(CRITERIA)}, got {name!r}")
    if name == "magnitude":
        return Criterion()
    if calib is None:
        raise UserError("criterion=wanda needs calibration inputs: pass calib=...")
    check_criterion(name, layers)
    return Criterion("wanda", input_norms(model, layers, calib, device=_device(model)))


def prunable_layers(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The model's prunable layers, or a one-line error (no layer, or input the model rejects)."""
    try:
        layers = find_prunable(model, example)
    except Exception as e:  # noqa: BLE001 - the model's own error, reported in one line
        raise UserError(f"{type(unwrap(model)).__name__} rejects an input of shape "
                        f"{tuple(example.shape)} ({one_line(e)})") from None
    if not layers:
        raise UserError(f"{type(unwrap(model)).__name__} has no Conv2d or Linear layer to prune")
    return layers


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


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
            :func:`calibration_tensor`); used by ``ours`` only, but always checked to run.
        sparsity: global fraction of prunable weights removed, in [0, 1).
        method: ``"ours"``, ``"ours_zerodata"``, a baseline (``"uniform"``, ``"uniform_plus"``,
            ``"global_magnitude"``, ``"lamp"``, ``"erk"``), for a language model also
            ``"ours_block"``, ``"owl"``, ``"atp"`` (give ``beta=``), ``"alpha_pruning"``; or a
            method object.
        flops_kept: instead of ``sparsity``: the fraction of the dense conv/linear MACs kept, in
            (0, 1] (``ours`` only: the DP solves under a MACs budget).
        masks: masks already applied (iterative pruning): no layer loses fewer weights.
        layers: the prunable layers ``{name: module}`` (default: every Conv2d / Linear that runs).
        cache_dir: cache RD curves and DP solutions there (content-hashed), as the pipeline does.
        progress: show progress bars.
        criterion: which weights of a layer go (``magnitude`` or ``wanda``): ``ours`` measures
            its curves with it (pass the same to :func:`prune`).
        **options: options of ``ours``: ``grid_points``, ``reduction``, ``batch_size``, ``tol``,
            ``calib_seed`` (see :class:`rdprune.methods.rd.rate_distortion.RateDistortion`).

    Returns:
        ``{layer name: sparsity}`` in model order (an :class:`~rdprune.methods.Allocation`, which
        also carries ``info``, and for ``ours`` the ``curves`` and ``grid``).

    Raises:
        UserError: a bad target, method or option, a model without prunable layers, or a
            calibration batch the model rejects (one line each).
    """
    solver = make_method(method, **options)
    x = calibration_tensor(calib)
    model, prefix = adapted(model)
    device = _device(model)
    example = x[:1].to(device)
    if layers is None:
        layers = prunable_layers(model, example)
    else:
        layers = {prefix + k: v for k, v in layers.items()}
    layers = dict(layers)
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
    solver.check(layers, target, budget)
    pruned = [0] * len(layers) if masks is None else [
        masks[name[len(prefix):]].numel() - kept_count(masks[name[len(prefix):]])
        for name in layers]
    # counting MACs runs the model once more: only a FLOPs budget needs them
    macs = layer_macs(model, example, list(layers)) if budget == "flops" else None
    problem = Problem(
        model=model, layers=layers, target=target, budget=budget, pruned=pruned,
        macs=macs, calibration=x,
        cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else None,
        device=device, progress=progress, criterion=criterion_for(criterion, model, layers, x),
    )
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
) -> dict[str, torch.Tensor]:
    """Remove each layer's weights by ``criterion``, in place; returns the masks.

    Args:
        model: the network (or a ``transformers`` causal LM); its layers named in
            ``sparsities`` are pruned.
        sparsities: ``{layer name: fraction of its weights removed}`` (e.g. :func:`allocate`'s).
        masks: masks already applied: weights removed before stay removed.
        criterion: ``magnitude`` (smallest ``|w|`` of the layer), ``wanda`` (smallest
            ``|w| * ||x||`` per output row; needs ``calib``), or a :class:`Criterion`.
        calib: calibration inputs for ``wanda``'s input norms.

    Returns:
        ``{layer name: bool mask}`` (True = kept), on the weights' device.
    """
    base = unwrap(model)
    layers = {}
    for name in sparsities:
        try:
            layers[name] = base.get_submodule(name)
        except AttributeError:
            raise UserError(f"the model has no layer {name!r}") from None
        if not is_prunable(layers[name]):
            raise UserTypeError(f"layer {name!r} is a {type(layers[name]).__name__}, not a "
                                "Conv2d / Linear")
    if not isinstance(criterion, Criterion):
        wrapped, prefix = adapted(base)
        inner = {prefix + k: m for k, m in layers.items()}
        x = calibration_tensor(calib) if calib is not None else None
        found = criterion_for(criterion, wrapped, inner, x)
        norms = found.norms and {k[len(prefix):]: v for k, v in found.norms.items()}
        criterion = Criterion(found.name, norms)
    new = criterion.masks(layers, [float(s) for s in sparsities.values()])
    if masks is not None:
        new = {k: v & masks[k].to(v.device) for k, v in new.items()}
    apply_masks(layers, new)
    check_masks(layers, new, "after pruning")
    return new


class LoaderData:
    """A DataLoader (or any re-iterable of ``(inputs, labels)`` batches) as training data.

    :func:`rdprune.training.train.fit` asks its data for the batches of steps ``start .. stop-1``; a
    loader is cycled, epoch after epoch, in its own order (so resuming is exact only if the
    loader's order is deterministic).
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
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
    source = data if isinstance(data, Splits) else LoaderData(data)
    batch_size = batch_size or getattr(data, "batch_size", None)
    if not batch_size:
        raise UserError("give batch_size= (the data has none)")
    return fit(
        model, source, steps=steps, batch_size=batch_size,
        optimizer=optimizer or functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.01),
        scheduler=functools.partial(lr_schedule, kind=schedule, steps=steps), seed=seed,
        device=_device(model), masks=dict(masks), checkpoint=checkpoint, precision=precision,
        desc="fine-tune", progress=progress,
    )
