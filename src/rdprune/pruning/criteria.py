"""Criteria: which weights of a layer go, given how many (``prune.criterion``).

Allocation decides *how many* weights each layer loses; the criterion decides *which*, and what the
layer's remaining weights become:

- ``magnitude`` (the paper): the smallest ``|w|`` of the layer (:func:`~.masks.magnitude_mask_count`);
  the rest unchanged.
- ``wanda`` (Sun et al., ICLR 2024; locuslab/wanda ``lib/prune.py::prune_wanda``): the smallest
  ``|W_ij| * ||X_j||_2`` within each output row (:func:`~.masks.wanda_mask_count`), ``X_j`` input
  feature j over every calibration token; the rest unchanged.
- ``sparsegpt`` (Frantar & Alistarh, ICML 2023; IST-DASLab/sparsegpt ``SparseGPT.fasterprune``):
  weights chosen by the OBS saliency ``w^2 / [H^-1]_jj^2`` per 128-column block and the remaining
  weights of each row updated to reconstruct the layer's output on the calibration inputs
  (:mod:`.sparsegpt`), with ``H = (2 / N) sum X X^T``.

Every criterion removes exactly ``k = num_pruned(n, s)`` weights (already-zero weights of an
earlier round first), so a target is met to the weight. The data criteria read calibration
statistics of each layer's input (:func:`measure`): ``wanda`` the feature norms, ``sparsegpt`` the
Hessian; both are linear-layer criteria (a convolution has no output rows to compare within).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rdprune.errors import UserError
from rdprune.pruning.layers import out_in
from rdprune.pruning.masks import magnitude_mask_count, magnitude_order, num_pruned, \
    wanda_mask_count

#: within-layer criteria (``prune.criterion``)
CRITERIA = ("magnitude", "wanda", "sparsegpt")
#: the criteria that read calibration statistics of each layer's input (linear layers only)
DATA_CRITERIA = ("wanda", "sparsegpt")
#: SparseGPT's official settings (``llama.py``; the Wanda / OWL / ATP wrappers hard-code them)
BLOCKSIZE, PERCDAMP = 128, 0.01


def check_criterion(name: str, layers: Mapping[str, nn.Module]) -> None:
    """One line, before any work, when ``name`` is unknown or cannot prune ``layers``."""
    if name not in CRITERIA:
        raise UserError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got {name!r}")
    if name in DATA_CRITERIA:
        conv = [n for n, m in layers.items() if m.weight.dim() != 2]
        if conv:
            raise UserError(
                f"prune.criterion={name} compares the weights of each output row of a linear "
                f"layer; {len(conv)} of the {len(layers)} prunable layers are not linear "
                f"({conv[0]}: {type(layers[conv[0]]).__name__}): use prune.criterion=magnitude")


class Criterion:
    """Which weights of a layer go first, and what the others become (module docstring).

    Args:
        name: one of :data:`CRITERIA`.
        stats: per layer name, the input statistics the criterion reads: ``wanda``: the feature
            norms ``||X_j||_2`` (``[d_in]``); ``sparsegpt``: the Hessian ``(2/N) sum X X^T``
            (``[d_in, d_in]``). None for ``magnitude``.
    """

    def __init__(self, name: str = "magnitude",
                 stats: Mapping[str, torch.Tensor] | None = None) -> None:
        if name not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {name!r}")
        if name in DATA_CRITERIA and stats is None:
            raise ValueError(f"the {name} criterion needs the layers' input statistics")
        self.name, self.stats = name, (dict(stats) if stats is not None else None)

    @property
    def zeros_only(self) -> bool:
        """Whether pruning only zeros weights (the others unchanged): magnitude and Wanda."""
        return self.name != "sparsegpt"

    @property
    def norms(self) -> dict[str, torch.Tensor] | None:
        """The input feature norms ``||X_j||_2`` per layer (Wanda's, OWL's and DLP's metric),
        up to one factor per layer; derived from the Hessian's diagonal for ``sparsegpt``."""
        if self.stats is None:
            return None
        if self.name == "wanda":
            return self.stats
        return {k: h.diagonal().clamp(min=0).sqrt().float() for k, h in self.stats.items()}

    def key(self) -> tuple:
        """What the criterion's choices depend on, for cache keys."""
        return (self.name, self.stats)

    def subset(self, names: Sequence[str]) -> Criterion:
        """The same criterion with the statistics of ``names`` only."""
        if self.stats is None:
            return self
        return Criterion(self.name, {k: self.stats[k] for k in names})

    def mask_count(self, name: str, module: nn.Module, k: int) -> torch.Tensor:
        """The keep-mask of ``module``'s weight (its own layout) removing exactly ``k`` weights
        (at least its already-zero ones)."""
        if self.name == "magnitude":
            return magnitude_mask_count(module.weight, k)
        self._linear(name, module)
        if self.name == "wanda":
            return out_in(module, wanda_mask_count(out_in(module), self.stats[name], k))
        return self.pruned_weights(name, module, [k])[0][1]

    def mask(self, name: str, module: nn.Module, sparsity: float) -> torch.Tensor:
        return self.mask_count(name, module, num_pruned(module.weight.numel(), sparsity))

    def removed(self, name: str, module: nn.Module, counts: Sequence[int]
                ) -> list[torch.Tensor]:
        """Flat indices (in the weight's layout) of the weights removed when ``k`` go, for each
        ``k`` of ``counts`` (criteria that only zero weights: :attr:`zeros_only`)."""
        if not self.zeros_only:
            raise ValueError(f"the {self.name} criterion changes the remaining weights too: "
                             "use pruned_weights")
        if self.name == "magnitude":  # the first k of one order: no mask needed
            order = magnitude_order(module.weight)
            return [order[:k] for k in counts]
        return [torch.nonzero(~self.mask_count(name, module, k).flatten()).flatten()
                for k in counts]

    def pruned_weights(self, name: str, module: nn.Module, counts: Sequence[int],
                       forced: torch.Tensor | None = None
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight, keep mask)`` of ``module`` (its own layout) with ``k`` weights removed,
        for each ``k`` of ``counts``; the module is not changed. ``forced``: weights that must
        go (an earlier round's, True = removed; default: the weight's zeros)."""
        w = module.weight.detach()
        if self.zeros_only:
            out = []
            for k in counts:
                mask = self.mask_count(name, module, k)
                if forced is not None:
                    mask = mask & ~forced
                out.append((torch.where(mask, w, torch.zeros_like(w)), mask))
            return out
        from rdprune.pruning.sparsegpt import sparsegpt_levels

        self._linear(name, module)
        gone = out_in(module, forced if forced is not None else w == 0)
        levels = sparsegpt_levels(out_in(module, w), self.stats[name].to(w.device), list(counts),
                                  blocksize=BLOCKSIZE, percdamp=PERCDAMP, forced=gone)
        return [(out_in(module, nw), out_in(module, m)) for nw, m in levels]

    @torch.no_grad()
    def prune(self, name: str, module: nn.Module, k: int,
              forced: torch.Tensor | None = None) -> torch.Tensor:
        """Remove ``k`` weights of ``module`` in place; returns the keep-mask."""
        weight, mask = self.pruned_weights(name, module, [k], forced)[0]
        module.weight.copy_(weight)
        return mask

    def masks(self, layers: Mapping[str, nn.Module], sparsities: Sequence[float]
              ) -> dict[str, torch.Tensor]:
        """Masks for every layer from per-layer sparsities (in the order of ``layers``)."""
        if len(sparsities) != len(layers):
            raise ValueError(f"{len(sparsities)} sparsities for {len(layers)} layers")
        return {name: self.mask(name, m, s) for (name, m), s in zip(layers.items(), sparsities)}

    def _linear(self, name: str, module: nn.Module) -> None:
        if module.weight.dim() != 2:
            raise UserError(f"prune.criterion={self.name} compares the weights of each output "
                            f"row of a linear layer; {name} is a {type(module).__name__}")


def measure(name: str, model: nn.Module, layers: Mapping[str, nn.Module],
            inputs: torch.Tensor | None, *, batch_size: int = 16,
            device: torch.device | str | None = None) -> Criterion:
    """The criterion ``name`` with the statistics it reads, measured on ``inputs`` (calibration
    inputs of ``model``) in one pass over them (:mod:`.statistics`)."""
    check_criterion(name, layers)
    if name == "magnitude":
        return Criterion()
    if inputs is None:
        raise UserError(f"criterion={name} needs calibration inputs: pass calib=...")
    from rdprune.pruning.statistics import input_statistics

    kind = "norms" if name == "wanda" else "hessian"
    return Criterion(name, input_statistics(model, layers, inputs, kind, batch_size=batch_size,
                                            device=device))


@torch.no_grad()
def prune_layers(layers: Mapping[str, nn.Module], sparsities: Mapping[str, float],
                 criterion: Criterion, masks: Mapping[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Prune each layer named in ``sparsities`` in place by ``criterion``; returns the new
    keep-masks. ``masks``: masks already applied (weights removed before stay removed)."""
    from rdprune.pruning.masks import apply_masks, check_masks

    new = {}
    for name, s in sparsities.items():
        module = layers[name]
        old = masks[name].to(module.weight.device) if masks is not None else None
        if criterion.zeros_only:
            mask = criterion.mask(name, module, float(s))
            new[name] = mask & old if old is not None else mask
        else:
            k = num_pruned(module.weight.numel(), float(s))
            new[name] = criterion.prune(name, module, k, None if old is None else ~old)
    apply_masks({k: layers[k] for k in new}, new)
    check_masks(layers, new, "after pruning")
    return new
