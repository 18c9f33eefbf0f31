"""Running (parts of) a traced graph: the reference pass, upstream passes, pruned variants.

ReLU / add nodes write into the buffer of an input that only they read and that was computed in
the same pass (never a cached value): exact (the same kernels on the same values), and it saves an
allocation plus a pass over memory. Pruned variants of a layer run stacked along the batch
dimension, variant-major (rows ``i * b .. (i + 1) * b`` are variant i), through one wide conv /
matmul at the layer itself.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from rdprune.methods.rd.graph.bind import BATCHNORMS, Bindings, Weighted
from rdprune.methods.rd.graph.plan import FreeLists

Lookup = Callable[[fx.Node], object]  # a node's value during one pass


@dataclass(frozen=True)
class Placement:
    """Where and how forwards run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` with ``autocast_dtype``, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def fmt(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in channels-last format if that is asked for and ``t`` is 4-D."""
        if self.channels_last and isinstance(t, torch.Tensor) and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t


def inplace_kinds(nodes: Iterable[fx.Node], bindings: Bindings) -> dict[fx.Node, str]:
    """ReLU / add nodes that may overwrite an input nobody else reads ("relu" or "add").

    Eligible inputs (:func:`fresh_nodes`) are new buffers read only by this node, so no view of
    them exists.
    """
    fresh = fresh_nodes(nodes, bindings)
    kinds: dict[fx.Node, str] = {}
    for node in nodes:
        kind = _kind(node, bindings)
        if kind and any(_owned(a, fresh) for a in node.args):
            kinds[node] = kind
    return kinds


def fresh_nodes(nodes: Iterable[fx.Node], bindings: Bindings) -> frozenset[fx.Node]:
    """Nodes whose output is a new buffer: plain layers, BN, and the ReLU / add candidates."""
    return frozenset(
        n for n in nodes
        if n in bindings.weighted or _kind(n, bindings)
        or (n.op == "call_module" and isinstance(bindings.calls.get(n), BATCHNORMS))
    )  # fmt: skip


def _kind(node: fx.Node, bindings: Bindings) -> str:
    if node.op == "call_function" and node.target in (F.relu, torch.relu) and (
        len(node.args) == 1 and not node.kwargs.get("inplace", False)
    ):
        return "relu"
    if node.op == "call_module" and type(bindings.calls.get(node)) is nn.ReLU and (
        len(node.args) == 1 and not node.kwargs
    ):
        return "relu"
    if node.op == "call_function" and node.target in (operator.add, torch.add) and (
        len(node.args) == 2 and not node.kwargs
    ):
        return "add"
    return ""


def _owned(a: object, fresh: frozenset[fx.Node]) -> bool:
    return isinstance(a, fx.Node) and a in fresh and len(a.users) == 1


class Executor:
    """Evaluates nodes of one traced graph with its :class:`Bindings`.

    Args:
        nodes: the graph's nodes in order.
        bindings: how module / attribute nodes run (weights already in their final format).
        defaults: placeholder -> value for every placeholder but the model input (optional
            forward arguments).
    """

    def __init__(self, nodes: list[fx.Node], bindings: Bindings, defaults: dict[fx.Node, object]):
        self.bindings = bindings
        self.defaults = defaults
        self.fresh = fresh_nodes(nodes, bindings)
        self.kinds = inplace_kinds(nodes, bindings)

    def run(
        self, seq: Iterable[fx.Node], free: FreeLists, value: Lookup, ctx: Placement,
        sources: dict[fx.Node, Callable[[Lookup], object]] | None = None,
    ) -> dict[fx.Node, object]:
        """Run ``seq``; inputs not computed in this pass come from ``value``.

        ``sources[n]`` computes node ``n`` instead of its binding; values are dropped once
        ``free`` says they are dead. Returns the values left.
        """
        env: dict[fx.Node, object] = {}

        def lookup(n: fx.Node) -> object:
            return env[n] if n in env else value(n)

        for node in seq:
            if sources and node in sources:
                env[node] = sources[node](lookup)
            else:
                env[node] = self._run_node(node, lookup, ctx, env)
            for dead in free.get(node, ()):
                env.pop(dead, None)
        return env

    def apply_weighted(
        self, site: Weighted, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, ctx: Placement
    ) -> torch.Tensor:
        """The plain conv / linear of ``site`` with weight ``w`` and bias ``b``."""
        mod = site.module
        if isinstance(mod, nn.Linear):
            return F.linear(x, w, b)
        w = ctx.fmt(w)
        if mod.padding_mode != "zeros":
            x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
            return F.conv2d(x, w, b, mod.stride, 0, mod.dilation, mod.groups)
        return F.conv2d(x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)

    def _run_node(self, node: fx.Node, value: Lookup, ctx: Placement, env: dict) -> object:
        """Evaluate one node; ``env`` holds this pass's values (their buffers may be reused)."""
        op = node.op
        if op == "placeholder":
            return self.defaults[node] if node in self.defaults else value(node)
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node in self.kinds:
            out = self._run_inplace(node, args, env)
            if out is not None:
                return out
        if op == "call_function":
            return node.target(*args, **kwargs)
        if op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if op == "call_module":
            site = self.bindings.weighted.get(node)
            if site is not None:
                return self.apply_weighted(site, args[0], site.weight, site.bias, ctx)
            return self.bindings.calls[node](*args, **kwargs)
        if op == "get_attr":
            return self.bindings.calls[node]
        if op == "output":
            return args[0]
        raise RuntimeError(f"unexpected node {node.op}")

    def _run_inplace(self, node: fx.Node, args: tuple, env: dict) -> torch.Tensor | None:
        """Run a ReLU / add node into the buffer of an input only it reads; None if none."""
        owned = [
            i for i, a in enumerate(node.args)
            if a in env and _owned(a, self.fresh) and isinstance(args[i], torch.Tensor)
        ]  # fmt: skip
        if not owned:
            return None
        if self.kinds[node] == "relu":
            return torch.relu_(args[0])
        for i in owned:  # a + b == b + a bitwise, so either operand may take the result
            mine, other = args[i], args[1 - i]
            if isinstance(other, torch.Tensor):
                # Same shape and dtype: the in-place result is the out-of-place one (no
                # broadcasting or promotion). A cheap test; this runs once per node per pass.
                if other.shape != mine.shape or other.dtype != mine.dtype:
                    continue
            elif not (isinstance(other, (int, float)) and mine.is_floating_point()):
                continue
            return mine.add_(other)
        return None


def stacked_source(
    executor: Executor, node: fx.Node, weights: list[torch.Tensor], b: int, ctx: Placement
) -> Callable[[Lookup], torch.Tensor]:
    """How a pruned layer's call site computes its ``k = len(weights)`` variants.

    For a ``get_attr`` source (a functional use of the weight) the value is the one pruned weight
    (k = 1). For a module source, the result is ``[k * b, ...]``: one wide conv with k x the output
    channels or one matmul against the stacked weights, or a loop when the input already carries
    the variants (a layer called twice).
    """
    if node.op == "get_attr":
        assert len(weights) == 1, "functional weight uses run one variant at a time"
        return lambda _: weights[0]
    site = executor.bindings.weighted[node]

    def compute(value: Lookup) -> torch.Tensor:
        x = fx.node.map_arg(node.args[0], value)
        return _stacked(executor, site, x, weights, b, ctx)

    return compute


def _stacked(
    executor: Executor, site: Weighted, x: torch.Tensor, weights: list[torch.Tensor], b: int,
    ctx: Placement,
) -> torch.Tensor:
    k, bias = len(weights), site.bias
    if k == 1:
        return executor.apply_weighted(site, x, weights[0], bias, ctx)
    if x.shape[0] != b:  # the input already carries the variants (layer called twice): loop
        parts = [
            executor.apply_weighted(site, x[i * b : (i + 1) * b], w, bias, ctx)
            for i, w in enumerate(weights)
        ]
        return ctx.fmt(torch.cat(parts))
    if isinstance(site.module, nn.Linear):
        # One matmul against the stacked weights; variants become the leading batch block.
        bb = bias.repeat(k) if bias is not None else None
        y = F.linear(x, torch.cat(weights), bb).unflatten(-1, (k, -1)).movedim(-2, 0)
        return y.reshape(k * b, *y.shape[2:])
    # One conv with k x the output channels (the input is read once), interleaved per group so
    # that a grouped conv sees each group's variants side by side.
    g = site.module.groups
    w = torch.stack(weights)  # [k, out, in/g, kh, kw]
    out = w.shape[1]
    w = w.unflatten(1, (g, out // g)).transpose(0, 1).reshape(g * k * (out // g), *w.shape[2:])
    bb = None
    if bias is not None:
        bb = bias.view(g, 1, out // g).expand(g, k, out // g).reshape(-1)
    y = executor.apply_weighted(site, x, w, bb, ctx)  # [b, g * k * out/g, h, w]
    y = y.unflatten(1, (g, k, out // g)).permute(2, 0, 1, 3, 4, 5)
    return ctx.fmt(y.reshape(k * b, out, *y.shape[-2:]))
