"""The traced graph behind :func:`rdprune.profiling.rd_curves`'s fast path.

:class:`Engine` traces a model with ``torch.fx`` (Conv2d / Linear as leaves), makes every in-place
op out-of-place (refusing models where that would change what a later op reads), and prepares one
:class:`Plan` per prunable layer: the *upstream* nodes whose values feed the layer's descendants
(run once per calibration chunk) and the *downstream* nodes (the layer and its descendants, run per
grid point). ReLU / add results are written into buffers no other node reads (exact). Optionally,
eval-mode BatchNorm is folded into the preceding conv. Anything the engine cannot represent
faithfully raises :class:`Untraceable`, and the caller falls back to the naive scheme.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from rdprune.layers import PRUNABLE_TYPES

_Lookup = Callable[[fx.Node], object]  # a node's value during one pass
_BATCHNORMS = nn.modules.batchnorm._BatchNorm


@dataclass
class Ctx:
    """Where and how forwards run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def fmt(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last and isinstance(t, torch.Tensor) and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t


class Untraceable(Exception):
    """The fast path cannot represent this model faithfully; use the naive scheme."""


class _Tracer(fx.Tracer):
    """Conv2d / Linear are leaves; any other module that contains one is traced through.

    Custom modules are traced through too (torch.fx's default), so that their in-place ops are
    visible; only ``torch.nn`` modules without prunable layers stay opaque.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, PRUNABLE_TYPES):
            return True
        if any(isinstance(c, PRUNABLE_TYPES) for c in m.modules()):
            return False
        return super().is_leaf_module(m, qualname)


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


def _is_plain(mod: nn.Module) -> bool:
    """Conv2d / Linear with the stock forward (so the fast path may call F.conv2d / F.linear)."""
    return (isinstance(mod, nn.Conv2d) and type(mod).forward is nn.Conv2d.forward) or (
        isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward
    )


def _get_attr(root: nn.Module, target: str) -> object:
    obj: object = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Plan:
    """What to run for one layer: the upstream once per chunk, the downstream per grid group."""

    sources: list[fx.Node]
    upstream: list[fx.Node] = field(default_factory=list)
    up_free: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)
    boundary: list[fx.Node] = field(default_factory=list)
    downstream: list[fx.Node] = field(default_factory=list)
    down_free: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)
    batchable: bool = True
    reaches_output: bool = True


class Engine:
    """A traced, normalised graph of the model plus per-layer execution plans."""

    def __init__(
        self, model: nn.Module, layers: list[nn.Module], *, fold_bn: bool, channels_last: bool
    ):
        self.root = model
        self.graph = self._trace(model)
        self.channels_last = channels_last
        self.batch_stats = False
        # Module nodes -> the module to call (get_attr nodes -> the value), except plain Conv2d /
        # Linear nodes, which run F.conv2d / F.linear on an (effective, maybe BN-folded) weight:
        self.calls: dict[fx.Node, object] = {}
        self.weighted: dict[fx.Node, tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = {}
        self._normalise_inplace()
        self._bind_nodes(fold_bn)
        self.fresh: set[fx.Node] = set()
        self.reuse_buffer = self._inplace_candidates()
        self.nodes = list(self.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise Untraceable(f"the model takes {len(placeholders)} inputs, expected 1")
        self.placeholder = placeholders[0]
        self.output = next(n for n in self.nodes if n.op == "output")
        self.batch_nodes = self._closure([self.placeholder], down=True)
        self._check_tied(layers)
        self.full_plan = Plan(sources=[])
        self.full_plan.downstream = self.nodes
        self.full_plan.down_free = self._free_lists(self.nodes, keep={self.output})
        self.plans = [self._plan(m) for m in layers]
        self.no_reuse_plans: dict[int, Plan] = {}

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def _trace(model: nn.Module) -> fx.Graph:
        try:
            return _Tracer().trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the naive path"
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise Untraceable(f"torch.fx tracing failed: {type(exc).__name__}: {first}") from exc

    def _normalise_inplace(self) -> None:
        """Make every op out-of-place, so cached values are never mutated.

        Only valid when the mutated value (or a tensor it is a view of) has no later reader:
        otherwise that reader would see different values, and the model is untraceable here.
        """
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        for node in list(self.graph.nodes):
            mutated = None
            if node.op == "call_function":
                if node.target in _INPLACE_OPERATORS:
                    node.target = _INPLACE_OPERATORS[node.target]
                    mutated = node.args[0]
                elif node.target is operator.setitem:
                    raise Untraceable("the model assigns into a tensor (setitem)")
                elif getattr(node.target, "__name__", "").endswith("_") and hasattr(
                    torch, node.target.__name__[:-1]
                ):
                    node.target = getattr(torch, node.target.__name__[:-1])
                    mutated = node.args[0]
                elif node.kwargs.get("inplace") is True:
                    node.kwargs = {**node.kwargs, "inplace": False}
                    mutated = node.args[0]
                elif self._inplace_positional(node):
                    mutated = node.args[0]
            elif node.op == "call_method":
                name = str(node.target)
                if name.endswith("_") and not name.startswith("_"):
                    if not hasattr(torch.Tensor, name[:-1]):
                        raise Untraceable(f"unsupported in-place method {name}")
                    node.target = name[:-1]
                    mutated = node.args[0]
            elif node.op == "call_module":
                if getattr(self.root.get_submodule(node.target), "inplace", False) is True:
                    mutated = node.args[0]
            if isinstance(mutated, fx.Node):
                self._check_no_later_reader(node, mutated, order)

    @staticmethod
    def _inplace_positional(node: fx.Node) -> bool:
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

    def _check_no_later_reader(self, node: fx.Node, mutated: fx.Node, order: dict) -> None:
        """Refuse if anything sharing memory with ``mutated`` is read after ``node``."""

        def is_view(n: fx.Node) -> bool:
            name = getattr(n.target, "__name__", n.target)
            return n.op in ("call_method", "call_function") and str(name) in _VIEW_OPS

        chain = [mutated]  # mutated and the tensors it is a view of
        while is_view(chain[-1]) and chain[-1].args and isinstance(chain[-1].args[0], fx.Node):
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
                if is_view(user):
                    seen.add(user)
                    stack.append(user)

    def _bind_nodes(self, fold_bn: bool) -> None:
        """Decide how each node runs; fold eval BN into a preceding plain conv."""
        for node in list(self.graph.nodes):
            if node.op == "get_attr":
                value = _get_attr(self.root, node.target)
                self.calls[node] = value.detach() if isinstance(value, torch.Tensor) else value
            elif node.op == "call_module":
                mod = self.root.get_submodule(node.target)
                if isinstance(mod, _BATCHNORMS) and (
                    mod.running_mean is None or mod.running_var is None
                ):
                    self.batch_stats = True
                if isinstance(mod, PRUNABLE_TYPES) and _is_plain(mod):
                    bias = mod.bias.detach() if mod.bias is not None else None
                    self.weighted[node] = (mod, mod.weight.detach(), bias)
                elif getattr(mod, "inplace", False) is True:
                    twin = copy.copy(mod)  # shallow: shares parameters, only the flag differs
                    twin.inplace = False
                    self.calls[node] = twin
                else:
                    self.calls[node] = mod
        if fold_bn:
            for node in list(self.graph.nodes):
                self._maybe_fold(node)
        if self.channels_last:  # once here, not per call: conv weights in the conv's own format
            for node, (mod, w, b) in self.weighted.items():
                if w.dim() == 4:
                    self.weighted[node] = (mod, w.contiguous(memory_format=torch.channels_last), b)

    def _maybe_fold(self, bn_node: fx.Node) -> None:
        if bn_node.op != "call_module" or bn_node.kwargs or len(bn_node.args) != 1:
            return
        bn = self.root.get_submodule(bn_node.target)
        conv_node = bn_node.args[0]
        if (
            type(bn) is not nn.BatchNorm2d
            or bn.running_mean is None
            or not isinstance(conv_node, fx.Node)
            or conv_node not in self.weighted
            or len(conv_node.users) != 1
        ):
            return
        conv, weight, bias = self.weighted[conv_node]
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            return
        # Fold in float64, then round once: W' = W * g / sqrt(v + eps), b' = (b - m) * scale + beta.
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double()
        shift = -bn.running_mean.double() * scale
        if bias is not None:
            shift = shift + bias.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().double()
        fused_w = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        self.weighted[conv_node] = (conv, fused_w, shift.to(weight.dtype))
        bn_node.replace_all_uses_with(conv_node)
        self.graph.erase_node(bn_node)
        del self.calls[bn_node]

    def _inplace_candidates(self) -> dict[fx.Node, str]:
        """ReLU / add nodes that may overwrite an input nobody else can see.

        Exact (the same kernels on the same values) and saves an allocation plus a pass over
        memory. Eligible inputs are produced fresh by a conv / linear / BN / ReLU / add node and
        read only by this node, so no view of them exists; whether the input is a value computed
        in the current pass (not a cached one) is checked when running.
        """
        kinds: dict[fx.Node, str] = {}
        relus = (F.relu, torch.relu)
        adds = (operator.add, torch.add)
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target in relus and len(node.args) == 1 and (
                not node.kwargs.get("inplace", False)
            ):
                kinds[node] = "relu"
            elif node.op == "call_module" and type(self.calls.get(node)) is nn.ReLU and (
                len(node.args) == 1 and not node.kwargs
            ):
                kinds[node] = "relu"
            elif node.op == "call_function" and node.target in adds and len(node.args) == 2 and (
                not node.kwargs
            ):
                kinds[node] = "add"

        bns = {
            n for n in self.graph.nodes
            if n.op == "call_module" and isinstance(self.calls.get(n), _BATCHNORMS)
        }  # fmt: skip
        self.fresh = set(self.weighted) | set(kinds) | bns  # nodes whose output is a new buffer

        def owned(a: object) -> bool:
            return isinstance(a, fx.Node) and a in self.fresh and len(a.users) == 1

        return {n: k for n, k in kinds.items() if any(owned(a) for a in n.args)}

    def _check_tied(self, layers: list[nn.Module]) -> None:
        """A weight shared with another module would be pruned there too; not modelled here."""
        counts: dict[int, int] = {}
        for _, p in self.root.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        for mod in layers:
            if counts.get(id(mod.weight), 0) > 1:
                raise Untraceable("a prunable weight is shared with another module")

    def _closure(self, start: list[fx.Node], down: bool) -> set[fx.Node]:
        seen, stack = set(start), list(start)
        while stack:
            n = stack.pop()
            for m in (n.users if down else n.all_input_nodes):
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
        return seen

    def _free_lists(self, seq: list[fx.Node], keep: set[fx.Node]) -> dict:
        """After running ``seq[i]``, which values are dead (not in ``keep``, no later reader)."""
        pos = {n: i for i, n in enumerate(seq)}
        last = {n: i for i, n in enumerate(seq)}
        for i, n in enumerate(seq):
            for a in n.all_input_nodes:
                if a in pos:
                    last[a] = max(last[a], i)
        free: dict[fx.Node, list[fx.Node]] = {}
        for n, i in last.items():
            if n not in keep:
                free.setdefault(seq[i], []).append(n)
        return free

    def _plan(self, mod: nn.Module, reuse: bool = True) -> Plan:
        sources = []
        for node in self.nodes:
            if node.op == "call_module" and self.root.get_submodule(node.target) is mod:
                if node not in self.weighted:
                    raise Untraceable(f"{node.target} ({type(mod).__name__}) has a custom forward")
                sources.append(node)
            elif node.op == "get_attr" and _get_attr(self.root, node.target) is mod.weight:
                sources.append(node)
        if not sources:
            raise Untraceable(f"a {type(mod).__name__} layer does not appear in the traced graph")
        plan = Plan(sources=sources)
        plan.batchable = all(s.op == "call_module" for s in sources)
        desc = self._closure(sources, down=True) if reuse else set(self.nodes) - {self.placeholder}
        desc.update(sources)
        plan.reaches_output = self.output in desc
        plan.downstream = [n for n in self.nodes if n in desc]
        boundary = {a for n in plan.downstream for a in n.all_input_nodes if a not in desc}
        plan.boundary = [n for n in self.nodes if n in boundary]
        needed = self._closure(plan.boundary, down=False)
        plan.upstream = [n for n in self.nodes if n in needed]
        plan.up_free = self._free_lists(plan.upstream, keep=boundary)
        plan.down_free = self._free_lists(plan.downstream, keep={self.output})
        return plan

    def no_reuse_plan(self, li: int, mod: nn.Module) -> Plan:
        if li not in self.no_reuse_plans:
            self.no_reuse_plans[li] = self._plan(mod, reuse=False)
        return self.no_reuse_plans[li]

    # -- execution ---------------------------------------------------------------------------

    def _weight(self, w: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return ctx.fmt(w) if self.channels_last else w

    def _apply_weighted(
        self, node: fx.Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, ctx: Ctx
    ) -> torch.Tensor:
        mod = self.weighted[node][0]
        if isinstance(mod, nn.Linear):
            return F.linear(x, w, b)
        w = self._weight(w, ctx)
        if mod.padding_mode != "zeros":
            x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
            return F.conv2d(x, w, b, mod.stride, 0, mod.dilation, mod.groups)
        return F.conv2d(x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)

    def _run_node(
        self, node: fx.Node, value: _Lookup, ctx: Ctx, env: dict | None = None
    ) -> object:
        """Evaluate one (non-source) node; ``value(n)`` looks up an input node's value.

        ``env`` holds the values computed in this pass (their buffers may be reused in place).
        """
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if env is not None and node in self.reuse_buffer:
            out = self._run_inplace(node, args, env)
            if out is not None:
                return out
        op = node.op
        if op == "call_function":
            return node.target(*args, **kwargs)
        if op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if op == "call_module":
            if node in self.weighted:
                _, w, b = self.weighted[node]
                return self._apply_weighted(node, args[0], w, b, ctx)
            return self.calls[node](*args, **kwargs)
        if op == "get_attr":
            return self.calls[node]
        if op == "output":
            return args[0]
        raise RuntimeError(f"unexpected node {node.op}")  # placeholders are fed, not run

    def _run_inplace(self, node: fx.Node, args: tuple, env: dict) -> torch.Tensor | None:
        """Run a ReLU / add node into the buffer of an input only it reads; None if none."""
        owned = [
            i for i, a in enumerate(node.args)
            if isinstance(a, fx.Node) and a in env and a in self.fresh and len(a.users) == 1
            and isinstance(args[i], torch.Tensor)
        ]  # fmt: skip
        if not owned:
            return None
        if self.reuse_buffer[node] == "relu":
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

    def full(self, x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """The unpruned output of the traced graph (the reference ``Y``)."""
        return self._execute(self.nodes, self.full_plan.down_free, x, ctx)[self.output]

    def upstream(self, plan: Plan, x: torch.Tensor, ctx: Ctx) -> dict[fx.Node, object]:
        """Values of ``plan.boundary`` for one chunk."""
        return self._execute(plan.upstream, plan.up_free, x, ctx)

    def _execute(
        self, seq: list[fx.Node], free: dict[fx.Node, list[fx.Node]], x: torch.Tensor, ctx: Ctx
    ) -> dict[fx.Node, object]:
        """Run ``seq`` from the input ``x``, dropping values once ``free`` says they are dead."""
        env: dict[fx.Node, object] = {}
        for node in seq:
            env[node] = (
                x if node is self.placeholder else self._run_node(node, env.__getitem__, ctx, env)
            )
            for dead in free.get(node, ()):
                env.pop(dead, None)
        return env

    def downstream(
        self,
        plan: Plan,
        boundary: dict[fx.Node, object],
        weights: dict[fx.Node, list[torch.Tensor]],
        b: int,
        ctx: Ctx,
    ) -> torch.Tensor:
        """Outputs of k pruned variants of the layer, stacked ``[k * b, ...]`` (variant-major).

        ``weights[source]`` holds the k pruned (effective) weights used at that call site.
        """
        k = len(next(iter(weights.values())))
        env: dict[fx.Node, object] = {}
        expanded: dict[fx.Node, object] = {}

        def value(n: fx.Node) -> object:
            if n in env:
                return env[n]
            v = boundary[n]
            # A cached batch tensor read by a descendant is repeated once per variant.
            if k > 1 and n in self.batch_nodes and isinstance(v, torch.Tensor) and (
                v.dim() >= 1 and v.shape[0] == b
            ):
                if n not in expanded:
                    expanded[n] = ctx.fmt(v.repeat(k, *([1] * (v.dim() - 1))))
                return expanded[n]
            return v

        for node in plan.downstream:
            if node in weights:
                env[node] = self._run_source(node, value, weights[node], b, ctx)
            else:
                env[node] = self._run_node(node, value, ctx, env)
            for dead in plan.down_free.get(node, ()):
                env.pop(dead, None)
        y = env[self.output]
        if not isinstance(y, torch.Tensor) or y.shape[0] != k * b:
            raise RuntimeError(f"grid batching changed the output batch ({k} x {b} expected)")
        return y

    def _run_source(
        self, node: fx.Node, value: _Lookup, weights: list[torch.Tensor], b: int, ctx: Ctx
    ) -> torch.Tensor:
        """The pruned layer itself, once per variant (one wide conv / matmul when possible)."""
        if node.op == "get_attr":  # a functional use of the weight: one variant at a time
            assert len(weights) == 1
            return weights[0]
        x = fx.node.map_arg(node.args[0], value)
        bias = self.weighted[node][2]
        k = len(weights)
        if k == 1:
            return self._apply_weighted(node, x, weights[0], bias, ctx)
        if x.shape[0] != b:  # the input already carries the variants (layer called twice): loop
            parts = [
                self._apply_weighted(node, x[i * b : (i + 1) * b], w, bias, ctx)
                for i, w in enumerate(weights)
            ]
            return ctx.fmt(torch.cat(parts))
        mod = self.weighted[node][0]
        if isinstance(mod, nn.Linear):
            # One matmul against the stacked weights; variants become the leading batch block.
            bb = bias.repeat(k) if bias is not None else None
            y = F.linear(x, torch.cat(weights), bb).unflatten(-1, (k, -1)).movedim(-2, 0)
            return y.reshape(k * b, *y.shape[2:])
        # One conv with k x the output channels (the input is read once), interleaved per group so
        # that a grouped conv sees each group's variants side by side.
        g = mod.groups
        w = torch.stack(weights)  # [k, out, in/g, kh, kw]
        out = w.shape[1]
        w = w.unflatten(1, (g, out // g)).transpose(0, 1).reshape(g * k * (out // g), *w.shape[2:])
        bb = None
        if bias is not None:
            bb = bias.view(g, 1, out // g).expand(g, k, out // g).reshape(-1)
        y = self._apply_weighted(node, x, w, bb, ctx)  # [b, g * k * out/g, h, w]
        y = y.unflatten(1, (g, k, out // g)).permute(2, 0, 1, 3, 4, 5)
        return ctx.fmt(y.reshape(k * b, out, *y.shape[-2:]))
