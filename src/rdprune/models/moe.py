"""Mixture-of-experts blocks with one ``nn.Linear`` per expert projection, and back.

``transformers`` 5 stores the experts of a sparse MoE block (Mixtral, Qwen3-MoE, Qwen2-MoE,
OLMoE, DeepSeek-V3, GPT-OSS, ...) fused in one module: ``gate_up_proj`` ``[E, 2I, H]`` and
``down_proj`` ``[E, H, I]`` (``[E, H, 2I]`` / ``[E, I, H]`` when the class is declared
``is_transposed``; gate and up rows interleaved when not ``is_concatenated``; biases
``gate_up_proj_bias`` / ``down_proj_bias`` when ``has_bias``). This project prunes layers, a layer
being a module with a 2-D ``.weight``, so :func:`unfuse_experts` replaces every such module by an
:class:`UnfusedExperts`: a ``ModuleList`` of :class:`Expert` (``gate_proj``, ``up_proj``,
``down_proj``: ``nn.Linear``, same dtype and device), called as the fused module is
(``(hidden_states [tokens, H], top_k_index, top_k_weights) -> [tokens, H]``) and computing the
same thing expert by expert. Each expert's three linears are then ordinary prunable layers of
their decoder block (``model.layers.3.mlp.experts.5.up_proj``), each counted once.

* The router (``MixtralTopKRouter`` and the like: a bare ``weight`` parameter, not a Linear)
  stays dense and is not touched.
* Every expert runs on every forward, on the tokens routed to it, possibly none: an expert that no
  calibration token reaches is still called (on an empty batch), so it is found as a prunable
  layer and its input statistics exist (zero).
* :func:`unfuse_experts` checks each replacement against the fused module on a few random tokens
  routed to every expert, and leaves a module it cannot reproduce fused (with a warning: its
  experts are then not prunable).

For export, :func:`fused_state_dict` gives the state dict in the original layout (pass it to
``save_pretrained(..., state_dict=...)``; a stock ``AutoModelForCausalLM`` loads it), and
:func:`refuse_experts` puts the fused modules back in place.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

#: attributes of a fused experts module this file understands (anything else with parameters or
#: submodules, e.g. a post-expert norm, leaves the module fused)
_KNOWN = {"gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias", "act_fn"}


def is_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` holds fused experts: 3-D ``gate_up_proj`` and ``down_proj`` parameters
    with the same number of experts, the first twice as wide as the second is deep."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter)):
        return False
    if gu.dim() != 3 or down.dim() != 3 or gu.shape[0] != down.shape[0]:
        return False
    if getattr(module, "is_transposed", False):  # [E, H, 2I] and [E, I, H]
        return gu.shape[2] == 2 * down.shape[1] and gu.shape[1] == down.shape[2]
    return gu.shape[1] == 2 * down.shape[2] and gu.shape[2] == down.shape[1]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, grad: bool) -> nn.Linear:
    """An ``nn.Linear`` holding (contiguous copies of) ``weight`` ``[out, in]`` and ``bias``;
    built on the meta device, so no initialisation runs."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta",
                    dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.clone(memory_format=torch.contiguous_format), grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.clone(memory_format=torch.contiguous_format), grad)
    return lin


