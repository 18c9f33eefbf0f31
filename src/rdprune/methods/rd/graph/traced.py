"""The fast path's one object: a model traced once, run with one layer pruned many ways."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import fx, nn

from rdprune.methods.rd.graph.bind import bind, channels_last_weights, fold_batchnorm, get_attr
from rdprune.methods.rd.graph.errors import Untraceable
from rdprune.methods.rd.graph.execute import Placement, Executor, stacked_source
from rdprune.methods.rd.graph.plan import Plan, closure, full_plan, layer_plan, shape_reads
from rdprune.methods.rd.graph.trace import trace


class TracedModel:
    """A model traced with ``torch.fx``, normalised, and planned for each of ``layers``.

    Args:
        model: the network in eval mode (read, never modified; weights are read at construction).
        layers: the Conv2d / Linear layers to prune, in the order :meth:`pruned_outputs` indexes.
        fold_bn: fold eval-mode BatchNorm2d into the conv before it (changes float32 rounding).
        channels_last: conv weights in channels-last format (activations follow the inputs).

    Raises:
        Untraceable: the graph cannot represent the model or one of the layers faithfully.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[nn.Module], *, fold_bn: bool, channels_last: bool
    ):
        graph = trace(model, layers)
        bindings = bind(graph, model)
        if fold_bn:
            bindings = fold_batchnorm(graph, bindings)
        if channels_last:
            bindings = channels_last_weights(bindings)
        nodes = list(graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        # Placeholders with a default are optional forward arguments: they get the default.
        defaults = {n: n.args[0] for n in placeholders if n.args}
        required = [n for n in placeholders if n not in defaults]
        if len(required) != 1:
            raise Untraceable(f"the model takes {len(required)} inputs, expected 1")
        _check_tied(model, layers)
        self._input = required[0]
        self._output = next(n for n in nodes if n.op == "output")
        self._layers = list(layers)
        self._nodes = nodes
        self._executor = Executor(nodes, bindings, defaults)
        self._batch = closure([self._input], down=True)
        self._reads = shape_reads(nodes, self._batch)
        self._full = full_plan(nodes, self._output)
        self._sources = [_sources(nodes, model, m, bindings.weighted) for m in layers]
        self._plans = [self._layer_plan(s, reuse=True) for s in self._sources]
        self._no_reuse_plans: dict[int, Plan] = {}  # an ablation: planned when first asked for
        #: pruned variants may run stacked along the batch (False with batch-statistics BN,
        #: where samples of different variants would mix)
        self.grid_batchable = not bindings.batch_stats

    def reference(self, x: torch.Tensor, ctx: Placement) -> torch.Tensor:
        """The unpruned output on the batch ``x``."""
        env = self._executor.run(self._full.downstream, self._full.down_free, self._feed(x), ctx)
        return env[self._output]

    def affects_output(self, li: int) -> bool:
        """Whether layer ``li``'s weight reaches the output at all (if not: distortion 0)."""
        return self._plans[li].reaches_output

    def pruned_outputs(
        self,
        li: int,
        x: torch.Tensor,
        zeroed: Sequence[torch.Tensor],
        ctx: Placement,
        *,
        group: int = 1,
        reuse: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Outputs on ``x`` with layer ``li``'s weight zeroed at each of ``zeroed``, in order.

        Args:
            li: index of the layer in ``layers``.
            x: one batch of inputs ``[b, ...]``.
            zeroed: flat positions of the weight to zero, one index tensor per variant (applied
                to the effective, maybe BN-folded weight).
            ctx: device, autocast and memory format.
            group: variants run together along the batch dimension (1 for a layer whose weight
                is used functionally).
            reuse: compute only the layer's descendants per group (``False``: everything).

        Yields:
            ``[k, b, ...]`` per group of ``k <= group`` consecutive variants.
        """
        plan = self._plans[li] if reuse else self._no_reuse_plan(li)
        group = max(1, group) if plan.batchable else 1
        b = x.shape[0]
        boundary = self._executor.run(plan.upstream, plan.up_free, self._feed(x), ctx)
        bases = {s: self._weight(s, li) for s in plan.sources}
        for start in range(0, len(zeroed), group):
            part = zeroed[start : start + group]
            weights = {
                s: [w.reshape(-1).index_fill(0, idx, 0).view_as(w) for idx in part]
                for s, w in bases.items()
            }  # built per group (cheap) to keep memory at `group` weight copies
            y = self._downstream(plan, boundary, weights, b, ctx)
            yield y.reshape(len(part), b, *y.shape[1:])

    # -- internals ---------------------------------------------------------------------------

    def _layer_plan(self, sources: list[fx.Node], reuse: bool) -> Plan:
        inputs = {n for n in self._nodes if n.op == "placeholder"}
        return layer_plan(
            self._nodes, sources, self._output, inputs=inputs, reads=self._reads, reuse=reuse
        )

    def _no_reuse_plan(self, li: int) -> Plan:
        if li not in self._no_reuse_plans:
            self._no_reuse_plans[li] = self._layer_plan(self._sources[li], reuse=False)
        return self._no_reuse_plans[li]

    def _feed(self, x: torch.Tensor):
        return {self._input: x}.__getitem__

    def _weight(self, source: fx.Node, li: int) -> torch.Tensor:
        site = self._executor.bindings.weighted.get(source)
        return site.weight if site is not None else self._layers[li].weight.detach()

    def _downstream(
        self,
        plan: Plan,
        boundary: dict[fx.Node, object],
        weights: dict[fx.Node, list[torch.Tensor]],
        b: int,
        ctx: Placement,
    ) -> torch.Tensor:
        """The output for k variants, stacked ``[k * b, ...]`` (variant-major)."""
        k = len(next(iter(weights.values())))
        expanded: dict[fx.Node, object] = {}

        def value(n: fx.Node) -> object:
            v = boundary[n]
            # A cached batch tensor read by a descendant is repeated once per variant.
            if k > 1 and n in self._batch and isinstance(v, torch.Tensor) and (
                v.dim() >= 1 and v.shape[0] == b
            ):
                if n not in expanded:
                    expanded[n] = ctx.fmt(v.repeat(k, *([1] * (v.dim() - 1))))
                return expanded[n]
            return v

        sources = {
            s: stacked_source(self._executor, s, w, b, ctx) for s, w in weights.items()
        }
        env = self._executor.run(plan.downstream, plan.down_free, value, ctx, sources)
        y = env[self._output]
        if not isinstance(y, torch.Tensor) or y.shape[0] != k * b:
            raise RuntimeError(f"grid batching changed the output batch ({k} x {b} expected)")
        return y


def _sources(
    nodes: list[fx.Node], root: nn.Module, mod: nn.Module, weighted: dict
) -> list[fx.Node]:
    """The nodes where ``mod``'s weight enters the graph: its calls and reads of its weight."""
    sources = []
    for node in nodes:
        if node.op == "call_module" and root.get_submodule(node.target) is mod:
            if node not in weighted:
                raise Untraceable(f"{node.target} ({type(mod).__name__}) has a custom forward")
            sources.append(node)
        elif node.op == "get_attr" and get_attr(root, node.target) is mod.weight:
            sources.append(node)
    if not sources:
        raise Untraceable(f"a {type(mod).__name__} layer does not appear in the traced graph")
    return sources


def _check_tied(root: nn.Module, layers: Sequence[nn.Module]) -> None:
    """A weight shared with another module would be pruned there too; not modelled here."""
    counts: dict[int, int] = {}
    for _, p in root.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    for mod in layers:
        if counts.get(id(mod.weight), 0) > 1:
            raise Untraceable("a prunable weight is shared with another module")
