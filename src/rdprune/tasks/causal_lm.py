"""Causal language modelling: a Hugging Face causal LM wrapped as
:class:`~rdprune.models.lm.CausalLM` (token ids ``[N, T]`` -> logits ``[N, T, V]``).

Prunable: the linear weights of the decoder blocks (Wanda's ``find_layers``; every expert of a
mixture-of-experts block), not the embeddings or ``lm_head`` (``model.prunable=all`` adds it). RD
curves come from the block-chain fast path (:mod:`rdprune.methods.rd.profiling.lm`); pruning with
a data criterion follows the published sequential protocol (:mod:`rdprune.pruning.sequential`)
unless ``sequential=False``; the headline metric is test perplexity (lower is better), beside the
next-token top-1. A pruned model is exported as a ``save_pretrained`` directory
(:mod:`rdprune.models.export`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rdprune.errors import UserError
from rdprune.tasks import Task


class CausalLanguageModel(Task):
    """A causal LM (module docstring)."""

    name = "causal_lm"
    metrics = {"perplexity": False, "top1": True}
    token_distributions = True
    model_factories = ("rdprune.models.causal_lm",)
    data_factories = ("rdprune.data.text",)

    @staticmethod
    def claims(model: nn.Module) -> bool:
        from rdprune.models.lm import CausalLM

        return isinstance(model, CausalLM)

    @staticmethod
    def adopts(model: nn.Module) -> bool:
        return type(model).__module__.startswith("transformers.") and hasattr(
            model, "get_output_embeddings")

    def adapt(self, model: nn.Module) -> tuple[nn.Module, str]:
        from rdprune.models.lm import CausalLM

        if isinstance(model, CausalLM):
            return model, ""
        return CausalLM(model), "hf."

    model_keys = ("vocab_size", "seq_len", "tokenizer")

    def model_inputs(self, data: Any) -> dict[str, Any]:
        return {"vocab_size": data.vocab_size, "seq_len": data.seq_len,
                "tokenizer": data.tokenizer_name}

    def place(self, model: nn.Module, device: torch.device) -> None:
        """On the run's device, unless the model was spread over several (``device_map``)."""
        from rdprune.pruning.layers import unwrap

        if getattr(unwrap(model).hf, "hf_device_map", None) is None:
            model.to(device)

    def ready(self, model: nn.Module) -> None:
        from rdprune.pruning.layers import unwrap

        base = unwrap(model)
        if next(base.parameters()).dtype != base.compute_dtype:
            base.to(base.compute_dtype)

    def describe(self) -> str:
        return "a language model"

    def needs(self) -> str:
        return "dataset=text"

    def check_calibration(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[0] == 0 or x.dtype not in (torch.int64, torch.int32):
            raise UserError(f"calib of a language model must be token ids [N, T] (int64), got a "
                            f"{x.dtype} tensor of shape {tuple(x.shape)}")

    def mac_sample(self, example: torch.Tensor) -> torch.Tensor:
        return example[:, :1]  # MACs per token: a window of one token

    def synthetic_inputs(self, model: nn.Module, like: torch.Tensor, seed: int) -> torch.Tensor:
        from rdprune.pruning.layers import unwrap

        vocab = unwrap(model).hf.get_output_embeddings().weight.shape[0]
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, vocab, tuple(like.shape), generator=g)

    def prunable(self, model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
        from rdprune.pruning.layers import find_prunable, unwrap

        return find_prunable(model, example, allowed=unwrap(model).prunable_names())

    def blocks(self, names: list[str]) -> list[int]:
        from rdprune.models.lm import block_index

        found = []
        for name in names:
            b = block_index(name)
            if b is None:
                raise UserError(f"cannot tell the decoder block of layer {name!r}: block-wise "
                                "methods allocate over the decoder blocks' layers (leave "
                                "model.prunable=blocks)")
            found.append(b)
        return found

    def curves(self, model: nn.Module, inputs: torch.Tensor, grid: np.ndarray, reduction: str,
               **options: Any) -> np.ndarray:
        from rdprune.methods.rd.profiling.lm import lm_curves

        return lm_curves(model, inputs, grid, reduction, **options)

    def prune(self, model: nn.Module, layers: Mapping[str, nn.Module],
              sparsities: Mapping[str, float], criterion: Any, calib: torch.Tensor | None,
              masks: Mapping[str, torch.Tensor] | None = None, *, sequential: bool = True,
              batch_size: int = 16) -> dict[str, torch.Tensor]:
        """Block by block with a data criterion, unless ``sequential=False``
        (:mod:`rdprune.pruning.sequential`); magnitude needs no data."""
        from rdprune.pruning.criteria import DATA_CRITERIA, Criterion
        from rdprune.pruning.sequential import prune_sequential

        name = criterion.name if isinstance(criterion, Criterion) else str(criterion)
        if not sequential or name not in DATA_CRITERIA:
            return super().prune(model, layers, sparsities, criterion, calib, masks,
                                 batch_size=batch_size)
        if calib is None:
            raise UserError(f"criterion={name} needs calibration inputs: pass calib=...")
        return prune_sequential(model, layers, sparsities, name, calib, masks,
                                batch_size=batch_size, progress=False)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from rdprune.data.text_corpus import lm_loss

        return lm_loss(logits, target)

    def evaluate(self, model: nn.Module, data: Any, device: torch.device,
                 split: str = "test") -> dict[str, Any]:
        return data.evaluate(model, device, split=split)

    def has_validation(self, data: Any) -> bool:
        return True

    def validation_loss(self, model: nn.Module, data: Any, device: torch.device) -> float:
        return data.evaluate(model, device, split="validation")["nll"]

    def summary_lines(self, metrics: Mapping[str, Any]) -> list[str]:
        return [f"  {'dense perplexity':<22}{metrics['dense_perplexity']:8.2f}",
                f"  {'pruned perplexity':<22}{metrics['pruned_perplexity']:8.2f}  (no fine-tuning)",
                f"  {'final perplexity':<22}{metrics['perplexity']:8.2f}",
                f"  {'dense next-token top-1':<22}{metrics['dense_top1']:8.2f} %",
                f"  {'pruned next-token top-1':<22}{metrics['pruned_top1']:8.2f} %",
                f"  {'final next-token top-1':<22}{metrics['top1']:8.2f} %"]

    def export(self, model: nn.Module, out: Path, data: Any, info: Mapping[str, Any]) -> None:
        from rdprune.models.export import save_pretrained

        save_pretrained(model, out / "pruned_model", tokenizer=data.tokenizer, info=info)
