"""Which nodes of a traced graph run when one layer is pruned (pure functions of the graph).

A layer's call sites (*sources*) and everything computed from them (*descendants*) change with its
weight; the rest does not. Per calibration chunk, the *upstream* nodes compute the *boundary*:
the unchanged values the descendants read. Per group of pruned variants, the *downstream* nodes
(sources and descendants) run again. Values are dropped as soon as no later node reads them.

Shape reads of batch tensors (``B, N, C = x.shape`` and integer arithmetic on them) are moved
downstream when a descendant reads them: there they see the batch of the variants stacked along
dim 0, where the upstream value would be one variant's batch (timm's attention reshapes with it).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

from torch import fx

FreeLists = dict[fx.Node, list[fx.Node]]

# Integer / size arithmetic that keeps a shape read a shape read.
_SHAPE_ARITHMETIC = {
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.truediv, operator.mod, operator.neg, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge,
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What to run for one layer: ``upstream`` once per chunk, ``downstream`` per variant group.

    ``*_free[n]`` lists the values dead after running ``n``. ``batchable``: every source is a
    module call, so several variants can run stacked along the batch; ``reaches_output``: the
    layer's weight can change the model's output at all.
    """

    sources: tuple[fx.Node, ...]
    upstream: tuple[fx.Node, ...]
    up_free: FreeLists
    boundary: frozenset[fx.Node]
    downstream: tuple[fx.Node, ...]
    down_free: FreeLists
    batchable: bool
    reaches_output: bool


def closure(start: Iterable[fx.Node], *, down: bool) -> set[fx.Node]:
    """``start`` and every node reachable from it along users (``down``) or inputs."""
    seen = set(start)
    stack = list(seen)
    while stack:
        n = stack.pop()
        for m in n.users if down else n.all_input_nodes:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def free_lists(seq: list[fx.Node], keep: set[fx.Node] | frozenset[fx.Node]) -> FreeLists:
    """After running ``seq[i]``, which values are dead (not in ``keep``, no later reader)."""
    pos = {n: i for i, n in enumerate(seq)}
    last = dict(pos)
    for i, n in enumerate(seq):
        for a in n.all_input_nodes:
            if a in pos:
                last[a] = max(last[a], i)
    free: FreeLists = {}
    for n, i in last.items():
        if n not in keep:
            free.setdefault(seq[i], []).append(n)
    return free


def shape_reads(nodes: list[fx.Node], batch: set[fx.Node]) -> set[fx.Node]:
    """Nodes of ``batch`` (values computed from the input) that are sizes, not tensors."""
    reads: set[fx.Node] = set()
    for n in nodes:
        if n not in batch:
            continue
        if (n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",)) or (
            n.op == "call_method" and n.target == "size"
        ):
            reads.add(n)
        elif (
            n.op == "call_function"
            and n.target in _SHAPE_ARITHMETIC
            and n.all_input_nodes
            and all(a in reads for a in n.all_input_nodes)
        ):
            reads.add(n)
    return reads


def full_plan(nodes: list[fx.Node], output: fx.Node) -> Plan:
    """Every node, run from the input (the unpruned reference)."""
    return Plan(
        sources=(), upstream=(), up_free={}, boundary=frozenset(), downstream=tuple(nodes),
        down_free=free_lists(nodes, keep={output}), batchable=True, reaches_output=True,
    )  # fmt: skip


def layer_plan(
    nodes: list[fx.Node],
    sources: list[fx.Node],
    output: fx.Node,
    *,
    inputs: set[fx.Node],
    reads: set[fx.Node],
    reuse: bool = True,
) -> Plan:
    """The plan for a layer used at ``sources``.

    Args:
        nodes: the graph's nodes in order.
        sources: the layer's call sites (``call_module``) or reads of its weight (``get_attr``).
        output: the graph's output node.
        inputs: placeholder nodes (fed, never recomputed).
        reads: :func:`shape_reads` of the graph.
        reuse: ``False`` recomputes every node but the inputs per group (an ablation).
    """
    desc = closure(sources, down=True) if reuse else set(nodes) - inputs
    desc.update(sources)
    stack = [a for n in desc for a in n.all_input_nodes if a in reads and a not in desc]
    while stack:  # shape reads that descendants read, and the shape reads those are made of
        a = stack.pop()
        if a not in desc:
            desc.add(a)
            stack.extend(i for i in a.all_input_nodes if i in reads)
    downstream = [n for n in nodes if n in desc]
    boundary = {a for n in downstream for a in n.all_input_nodes if a not in desc}
    needed = closure(boundary, down=False)
    upstream = [n for n in nodes if n in needed]
    return Plan(
        sources=tuple(sources),
        upstream=tuple(upstream),
        up_free=free_lists(upstream, keep=boundary),
        boundary=frozenset(boundary),
        downstream=tuple(downstream),
        down_free=free_lists(downstream, keep={output}),
        batchable=all(s.op == "call_module" for s in sources),
        reaches_output=output in desc,
    )
