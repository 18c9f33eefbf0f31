"""Hugging Face causal language models as the pipeline sees a model: token ids -> logits.

:class:`CausalLM` wraps any ``transformers`` causal LM (``AutoModelForCausalLM``): ``forward``
takes token ids ``[B, T]`` and returns the logits ``[B, T, vocab]``, so training, calibration,
distortion and evaluation treat it like any other network. Its prunable layers are, by default,
the linear weights of the decoder blocks (LLaMA: q, k, v, o, gate, up, down; GPT-2's ``Conv1D``
counts as linear), not the embeddings or ``lm_head``, as Wanda's ``find_layers`` over
``model.layers`` (``prunable: all`` adds ``lm_head``). The model is built

- from a hub name with its weights (``name`` + ``weights: pretrained``, needs internet once),
- from a hub name's architecture at random init (``name``, ``weights: null``), or
- from a config (``name: null``, ``config: {model_type: llama, hidden_size: ...}``): the offline
  default, a small LLaMA trained here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rdprune.errors import UserError

PRUNABLE = ("blocks", "all")
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The decoder block of a module name (``hf.model.layers.3.mlp.up_proj`` -> 3), or None."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def linear_types() -> tuple[type, ...]:
    """nn.Linear and GPT-2's ``Conv1D`` (a linear layer with a transposed weight), the latter
    only once ``transformers`` is imported (no model can hold one before; importing it costs a
    second at every start-up)."""
    hf = sys.modules.get("transformers.pytorch_utils")
    return (nn.Linear, hf.Conv1D) if hf is not None else (nn.Linear,)


def out_in(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` (default: the weight) as ``(d_out, d_in)``: Conv1D stores ``(d_in, d_out)``."""
    t = module.weight if tensor is None else tensor
    return t.t() if type(module).__name__ == "Conv1D" else t


class CausalLM(nn.Module):
    """A causal LM: ``forward(ids [B, T]) -> logits [B, T, V]``.

    Args:
        hf: the ``transformers`` model (``...ForCausalLM``).
        prunable: ``blocks`` (linears inside the decoder blocks) or ``all`` (also ``lm_head``).
    """

    def __init__(self, hf: nn.Module, prunable: str = "blocks") -> None:
        super().__init__()
        if prunable not in PRUNABLE:
            raise UserError(f"model.prunable must be one of {', '.join(PRUNABLE)}, got "
                            f"{prunable!r}")
        self.hf, self.prunable = hf, prunable

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits

    def prunable_names(self) -> list[str]:
        """Names (in this module) of the prunable linear layers, in model order."""
        types = linear_types()
        return [name for name, m in self.named_modules() if isinstance(m, types)
                and (block_index(name) is not None
                     or (self.prunable == "all" and name.endswith("lm_head")))]


def causal_lm(*, name: str | None, weights: str | None, config: Mapping[str, Any] | None,
              vocab_size: int, prunable: str, seq_len: int) -> CausalLM:
    """Build the model of ``conf/model/hf_lm.yaml`` (see the module docstring).

    Args:
        name: a hub model name, or None to build from ``config``.
        weights: ``pretrained`` (the hub model's weights) or None (random init).
        config: ``transformers`` config keys (``model_type`` and its fields) when ``name`` is
            None; ``vocab_size`` and ``max_position_embeddings`` come from the data.
        vocab_size: the tokenizer's vocabulary size.
        prunable: ``blocks`` or ``all``.
        seq_len: the data's context length (at most the model's).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if weights not in (None, "pretrained"):
        raise UserError(f"model.weights must be pretrained or null, got {weights!r}")
    if name is None:
        if not config or "model_type" not in config:
            raise UserError("model.config needs a model_type (e.g. llama) when model.name is "
                            "null")
        spec = dict(config)
        cfg = AutoConfig.for_model(spec.pop("model_type"), vocab_size=vocab_size,
                                   max_position_embeddings=seq_len, **spec)
        if weights == "pretrained":
            raise UserError("model.weights=pretrained needs model.name (a hub model)")
        hf = AutoModelForCausalLM.from_config(cfg)
    else:
        try:
            if weights == "pretrained":
                hf = AutoModelForCausalLM.from_pretrained(name, torch_dtype=torch.float32)
            else:
                hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name))
        except OSError as e:
            raise UserError(f"model.name={name}: cannot load it ({str(e).splitlines()[0][:150]})"
                            "; it needs internet on first use (then the Hugging Face cache)"
                            ) from None
        size = hf.get_output_embeddings().weight.shape[0]
        if vocab_size > size:
            raise UserError(f"the tokenizer has {vocab_size} tokens but {name} predicts {size}: "
                            f"set dataset.tokenizer={name}")
    limit = getattr(hf.config, "max_position_embeddings", None) or getattr(
        hf.config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"dataset.seq_len={seq_len} exceeds the model's context of {limit} "
                        "tokens")
    return CausalLM(hf, prunable)
