"""A pruned language model as transformers users load it: a ``save_pretrained`` directory.

:func:`save_pretrained` writes the wrapped model's config and weights (safetensors, in the model's
dtype; a mixture-of-experts model's experts fused back into the library's own layout) and its
tokenizer, so ``AutoModelForCausalLM.from_pretrained(dir)`` -- and vLLM, lm-evaluation-harness --
load it with every pruned weight still zero; ``sparsity.json`` beside them records the per-layer
sparsities read from the saved weights, the method, criterion and target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdprune.pruning.masks import kept_count

#: fields of the run's metrics copied into ``sparsity.json``
RECORD = ("method", "criterion", "target_sparsity", "achieved_sparsity", "options", "model",
          "dataset", "seed", "perplexity", "dense_perplexity")


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The wrapped model's state dict in the library's own layout (experts fused back)."""
    from rdprune.models.moe import fused_state_dict

    return fused_state_dict(model.hf)


def layer_sparsities(model: nn.Module, layers: Mapping[str, nn.Module] | None = None
                     ) -> dict[str, float]:
    """Per prunable layer (names as in the transformers model), the fraction of zero weights."""
    if layers is None:
        names = model.prunable_names()
        layers = {n: model.get_submodule(n) for n in names}
    out = {}
    for name, m in layers.items():
        w = m.weight.detach()
        out[name.removeprefix("hf.")] = 1.0 - kept_count(w != 0) / w.numel()
    return out


def save_pretrained(model: nn.Module, out: str | os.PathLike, *, tokenizer: Any = None,
                    info: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (a :class:`~rdprune.models.lm.CausalLM`) as a ``save_pretrained``
    directory with its tokenizer and ``sparsity.json``; returns the directory.

    Args:
        model: the pruned model.
        out: the directory (created; files in it are replaced).
        tokenizer: a transformers tokenizer, a ``tokenizers.Tokenizer`` (wrapped as a fast
            tokenizer), or None (none saved; ``sparsity.json`` says so).
        info: the run's metrics (method, criterion, target, ...).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf = model.hf
    hf.save_pretrained(out, state_dict=hf_state_dict(model), safe_serialization=True)
    saved = _save_tokenizer(tokenizer, out)
    record = {k: info[k] for k in RECORD if info is not None and k in info}
    record.update(dtype=str(next(hf.parameters()).dtype).removeprefix("torch."),
                  tokenizer=saved, layers=layer_sparsities(model))
    tmp = out / ".sparsity.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / "sparsity.json")
    return out


def _save_tokenizer(tokenizer: Any, out: Path) -> str | None:
    """Save the tokenizer beside the model; what was saved, in words (None: nothing)."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out)
        return type(tokenizer).__name__
    if type(tokenizer).__module__.startswith("tokenizers"):  # the BPE trained here
        from transformers import PreTrainedTokenizerFast

        from rdprune.data.text_corpus import EOT

        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOT,
                                bos_token=EOT, unk_token=EOT).save_pretrained(out)
        return "PreTrainedTokenizerFast (byte-level BPE trained by rdprune)"
    return None
