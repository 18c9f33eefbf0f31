"""Prunable-layer discovery.

A prunable layer is an ``nn.Conv2d`` or ``nn.Linear`` whose forward actually runs when the model
is called: a module that is defined but never used (the official EfficientNet-B0 has one) is not
prunable. Layers are listed in model order (``named_modules`` order), keyed by module name; that
order is the one every allocation, curve and mask uses.
"""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@torch.no_grad()
def find_prunable(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """Conv2d / Linear modules that run in ``model(example)``, in model order.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        example: a small input batch (one sample is enough).

    Returns:
        ``{module name: module}`` in ``named_modules`` order, only modules called during forward.
    """
    model = unwrap(model)
    called: set[int] = set()
    hooks = [
        m.register_forward_hook(lambda mod, _inp, _out: called.add(id(mod)))
        for m in model.modules()
        if isinstance(m, PRUNABLE_TYPES)
    ]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and id(m) in called
    }


def layer_weights(layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    """The weight tensors of ``layers`` in order (detached views, no copy)."""
    return [m.weight.detach() for m in layers.values()]