class Expert(nn.Module):
    """One expert's projections: ``down_proj(gate(gate_proj(x), up_proj(x)))``."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj


class UnfusedExperts(nn.ModuleList):
    """A fused experts module as a list of :class:`Expert` (module docstring).

    Args:
        fused: the ``transformers`` experts module; its weights are copied, and it is kept
            (not as a submodule; its weights freed by :meth:`release`) for its gating function
            and to rebuild it (:meth:`fused`).
    """

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.transposed = bool(getattr(fused, "is_transposed", False))
        self.concatenated = bool(getattr(fused, "is_concatenated", True))
        grad = fused.gate_up_proj.requires_grad
        gu, down = fused.gate_up_proj.detach(), fused.down_proj.detach()
        if self.transposed:
            gu, down = gu.transpose(1, 2), down.transpose(1, 2)  # -> [E, 2I, H], [E, H, I]
        gu_b, down_b = (getattr(fused, k, None) for k in ("gate_up_proj_bias", "down_proj_bias"))
        bias = isinstance(gu_b, torch.Tensor) and isinstance(down_b, torch.Tensor)
        with torch.no_grad():
            for e in range(gu.shape[0]):
                (gate, up), (gate_b, up_b) = self._split(gu[e]), (
                    self._split(gu_b.detach()[e]) if bias else (None, None))
                self.append(Expert(_linear(gate, gate_b, grad), _linear(up, up_b, grad),
                                   _linear(down[e], down_b.detach()[e] if bias else None, grad)))
        object.__setattr__(self, "shell", fused)  # not a submodule (see :meth:`release`)

    def release(self) -> None:
        """Free the fused module's weights (moved to the ``meta`` device): from now on the
        experts hold the only copy."""
        for name, p in list(self.shell.named_parameters(recurse=False)):
            setattr(self.shell, name, nn.Parameter(
                torch.empty(p.shape, dtype=p.dtype, device="meta"), p.requires_grad))

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate and up rows of one expert's ``[2I, ...]`` gate_up tensor."""
        return t.chunk(2, dim=0) if self.concatenated else (t[0::2], t[1::2])

    def _join(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        """Inverse of :meth:`_split` along ``dim``."""
        if self.concatenated:
            return torch.cat([a, b], dim=dim)
        d = dim % a.dim()
        return torch.stack([a, b], dim=d + 1).flatten(d, d + 1)

    def _gate(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        apply = getattr(self.shell, "_apply_gate", None)
        if apply is None:
            return self.shell.act_fn(gate) * up
        return apply(self._join(gate, up, -1))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():  # [experts (+1: a padding index some routers use), top_k, tokens]
            hit = nn.functional.one_hot(top_k_index, num_classes=len(self) + 1).permute(2, 1, 0)
        for e, expert in enumerate(self):
            top_k_pos, token_idx = torch.where(hit[e])
            x = hidden_states[token_idx]
            y = expert.down_proj(self._gate(expert.gate_proj(x), expert.up_proj(x)))
            y = y * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out

    def fused_tensors(self) -> dict[str, torch.Tensor]:
        """The fused module's parameters (``gate_up_proj``, ``down_proj``, biases) from the
        experts' current weights."""
        gu = torch.stack([self._join(e.gate_proj.weight, e.up_proj.weight, 0) for e in self])
        down = torch.stack([e.down_proj.weight for e in self])
        if self.transposed:
            gu, down = gu.transpose(1, 2), down.transpose(1, 2)
        out = {"gate_up_proj": gu.detach().contiguous(), "down_proj": down.detach().contiguous()}
        if self[0].gate_proj.bias is not None:
            out["gate_up_proj_bias"] = torch.stack(
                [self._join(e.gate_proj.bias, e.up_proj.bias, 0) for e in self]).detach()
            out["down_proj_bias"] = torch.stack([e.down_proj.bias for e in self]).detach()
        return out

    def fused(self) -> nn.Module:
        """The original fused module holding the experts' current weights."""
        shell = self.shell
        for name, t in self.fused_tensors().items():
            old = getattr(shell, name)
            setattr(shell, name, nn.Parameter(t.clone(), old.requires_grad))
        return shell


def _agrees(fused: nn.Module, unfused: UnfusedExperts, top_k: int = 2) -> str:
    """Why ``unfused`` does not compute what ``fused`` does on random tokens routed to every
    expert (empty if it does)."""
    gu = unfused[0].gate_proj.weight
    n, hidden = len(unfused), gu.shape[1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, hidden, generator=gen).to(gu.device, gu.dtype)
    index = (torch.arange(2 * n)[:, None] + torch.arange(min(top_k, n))[None]) % n
    weights = torch.rand(index.shape, generator=gen).to(gu.device, gu.dtype)
    index = index.to(gu.device)
    with torch.no_grad():
        try:
            want = fused(x, index, weights)
        except Exception as e:  # noqa: BLE001 - another calling convention
            return f"it cannot be called as (hidden_states, top_k_index, top_k_weights) ({e})"
        got = unfused(x, index, weights)
    scale = float(want.abs().max())
    err = float((got.double() - want.double()).abs().max())
    eps = torch.finfo(gu.dtype).eps
    return "" if err <= max(1e-4, 8 * eps) * max(scale, 1e-30) else (
        f"the per-expert linears differ from it by {err:.3g} (outputs up to {scale:.3g})")


def unfuse_experts(model: nn.Module) -> int:
    """Replace every fused experts module of ``model`` by an :class:`UnfusedExperts`, in place.

    Args:
        model: any module (a ``transformers`` model, or a wrapper holding one).

    Returns:
        The number of modules replaced (0 when there is none, e.g. when called again).
    """
    found = [(name, m) for name, m in model.named_modules() if is_fused_experts(m)]
    done = 0
    for name, fused in found:
        odd = {k for k, _ in fused.named_parameters(recurse=False)} | {
            k for k, _ in fused.named_children()}
        if odd - _KNOWN:
            warnings.warn(f"{name} ({type(fused).__name__}) stays fused: it also holds "
                          f"{', '.join(sorted(odd - _KNOWN))}; its experts are not prunable",
                          stacklevel=2)
            continue
        unfused = UnfusedExperts(fused)
        why = _agrees(fused, unfused)
        if why:
            warnings.warn(f"{name} ({type(fused).__name__}) stays fused: {why}; its experts are "
                          "not prunable", stacklevel=2)
            continue
        unfused.release()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, unfused)
        done += 1
    return done


def refuse_experts(model: nn.Module) -> int:
    """Put the fused modules back in place of every :class:`UnfusedExperts` of ``model`` (with
    the experts' current weights, pruned zeros included); returns how many."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, UnfusedExperts)]
    for name, m in found:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, m.fused())
    return len(found)


def fused_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every :class:`UnfusedExperts` in the original fused layout.

    ``model`` is the ``transformers`` model (a :class:`~rdprune.models.lm.CausalLM` is unwrapped to
    its ``hf``), so the keys are those a stock model of the same config has:
    ``hf_model.save_pretrained(path, state_dict=fused_state_dict(hf_model))``. The model is not
    modified.
    """
    model = getattr(model, "hf", model)
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, UnfusedExperts):
            prefix = f"{name}." if name else ""
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
            state.update({prefix + k: t for k, t in m.fused_tensors().items()})
    return state


def routed(root: nn.Module, name: str) -> bool:
    """Whether the layer ``name`` of ``root`` belongs to an expert (inside an
    :class:`UnfusedExperts`, or a ``ModuleList`` named ``experts``): it runs on the tokens routed
    to it, a flat ``[tokens, d]`` batch, not on whole sequences."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        m = root.get_submodule(".".join(parts[:i]))
        if isinstance(m, UnfusedExperts) or (isinstance(m, nn.ModuleList)
                                             and parts[i - 1] == "experts"):
            return True
    return False
