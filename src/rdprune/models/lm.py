"""Hugging Face causal language models as the pipeline sees a model: token ids -> logits.

:class:`CausalLM` wraps any ``transformers`` causal LM (``AutoModelForCausalLM``): ``forward``
takes token ids ``[B, T]`` and returns the logits ``[B, T, vocab]``, so training, calibration,
distortion and evaluation treat it like any other network. Its prunable layers are, by default,
the linear weights of the decoder blocks (LLaMA: q, k, v, o, gate, up, down; GPT-2's ``Conv1D``
counts as linear; so does every expert's gate / up / down projection of a mixture-of-experts
block, which :func:`rdprune.models.moe.unfuse_experts` turns into ``nn.Linear`` layers when the
model is wrapped), not the embeddings, ``lm_head`` or a MoE router, as Wanda's ``find_layers`` over
``model.layers`` (``prunable: all`` adds ``lm_head``). The model is built

- from a hub name with its weights (``name`` + ``weights: pretrained``, needs internet once),
- from a hub name's architecture at random init (``name``, ``weights: null``), or
- from a config (``name: null``, ``config: {model_type: llama, hidden_size: ...}``): the offline
  default, a small LLaMA trained here.

The decoder blocks, and how the model calls them (:func:`decoder_blocks`, :func:`block_calls`,
:func:`run_block`), serve everything that runs the blocks one by one: the sequential pruning
protocol and the RD fast path. The blocks are the ``ModuleList`` named ``layers`` / ``h`` /
``blocks`` (LLaMA-likes and Gemma: ``model.layers``; GPT-2: ``transformer.h``; OPT:
``model.decoder.layers``; GPT-NeoX: ``gpt_neox.layers``); each block's own arguments are kept
(Gemma's sliding-window and global blocks get different masks and rotary tables).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rdprune.errors import UserError, one_line
from rdprune.models.moe import unfuse_experts
from rdprune.pruning.layers import linear_types

PRUNABLE = ("blocks", "all")
_LISTS = ("layers", "h", "blocks")
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


class NotAChain(ValueError):
    """The model is not an embeddings -> decoder blocks -> ... chain that can be run block by
    block."""


def block_index(name: str) -> int | None:
    """The decoder block of a module name (``hf.model.layers.3.mlp.up_proj`` -> 3), or None."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


class CausalLM(nn.Module):
    """A causal LM: ``forward(ids [B, T]) -> logits [B, T, V]``.

    Args:
        hf: the ``transformers`` model (``...ForCausalLM``). Its fused mixture-of-experts
            modules, if any, are replaced in place by per-expert linears computing the same
            (:func:`rdprune.models.moe.unfuse_experts`; export with
            :func:`rdprune.models.moe.fused_state_dict`).
        prunable: ``blocks`` (linears inside the decoder blocks) or ``all`` (also ``lm_head``).

    Attributes:
        compute_dtype: what calibration, profiling, pruning and evaluation run in (``model.dtype``):
            a model trained here is trained in float32 and cast to it when training is done.
    """

    def __init__(self, hf: nn.Module, prunable: str = "blocks") -> None:
        super().__init__()
        if prunable not in PRUNABLE:
            raise UserError(f"model.prunable must be one of {', '.join(PRUNABLE)}, got "
                            f"{prunable!r}")
        offloaded = [n for n, p in hf.named_parameters() if p.device.type == "meta"]
        if offloaded:
            raise UserError(f"{len(offloaded)} weights of the model are offloaded (on the meta "
                            f"device, e.g. {offloaded[0]}): pruning reads and writes every "
                            "weight in place; load it onto devices that hold it (device_map "
                            "over more GPUs, or max_memory), without disk or CPU offload")
        unfuse_experts(hf)  # fused experts -> one nn.Linear per expert projection (in place)
        self.hf, self.prunable = hf, prunable
        #: what the model computes in once it is ready (trained here: after dense training)
        self.compute_dtype = next(hf.parameters()).dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits

    def prunable_names(self) -> list[str]:
        """Names (in this module) of the prunable linear layers, in model order."""
        types = linear_types()
        return [name for name, m in self.named_modules() if isinstance(m, types)
                and (block_index(name) is not None
                     or (self.prunable == "all" and name.endswith("lm_head")))]


