"""Every allocation method, declared once: :data:`METHODS`.

An entry says what a method is (its family, what it allocates to, whether it measures RD curves,
whether it is the paper's method or a variant, whether it needs a language model), where it comes
from, and how it is built. The configs (``conf/method/<name>.yaml``: ``_target_:
rdprune.methods.registry.method`` plus the method's options), the Python API
(:func:`rdprune.allocate`), the report's order, its plots and its statistics all read this table;
a test checks that every entry has its config and every config its entry.

Families:

- ``rd``: the paper's method and its variants (:class:`~rdprune.methods.rd.RateDistortion`; options:
  the ``rd.*`` keys);
- ``baseline``: pure functions of the weights (:mod:`rdprune.methods.baselines`);
- ``llm``: block-wise layer sparsities of the LLM literature (:mod:`rdprune.methods.llm_baselines`);
- ``search``: a search on the model's loss (EvoPress, :mod:`rdprune.methods.evopress`);
- ``fixed``: per-layer sparsities given in the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rdprune.errors import UserError


@dataclass(frozen=True)
class MethodInfo:
    """One method (module docstring).

    Attributes:
        name: the method's name (``method=<name>``, ``rdprune.allocate(method=...)``).
        family: ``rd``, ``baseline``, ``llm``, ``search`` or ``fixed``.
        summary: what it does, in one line.
        source: the paper and official code it follows.
        units: what gets one sparsity: ``layer`` or ``block`` (a decoder block's linears).
        profiles: it measures RD curves (takes the ``rd.*`` options, ``rd.shard``).
        ours: the paper's method or one of its variants (reports single them out).
        needs_blocks: it needs a language model's decoder blocks.
        fn: the pure allocation function (``baseline`` and ``llm`` families).
        settings: fixed constructor arguments (the RD variants' calibration and granularity).
    """

    name: str
    family: str
    summary: str
    source: str = ""
    units: str = "layer"
    profiles: bool = False
    ours: bool = False
    needs_blocks: bool = False
    fn: Callable[..., list[float]] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


def options(entry: MethodInfo) -> list[str]:
    """The settings a method's config may hold besides ``name`` (an RD method takes ``rd.*``
    instead)."""
    import inspect

    if entry.family in ("rd", "baseline"):
        return []
    if entry.family == "llm":
        fixed = {"weights", "sparsity", "blocks", "scores", "alphas"}
        return [p for p in inspect.signature(entry.fn).parameters if p not in fixed]
    if entry.family == "search":
        from rdprune.methods.evopress import EvoPress

        return list(inspect.signature(EvoPress).parameters)
    return ["sparsities"]


def _table() -> dict[str, MethodInfo]:
    from rdprune.methods import baselines as b
    from rdprune.methods import llm_baselines as llm

    rd = "Xu et al., ICCV 2023 (Akimoto-Cris/RD_PRUNE)"
    entries = [
        MethodInfo("ours", "rd", "an RD curve per layer, the exact DP under the budget", rd,
                   profiles=True, ours=True, settings={"calibration": "data"}),
        MethodInfo("ours_block", "rd", "an RD curve per decoder block (its linears pruned "
                   "together), the DP over blocks", "this repository", units="block",
                   profiles=True, ours=True, needs_blocks=True,
                   settings={"calibration": "data", "granularity": "block"}),
        MethodInfo("ours_zerodata", "rd", "RD curves on i.i.d. synthetic inputs instead of data",
                   rd, profiles=True, ours=True, settings={"calibration": "synthetic"}),
        MethodInfo("evopress", "search", "evolutionary search over per-layer levels on the "
                   "calibration KL", "Sieberling et al., 2024 (IST-DASLab/EvoPress)"),
        MethodInfo("owl", "llm", "per-block outlier ratio of the Wanda metric mapped to a band "
                   "around the target", "Yin et al., ICML 2024 (luuyin/OWL)", units="block",
                   needs_blocks=True, fn=llm.owl),
        MethodInfo("dlp", "llm", "per-block mean Wanda score mapped to a band around the target "
                   "(more important, less pruned)", "Chen et al., 2025 (ironartisan/DLP)",
                   units="block", needs_blocks=True, fn=llm.dlp),
        MethodInfo("atp", "llm", "block sparsities in arithmetic progression over depth",
                   "arXiv 2502.14770 (wzhuang-xmu/ATP)", units="block", needs_blocks=True,
                   fn=llm.atp),
        MethodInfo("alpha_pruning", "llm", "heavy-tail exponent of each block's weight spectra "
                   "mapped to a band around the target", "Lu et al., NeurIPS 2024 "
                   "(haiquanlu/AlphaPruning)", units="block", needs_blocks=True,
                   fn=llm.alpha_pruning),
        MethodInfo("lamp", "baseline", "global top-k of layer-adaptive magnitude scores",
                   "Lee et al., ICLR 2021", fn=b.lamp),
        MethodInfo("global_magnitude", "baseline", "one |w| threshold over all prunable "
                   "weights", fn=b.global_magnitude),
        MethodInfo("erk", "baseline", "density proportional to the sum over the product of the "
                   "weight's dimensions", "Evci et al., ICML 2020", fn=b.erk),
        MethodInfo("uniform_plus", "baseline", "first layer dense, last keeps >= 20%, the rest "
                   "uniform", "Gale et al., 2019", fn=b.uniform_plus),
        MethodInfo("uniform", "baseline", "the same sparsity in every layer", fn=b.uniform),
        MethodInfo("fixed", "fixed", "per-layer sparsities from the config"),
    ]
    return {m.name: m for m in entries}


_METHODS: dict[str, MethodInfo] | None = None


def methods() -> dict[str, MethodInfo]:
    """The table, in the report's order (the paper's method first)."""
    global _METHODS
    if _METHODS is None:
        _METHODS = _table()
    return _METHODS


def info(name: str) -> MethodInfo:
    """The entry of ``name``, or a one-line UserError listing the methods."""
    try:
        return methods()[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose one of "
                        f"{', '.join(methods())}") from None


def is_ours(label: str) -> bool:
    """Whether a report label (``method`` or ``method (variant)``) is the paper's method."""
    entry = methods().get(str(label).split(" (")[0])
    return entry is not None and entry.ours


def method(name: str, options: Mapping[str, Any] | None = None, **hyper: Any) -> Any:
    """Build the method ``name`` (the ``_target_`` of every ``conf/method`` file and what
    :func:`rdprune.allocate` calls): ``options`` are the ``rd.*`` of an RD method, ``hyper`` the
    method's own settings (an LLM method's hyperparameters, ``fixed``'s sparsities).

    Raises:
        UserError: an unknown name, or a setting the method does not take.
    """
    entry = info(name)
    if entry.family == "rd":
        from rdprune.methods.rd.rate_distortion import rate_distortion

        if hyper:
            raise UserError(f"method {name} takes its options from rd.*, not "
                            f"{', '.join(sorted(hyper))}")
        return rate_distortion(name=name, options=options, **entry.settings)
    if options:
        raise UserError(f"method {name} has no rd.* options (they are for RD methods)")
    from rdprune.methods import allocators

    if entry.family == "baseline":
        if hyper:
            raise UserError(f"method {name} takes no options, got {', '.join(sorted(hyper))}")
        return allocators.Baseline(name, entry.fn)
    if entry.family == "llm":
        return allocators.LMBaseline(name, entry.fn, **hyper)
    if entry.family == "search":
        from rdprune.methods.evopress import EvoPress

        return EvoPress(**hyper)
    return allocators.Fixed(name, **hyper)
