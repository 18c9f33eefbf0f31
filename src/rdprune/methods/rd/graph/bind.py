"""How each node of a traced graph runs, and BatchNorm folding.

Plain Conv2d / Linear call sites (stock forward) become :class:`Weighted` entries: the fast path
runs ``F.conv2d`` / ``F.linear`` on an *effective* weight, which BN folding may change and which
the pruned variants are built from. Every other module node runs the module (an out-of-place copy
for ``inplace=True`` modules); ``get_attr`` nodes read the (detached) attribute.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from rdprune.pruning.layers import is_prunable

BATCHNORMS = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Weighted:
    """A plain Conv2d / Linear call site and the weight and bias it runs with."""

    module: nn.Conv2d | nn.Linear
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class Bindings:
    """What runs at each node: ``weighted`` for plain layers, ``calls`` for the rest."""

    calls: dict[fx.Node, object]
    weighted: dict[fx.Node, Weighted]
    batch_stats: bool  # some BN normalises with batch statistics (no running statistics)


def is_plain(mod: nn.Module) -> bool:
    """Conv2d / Linear with the stock forward (so the fast path may call F.conv2d / F.linear)."""
    return (isinstance(mod, nn.Conv2d) and type(mod).forward is nn.Conv2d.forward) or (
        isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward
    )


def get_attr(root: nn.Module, target: str) -> object:
    """``root.a.b.c`` for ``target = "a.b.c"``."""
    obj: object = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def bind(graph: fx.Graph, root: nn.Module) -> Bindings:
    """How each ``get_attr`` / ``call_module`` node of ``graph`` (traced from ``root``) runs."""
    calls: dict[fx.Node, object] = {}
    weighted: dict[fx.Node, Weighted] = {}
    batch_stats = False
    for node in graph.nodes:
        if node.op == "get_attr":
            value = get_attr(root, node.target)
            calls[node] = value.detach() if isinstance(value, torch.Tensor) else value
        elif node.op == "call_module":
            mod = root.get_submodule(node.target)
            if isinstance(mod, BATCHNORMS) and (
                mod.running_mean is None or mod.running_var is None
            ):
                batch_stats = True
            if is_prunable(mod) and is_plain(mod):
                bias = mod.bias.detach() if mod.bias is not None else None
                weighted[node] = Weighted(mod, mod.weight.detach(), bias)
            elif getattr(mod, "inplace", False) is True:
                twin = copy.copy(mod)  # shallow: shares parameters, only the flag differs
                twin.inplace = False
                calls[node] = twin
            else:
                calls[node] = mod
    return Bindings(calls, weighted, batch_stats)


def fold_batchnorm(graph: fx.Graph, bindings: Bindings) -> Bindings:
    """Fold every eval-mode BatchNorm2d that alone reads a plain conv's output into that conv.

    Rewrites ``graph`` in place (the BN nodes are erased; their readers read the conv) and returns
    the bindings of the rewritten graph. The fused weight is computed in float64 and rounded once:
    ``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``.
    """
    calls, weighted = dict(bindings.calls), dict(bindings.weighted)
    for bn_node in list(graph.nodes):
        conv_node = _foldable_conv(bn_node, calls, weighted)
        if conv_node is None:
            continue
        weighted[conv_node] = _fused(weighted[conv_node], calls.pop(bn_node))
        bn_node.replace_all_uses_with(conv_node)
        graph.erase_node(bn_node)
    return Bindings(calls, weighted, bindings.batch_stats)


def _foldable_conv(
    bn_node: fx.Node, calls: dict[fx.Node, object], weighted: dict[fx.Node, Weighted]
) -> fx.Node | None:
    """The conv node ``bn_node`` can be folded into, or None."""
    if bn_node.op != "call_module" or bn_node.kwargs or len(bn_node.args) != 1:
        return None
    bn, conv_node = calls.get(bn_node), bn_node.args[0]
    if (
        type(bn) is not nn.BatchNorm2d
        or bn.running_mean is None
        or not isinstance(conv_node, fx.Node)
        or conv_node not in weighted
        or len(conv_node.users) != 1
    ):
        return None
    conv = weighted[conv_node].module
    if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
        return None
    return conv_node


def _fused(conv: Weighted, bn: nn.BatchNorm2d) -> Weighted:
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    dtype = conv.weight.dtype
    fused = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype)
    return replace(conv, weight=fused, bias=shift.to(dtype))


def channels_last_weights(bindings: Bindings) -> Bindings:
    """Conv weights in channels-last format, once here rather than per call."""
    weighted = {
        node: replace(w, weight=w.weight.contiguous(memory_format=torch.channels_last))
        if w.weight.dim() == 4 else w
        for node, w in bindings.weighted.items()
    }  # fmt: skip
    return replace(bindings, weighted=weighted)