def blocks_path(model: nn.Module) -> str:
    """The name of the decoder blocks' ``ModuleList`` in ``model`` (a :class:`CausalLM` or a
    ``transformers`` model), e.g. ``hf.model.layers``."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and name.rsplit(".", 1)[-1] in _LISTS:
            return name
    raise NotAChain(f"no decoder block list ({' / '.join(_LISTS)}) in {type(model).__name__}")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` (a :class:`CausalLM` or a ``transformers`` model)."""
    return model.get_submodule(blocks_path(model))


class _Stop(Exception):
    """Ends a capturing forward."""


@dataclass
class BlockCalls:
    """How a model called its decoder blocks on one batch of token ids.

    Attributes:
        hidden: block 0's input hidden state ``[B, T, H]`` (a copy).
        args: per block, its positional arguments after the hidden state.
        kwargs: per block, its keyword arguments (without ``hidden_states``).
        keyword: per block, whether the hidden state came as ``hidden_states=``.
    """

    hidden: torch.Tensor
    args: list[tuple]
    kwargs: list[dict]
    keyword: list[bool]


def block_calls(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor) -> BlockCalls:
    """Each block's call arguments when ``model`` runs on ``ids`` (a forward that stops at the
    last block's call).

    Raises:
        NotAChain: a block was not called, or called without a hidden state.
    """
    seen: dict[int, tuple[tuple, dict]] = {}
    last = len(blocks) - 1

    def hook(j: int):
        def record(module, args, kwargs):
            seen.setdefault(j, (args, kwargs))
            if j == last:
                raise _Stop
        return record

    handles = [b.register_forward_pre_hook(hook(j), with_kwargs=True)
               for j, b in enumerate(blocks)]
    try:
        model(ids)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(blocks):
        raise NotAChain(f"blocks {sorted(set(range(len(blocks))) - set(seen))[:5]} were not "
                        "called")
    args, kwargs, keyword = [], [], []
    for j in range(len(blocks)):
        a, kw = seen[j]
        by_name = not a
        if by_name and not isinstance(kw.get("hidden_states"), torch.Tensor):
            raise NotAChain(f"block {j} was called without a hidden state")
        kw = {k: v for k, v in kw.items() if not (by_name and k == "hidden_states")}
        args.append(tuple(a[1:]))
        kwargs.append(kw)
        keyword.append(by_name)
    first = seen[0][1]["hidden_states"] if keyword[0] else seen[0][0][0]
    return BlockCalls(first.clone(), args, kwargs, keyword)


def run_block(blocks: nn.ModuleList, b: int, hidden: torch.Tensor, calls: BlockCalls
              ) -> torch.Tensor:
    """Block ``b``'s output hidden state on ``hidden``, with the arguments it got in ``calls``."""
    if calls.keyword[b]:
        out = blocks[b](*calls.args[b], hidden_states=hidden, **calls.kwargs[b])
    else:
        out = blocks[b](hidden, *calls.args[b], **calls.kwargs[b])
    return out[0] if isinstance(out, tuple) else out


