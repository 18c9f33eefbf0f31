"""Prunable-layer discovery.

A prunable layer is an ``nn.Conv2d`` or ``nn.Linear`` (or ``transformers``' ``Conv1D``, GPT-2's
linear layer) whose forward actually runs when the model is called: a module that is defined but
never used (the official EfficientNet-B0 has one) is not prunable. A task may narrow the set (a
language model: the linears of its decoder blocks, not the embeddings or ``lm_head``;
:mod:`rdprune.tasks`). Layers are listed in model order (``named_modules`` order), keyed by module
name; that order is the one every allocation, curve and mask uses.

Weights that no prunable layer's forward reads (a module that uses another module's weight
functionally, such as ``nn.MultiheadAttention`` with its ``out_proj``, or a parameter that is not a
module weight) are outside the prunable set; :func:`unprunable_weights` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode



def is_prunable(module: nn.Module) -> bool:
    """Whether ``module`` is of a prunable type (Conv2d, Linear, transformers' Conv1D)."""
    return isinstance(module, (nn.Conv2d, *linear_types()))


def linear_types() -> tuple[type, ...]:
    """nn.Linear and GPT-2's ``Conv1D`` (a linear layer with a transposed weight), the latter
    only once ``transformers`` is imported (no model can hold one before; importing it costs a
    second at every start-up)."""
    hf = sys.modules.get("transformers.pytorch_utils")
    return (nn.Linear, hf.Conv1D) if hf is not None else (nn.Linear,)


def out_in(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` (default: the weight) as ``(d_out, d_in)``: transformers' ``Conv1D`` (GPT-2's
    linear layer) stores ``(d_in, d_out)``."""
    t = module.weight if tensor is None else tensor
    return t.t() if type(module).__name__ == "Conv1D" else t


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class LinearUses(TorchFunctionMode):
    """Records, while active, the MACs of every ``F.linear`` call by the weight it used
    (``macs[id(weight)]``): a Linear whose weight a parent reads functionally (torchvision Swin's
    ``qkv`` / ``proj``) is used although its forward never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.macs: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs[id(w)] = self.macs.get(id(w), 0) + x.numel() // w.shape[-1] * w.numel()
        return func(*args, **kwargs)


@torch.no_grad()
def find_prunable(model: nn.Module, example: torch.Tensor,
                  allowed: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Conv2d / Linear modules that run in ``model(example)``, in model order.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        example: a small input batch (one sample is enough).
        allowed: only these module names (a task narrows the set: a language model's decoder
            blocks); None: every module.

    Returns:
        ``{module name: module}`` in ``named_modules`` order, only modules called during forward
        or whose weight goes through ``F.linear`` there (:class:`LinearUses`), and in
        ``allowed``.
    """
    model = unwrap(model)
    allowed = set(allowed) if allowed is not None else None
    called: set[int] = set()
    hooks = [
        m.register_forward_hook(lambda mod, _inp, _out: called.add(id(mod)))
        for m in model.modules()
        if is_prunable(m)
    ]
    was_training = model.training
    uses = LinearUses()
    try:
        model.eval()
        with uses:
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {
        name: m
        for name, m in model.named_modules()
        if is_prunable(m) and (id(m) in called or id(m.weight) in uses.macs)
        and (allowed is None or name in allowed)
    }


def layer_weights(layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    """The weight tensors of ``layers`` in order (detached views, no copy)."""
    return [m.weight.detach() for m in layers.values()]


# Their parameters are scales and shifts, not weights (and 1-D anyway in torch's own classes).
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def unprunable_weights(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, int]:
    """Weights of ``model`` outside the prunable set, by parameter name: how many each holds.

    A weight is a parameter with at least 2 dimensions that does not belong to a normalisation
    module. It is outside the prunable set when it is not the ``weight`` of a module in
    ``layers``: e.g. weights a module reads functionally (``nn.MultiheadAttention``'s
    ``in_proj_weight`` and its ``out_proj.weight``, torchvision Swin's ``qkv`` / ``proj``), other
    layer types (Conv1d, ConvTranspose2d, Embedding), class tokens and position embeddings.
    Sparsities are fractions of the prunable weights only; these are never pruned.

    Args:
        model: the network.
        layers: its prunable layers (e.g. :func:`find_prunable`).

    Returns:
        ``{parameter name: number of elements}`` in ``named_parameters`` order (shared
        parameters once); empty when every weight is prunable.
    """
    model = unwrap(model)
    prunable = {id(m.weight) for m in layers.values()}
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters()
    }
    return {
        name: p.numel()
        for name, p in model.named_parameters()
        if p.dim() >= 2 and id(p) not in prunable and id(p) not in norm_params
    }
