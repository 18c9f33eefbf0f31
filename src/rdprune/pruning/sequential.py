"""The LLM pruning papers' sequential protocol: prune block by block, each block's calibration
statistics taken from the outputs of the blocks already pruned.

Official source: locuslab/wanda ``lib/prune.py::prune_wanda`` (and SparseGPT's
``llama.py::llama_sequential``, OWL's, ATP's, AlphaPruning's and DLP's copies of that loop). For
each calibration chunk the input of block 0 and the arguments the model passes each block
(position embeddings, masks) are captured once; then, block by block:

1. the block runs on its current inputs with hooks on its prunable linears, which collect the
   criterion's statistics (Wanda: feature norms; SparseGPT: the Hessian) -- all of the block's
   linears from this one forward of the still-dense block (not "true sequential");
2. the block's linears are pruned at their sparsities;
3. the pruned block runs again on the same inputs, and its outputs are the next block's inputs.

Magnitude needs no data: there the protocol is the same as pruning every layer at once. The
dense-input variant (``prune.sequential=false``) measures every layer's statistics on the model as
given, in one pass, as the RD curves do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rdprune.models.lm import BlockCalls, block_calls, block_index, decoder_blocks, run_block
from rdprune.pruning.criteria import Criterion, prune_layers
from rdprune.pruning.statistics import Collector
from rdprune.progress import bar as progress_bar


@torch.no_grad()
def prune_sequential(
    model: nn.Module, layers: Mapping[str, nn.Module], sparsities: Mapping[str, float],
    criterion: str, calib: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None, *,
    batch_size: int = 16, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune a :class:`~rdprune.models.lm.CausalLM` block by block (module docstring).

    Args:
        model: the causal LM (pruned in place; eval mode is used and restored).
        layers: its prunable layers ``{name: module}`` (names as in ``model``).
        sparsities: ``{layer name: sparsity}`` of the layers to prune.
        criterion: ``wanda`` or ``sparsegpt`` (``magnitude`` needs no data: use
            :func:`~rdprune.pruning.criteria.prune_layers`).
        calib: calibration token ids ``[N, T]``.
        masks: masks already applied (weights removed before stay removed).
        batch_size: sequences per forward.
        progress: show a progress bar over the blocks.

    Returns:
        ``{layer name: keep mask}`` for the layers of ``sparsities``.
    """
    kind = {"wanda": "norms", "sparsegpt": "hessian"}[criterion]
    device = next(model.parameters()).device
    blocks = decoder_blocks(model)
    by_block: dict[int, list[str]] = {}
    for name in sparsities:
        by_block.setdefault(block_index(name), []).append(name)
    was_training = model.training
    model.eval()
    new: dict[str, torch.Tensor] = {}
    try:
        chunks = [calib[i:i + batch_size].to(device) for i in range(0, len(calib), batch_size)]
        calls: list[BlockCalls] = [block_calls(model, blocks, x) for x in chunks]
        hidden = [c.hidden for c in calls]
        for b in progress_bar(range(len(blocks)), desc=f"prune ({criterion}, sequential)",
                              disable=not progress):
            names = by_block.get(b, [])
            if names:
                with Collector({n: layers[n] for n in names}, kind) as col:
                    for h, c in zip(hidden, calls):
                        run_block(blocks, b, h, c)
                crit = Criterion(criterion, col.result())
                new.update(prune_layers({n: layers[n] for n in names},
                                        {n: sparsities[n] for n in names}, crit,
                                        None if masks is None else {n: masks[n] for n in names}))
            hidden = [run_block(blocks, b, h, c) for h, c in zip(hidden, calls)]
    finally:
        model.train(was_training)
    return {n: new[n] for n in sparsities}