#: ``model.dtype`` values (``auto``: a pretrained model's own, else float32)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def causal_lm(*, name: str | None, weights: str | None, config: Mapping[str, Any] | None,
              prunable: str, dtype: str = "auto", device_map: str | None = None,
              vocab_size: int, seq_len: int, tokenizer: str | None = None) -> CausalLM:
    """Build the model of ``conf/model/hf_lm.yaml`` (see the module docstring).

    Args:
        name: a hub model name (or a local ``save_pretrained`` directory), or None to build from
            ``config``.
        weights: ``pretrained`` (the hub model's weights) or None (random init).
        config: ``transformers`` config keys (``model_type`` and its fields) when ``name`` is
            None; ``vocab_size`` and ``max_position_embeddings`` come from the data.
        prunable: ``blocks`` or ``all``.
        dtype: ``auto`` (a pretrained model's own dtype, else float32), ``float32``,
            ``bfloat16`` or ``float16``: what calibration, profiling, pruning and evaluation run
            in. A model trained here trains in float32 and is cast after
            (``CausalLM.compute_dtype``).
        device_map: a pretrained model's ``device_map`` (accelerate, as transformers users load
            a model larger than one GPU: ``auto`` spreads its blocks over every visible GPU);
            None: the whole model on the run's ``device``. Offloading to CPU or disk is refused.
        vocab_size: the data's tokenizer size (supplied by the pipeline from the data).
        seq_len: the data's context length (supplied; at most the model's).
        tokenizer: the data's tokenizer (supplied): a hub name, ``bpe`` or ``byte``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from rdprune.models.hf_hub import load_error, locate

    if weights not in (None, "pretrained"):
        raise UserError(f"model.weights must be pretrained or null, got {weights!r}")
    if device_map is not None and weights != "pretrained":
        raise UserError("model.device_map places a pretrained model's weights: it needs "
                        "model.weights=pretrained")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"model.dtype must be auto, {', '.join(DTYPES)}, got {dtype!r}")
    if name is None:
        if weights == "pretrained":
            raise UserError("model.weights=pretrained needs model.name (a hub model)")
        if not config or "model_type" not in config:
            raise UserError("model.config needs a model_type (e.g. llama) when model.name is "
                            "null")
        spec = dict(config)
        kind = spec.pop("model_type")
        try:
            cfg = AutoConfig.for_model(kind, vocab_size=vocab_size,
                                       max_position_embeddings=seq_len, **spec)
            hf = AutoModelForCausalLM.from_config(cfg)
        except Exception as e:  # noqa: BLE001 - transformers' validators raise many types
            raise UserError(f"model.config is not a {kind} model transformers can build "
                            f"({one_line(e)})") from None
        target = DTYPES.get(dtype, torch.float32)
    else:
        where, local = locate(name, "model.name")
        try:
            if weights == "pretrained":
                _check_tokenizer(name, tokenizer)
                hf = AutoModelForCausalLM.from_pretrained(
                    where, dtype=DTYPES[dtype] if dtype != "auto" else "auto",
                    local_files_only=local, device_map=device_map)
                target = next(hf.parameters()).dtype
            else:  # the architecture at random init, sized to the data's tokenizer
                hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(
                    where, local_files_only=local, vocab_size=vocab_size))
                target = DTYPES.get(dtype, torch.float32)
        except OSError as e:
            raise load_error(name, "model.name", e) from None
        size = hf.get_output_embeddings().weight.shape[0]
        if vocab_size > size or (tokenizer != name and vocab_size != size):
            raise UserError(f"the tokenizer {tokenizer} has {vocab_size:,} tokens but {name} "
                            f"predicts {size:,}: leave dataset.tokenizer=auto (the model's own)")
    limit = getattr(hf.config, "max_position_embeddings", None) or getattr(
        hf.config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"dataset.seq_len={seq_len} exceeds the model's context of {limit} "
                        "tokens")
    model = CausalLM(hf, prunable)
    model.compute_dtype = target
    return model


def _check_tokenizer(name: str, tokenizer: str | None) -> None:
    """A pretrained model reads its own token ids: a tokenizer trained here would feed it
    foreign ones."""
    if tokenizer in ("bpe", "byte"):
        raise UserError(f"model.weights=pretrained reads {name}'s own token ids, but "
                        f"dataset.tokenizer={tokenizer} is trained here: leave "
                        "dataset.tokenizer=auto (the model's own)")
