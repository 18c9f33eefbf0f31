"""Tracing a model into a ``torch.fx`` graph the fast path can run.

Profiled layers are leaves (the fast path runs them itself); a module that contains a profiled
layer is traced through, as are custom modules (torch.fx's default), so that their in-place ops are
visible. Any other ``torch.nn`` module is a leaf and runs as the model would run it: e.g.
``nn.MultiheadAttention``, whose forward torch.fx cannot trace, and which reads its projection
weights functionally (they are not prunable layers; see :func:`rdprune.pruning.layers.unprunable_weights`).

Optional ``forward`` arguments with plain default values (``attn_mask=None, is_causal=False`` in
timm's ViT) are bound to those defaults, so ``if attn_mask is not None`` traces as Python.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from torch import fx, nn

from rdprune.errors import one_line
from rdprune.methods.rd.graph.errors import Untraceable
from rdprune.methods.rd.graph.inplace import normalise_inplace
from rdprune.pruning.layers import is_prunable

# Defaults torch.fx can specialise on (it checks them with an assert in the graph).
_CONCRETE_TYPES = (type(None), bool, int, float, str)


class _Tracer(fx.Tracer):
    def __init__(self, layers: Iterable[nn.Module]):
        super().__init__()
        self._layers = {id(m) for m in layers}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_prunable(m):
            return True
        if any(id(c) in self._layers for c in m.modules()):
            return False
        return super().is_leaf_module(m, qualname)


def optional_defaults(model: nn.Module) -> dict[str, object]:
    """``forward``'s parameters after the first that have a plain default, with that default."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {
        p.name: p.default
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not p.empty
        and isinstance(p.default, _CONCRETE_TYPES)
    }


def trace(model: nn.Module, layers: Iterable[nn.Module]) -> fx.Graph:
    """The model's graph with every op out-of-place (see :func:`normalise_inplace`).

    Args:
        model: the network (not modified).
        layers: the layers to be profiled; they and their ancestors are traced through.

    Raises:
        Untraceable: torch.fx cannot trace the model, or an in-place op cannot be undone.
    """
    concrete = optional_defaults(model)
    try:
        graph = _Tracer(layers).trace(model, concrete_args=concrete or None)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the naive path"
        raise Untraceable(f"torch.fx tracing failed: {one_line(exc)}") from exc
    normalise_inplace(graph, model)
    return graph
