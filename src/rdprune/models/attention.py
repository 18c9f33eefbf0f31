"""Fused attention weights made prunable: ``nn.MultiheadAttention`` as two ``nn.Linear`` calls.

``nn.MultiheadAttention`` (torchvision's ViT) reads its packed ``in_proj_weight`` (q, k and v,
``[3 d, d]``) and its ``out_proj.weight`` functionally, inside one fused kernel: no prunable layer
is called, and the weights used to be reported as ``unprunable_weights``. :func:`unfuse_attention`
replaces each such module by :class:`SelfAttention`, which computes the same function with an
``in_proj`` Linear (the packed weight, ``[3 d, d]``), scaled dot-product attention and the
``out_proj`` Linear: two prunable layers per block, found, counted (MACs) and profiled like any
other. A state dict of the original module (``in_proj_weight``, ``in_proj_bias``) loads into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdprune.errors import UserError


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed ``in_proj`` and an ``out_proj`` Linear.

    Computes what ``nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first)``
    computes for ``forward(x, x, x)`` (self-attention, no masks), to float32 rounding.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def of(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        """The equivalent of ``mha`` (its weights copied)."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise UserError("only plain self-attention nn.MultiheadAttention modules (no kdim/"
                            "vdim, bias_kv or zero attention) can be made prunable")
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                  mha.batch_first)
        with torch.no_grad():
            new.in_proj.weight.copy_(mha.in_proj_weight)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.in_proj.bias.copy_(mha.in_proj_bias)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                value: torch.Tensor | None = None, key_padding_mask=None,
                need_weights: bool = False, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query) \
                or key_padding_mask is not None or attn_mask is not None or need_weights:
            raise NotImplementedError("SelfAttention computes self-attention without masks or "
                                      "returned weights")
        x = query if self.batch_first else query.transpose(0, 1)  # [B, L, d]
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.in_proj(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = self.out_proj(y.transpose(1, 2).reshape(b, n, d))
        return (y if self.batch_first else y.transpose(0, 1)), None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the original module's packed keys
        for old, new in (("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias")):
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def unfuse_attention(model: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` of ``model`` by :class:`SelfAttention`, in place;
    returns how many were replaced."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.MultiheadAttention)]
    for name, mha in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, SelfAttention.of(mha))
    return len(targets)
