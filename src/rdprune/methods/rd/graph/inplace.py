"""Making every op of a traced graph out-of-place, so that cached values are never mutated.

The fast path keeps values of one pass for later passes; an in-place op would change them. Each
in-place op is rewritten to its out-of-place twin, which is only valid when nothing reads the
mutated value (or a tensor it is a view of) afterwards: otherwise that reader would see different
values than in the model, and the model is refused (:class:`Untraceable`).
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch import fx, nn

from rdprune.methods.rd.graph.errors import Untraceable

_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
    operator.imatmul: operator.matmul,
}
# Ops that return a view of their first argument (an in-place op on the view mutates the base).
_VIEW_OPS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute",
    "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "t", "T", "contiguous",
    "chunk", "split", "unbind", "movedim", "diagonal", "as_strided", "detach", "getitem",
    "__getitem__", "flip",
}  # fmt: skip


def normalise_inplace(graph: fx.Graph, root: nn.Module) -> None:
    """Rewrite every in-place op of ``graph`` (traced from ``root``) to its out-of-place twin.

    In-place modules (``nn.ReLU(inplace=True)``) keep their node; the caller runs an out-of-place
    copy of the module. Rewrites ``graph`` in place.

    Raises:
        Untraceable: an op assigns into a tensor, has no out-of-place twin, or its mutated input
            is read later.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        mutated = _rewrite(node, root)
        if isinstance(mutated, fx.Node):
            _check_no_later_reader(node, mutated, order)


def _rewrite(node: fx.Node, root: nn.Module) -> object:
    """Make ``node`` out-of-place; return the argument it mutated (None if it mutated nothing)."""
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            node.target = _INPLACE_OPERATORS[node.target]
            return node.args[0]
        if node.target is operator.setitem:
            raise Untraceable("the model assigns into a tensor (setitem)")
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and hasattr(torch, name[:-1]):
            node.target = getattr(torch, name[:-1])
            return node.args[0]
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
            return node.args[0]
        if _unset_positional_inplace(node):
            return node.args[0]
    elif node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and not name.startswith("_"):
            if not hasattr(torch.Tensor, name[:-1]):
                raise Untraceable(f"unsupported in-place method {name}")
            node.target = name[:-1]
            return node.args[0]
    elif node.op == "call_module":
        if getattr(root.get_submodule(node.target), "inplace", False) is True:
            return node.args[0]
    return None


def _unset_positional_inplace(node: fx.Node) -> bool:
    """``F.relu(x, True)``-style calls: rewrite the bound ``inplace`` argument to False."""
    try:
        sig = inspect.signature(node.target)
    except (TypeError, ValueError):
        return False
    if "inplace" not in sig.parameters:
        return False
    try:
        bound = sig.bind(*node.args, **node.kwargs)
    except TypeError:
        return False
    if bound.arguments.get("inplace") is not True:
        return False
    bound.arguments["inplace"] = False
    node.args, node.kwargs = tuple(bound.args), dict(bound.kwargs)
    return True


def _is_view(n: fx.Node) -> bool:
    name = getattr(n.target, "__name__", n.target)
    return n.op in ("call_method", "call_function") and str(name) in _VIEW_OPS


def _check_no_later_reader(node: fx.Node, mutated: fx.Node, order: dict[fx.Node, int]) -> None:
    """Refuse if anything sharing memory with ``mutated`` is read after ``node``."""
    chain = [mutated]  # mutated and the tensors it is a view of
    while _is_view(chain[-1]) and chain[-1].args and isinstance(chain[-1].args[0], fx.Node):
        chain.append(chain[-1].args[0])
    stack, seen = list(chain), set(chain)
    while stack:  # every view of those tensors, too
        value = stack.pop()
        for user in value.users:
            if user is node or user in seen:
                continue
            if order[user] > order[node]:
                raise Untraceable(
                    f"{node.name} mutates {mutated.name} in place, {user.name} reads it later"
                )
            if _is_view(user):
                seen.add(user)
                stack.append(user)
