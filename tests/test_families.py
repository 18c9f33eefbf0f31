"""Every major Hugging Face causal-LM family, built offline from a tiny config, end to end.

One test per family (ids = family names): its prunable layers (every linear of the decoder blocks,
each expert's included, once; no embeddings, no head, no router), the LM fast path against the
naive scheme, and every language-model method with both criteria through the public API. Plus the
mixture-of-experts round trip (per-expert linears -> the stock fused layout -> a stock model), a
model whose head is not a plain linear (one warning, then the naive scheme), blocks given the
hidden state by keyword, and the rounding of the baselines that do not promise the target to the
weight.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rdprune
from rdprune.methods.rd.profiling.lm import _mismatch, lm_curves, structure
from rdprune.methods.rd.profiling.naive import rd_curves_naive
from rdprune.models.lm import CausalLM, block_calls, run_block
from rdprune.pruning.layers import linear_types
from rdprune.models.moe import UnfusedExperts, fused_state_dict, refuse_experts, unfuse_experts
from rdprune.pruning.masks import num_pruned

VOCAB, SEQ, N_SEQ = 96, 16, 4
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)  # grouped-query attention: 2 KV heads for 4 query heads
ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
GATED = ATTN + ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
MOE = ATTN + [f"mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_proj", "up_proj",
                                                                  "down_proj")]
MOE_SIZES = dict(num_experts_per_tok=2, **{**SMALL, "intermediate_size": 32})


@dataclasses.dataclass
class Family:
    config: dict            # AutoConfig.for_model(**config)
    cls: str                # the transformers class
    blocks: str             # where the blocks live (prefix of block b: blocks + ".b.")
    linears: list[str]      # every linear of a block, relative to the block
    chain: str              # blocks -> tail -> head, as the fast path finds them


FAMILIES = {
    "llama": Family(dict(model_type="llama", **SMALL, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8)), "LlamaForCausalLM", "model.layers", GATED,
        "model.layers -> model.norm -> lm_head"),
    "mistral": Family(dict(model_type="mistral", **SMALL, sliding_window=8),
                      "MistralForCausalLM", "model.layers", GATED,
                      "model.layers -> model.norm -> lm_head"),
    "qwen2": Family(dict(model_type="qwen2", **SMALL), "Qwen2ForCausalLM", "model.layers",
                    GATED, "model.layers -> model.norm -> lm_head"),
    "qwen3": Family(dict(model_type="qwen3", **SMALL, head_dim=8), "Qwen3ForCausalLM",
                    "model.layers", GATED, "model.layers -> model.norm -> lm_head"),
    # final logit soft-capping (default 30; 1 here, where the tiny model's logits are < 1): the
    # fast path runs the head and the cap
    "gemma2": Family(dict(model_type="gemma2", **SMALL, head_dim=8, sliding_window=8,
                          final_logit_softcapping=1.0),
                     "Gemma2ForCausalLM", "model.layers", GATED,
                     "model.layers -> model.norm -> lm_head"),
    # a sliding-window block (window 8 < 16 tokens) then a global one: other masks and rotary
    "gemma3": Family(dict(model_type="gemma3_text", **SMALL, head_dim=8, sliding_window=8,
                          layer_types=["sliding_attention", "full_attention"]),
                     "Gemma3ForCausalLM", "model.layers", GATED,
                     "model.layers -> model.norm -> lm_head"),
    "phi3": Family(dict(model_type="phi3", **SMALL, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2), "Phi3ForCausalLM", "model.layers",
                   ["self_attn.o_proj", "self_attn.qkv_proj", "mlp.gate_up_proj",
                    "mlp.down_proj"], "model.layers -> model.norm -> lm_head"),
    "gpt2": Family(dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=32,
                        bos_token_id=0, eos_token_id=0), "GPT2LMHeadModel", "transformer.h",
                   ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                   "transformer.h -> transformer.ln_f -> lm_head"),
    # embeddings narrower than the blocks (as OPT-350m): project_in / project_out, not prunable
    "opt": Family(dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, word_embed_proj_dim=16, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2), "OPTForCausalLM",
                  "model.decoder.layers",
                  ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                   "self_attn.out_proj", "fc1", "fc2"],
                  "model.decoder.layers -> model.decoder.final_layer_norm -> "
                  "model.decoder.project_out -> lm_head"),
    "gpt_neox": Family(dict(model_type="gpt_neox", hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, bos_token_id=0,
                            eos_token_id=0), "GPTNeoXForCausalLM", "gpt_neox.layers",
                       ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                        "mlp.dense_4h_to_h"],
                       "gpt_neox.layers -> gpt_neox.final_layer_norm -> lm_head"),
    "mixtral": Family(dict(model_type="mixtral", num_local_experts=4, **MOE_SIZES),
                      "MixtralForCausalLM", "model.layers", MOE,
                      "model.layers -> model.norm -> lm_head"),
    "qwen3_moe": Family(dict(model_type="qwen3_moe", num_experts=4, moe_intermediate_size=32,
                             head_dim=8, **MOE_SIZES), "Qwen3MoeForCausalLM", "model.layers",
                        MOE, "model.layers -> model.norm -> lm_head"),
}

#: every language-model method, with the options the test gives it
METHODS = {"ours": dict(grid_points=5), "ours_block": dict(grid_points=5), "owl": {},
           "dlp": {}, "atp": dict(beta=0.05), "alpha_pruning": {},
           "evopress": dict(generations=2, offspring=4), "uniform": {}, "global_magnitude": {},
           "lamp": {}, "erk": {}}
#: every criterion
CRITERIA = ("magnitude", "wanda", "sparsegpt")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only adds dispatch time to each small op (a lot of it on a
    busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(config: dict) -> nn.Module:
    """A ``transformers`` causal LM at random init from a tiny config (offline)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(config)
    kind = spec.pop("model_type")
    spec.setdefault("max_position_embeddings", 32)
    cfg = AutoConfig.for_model(kind, vocab_size=VOCAB, **spec)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def token_ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (N_SEQ, SEQ), generator=torch.Generator().manual_seed(seed))


def prunable(model: CausalLM) -> dict[str, nn.Module]:
    """The wrapped model's prunable layers ``{name: module}``, as the pipeline finds them (the
    linears its ``prunable_names`` allows that run on an example)."""
    from rdprune.tasks import prunable_layers

    layers = prunable_layers(model, token_ids()[:1])
    assert list(layers) == [n for n in model.prunable_names() if n in layers]
    return layers


def block_weights(hf: nn.Module, blocks: str) -> int:
    """Weights of the linears (and fused experts) inside the blocks of a stock model."""
    total = 0
    for name, p in hf.named_parameters():
        inside = name.startswith(blocks + ".")
        fused = name.endswith(("experts.gate_up_proj", "experts.down_proj"))
        if inside and ((p.dim() == 2 and name.endswith(".weight")
                        and isinstance(hf.get_submodule(name.rpartition(".")[0]),
                                       linear_types())) or fused):
            total += p.numel()
    return total


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_prunes_end_to_end(family):
    spec = FAMILIES[family]
    hf = build(spec.config)
    assert type(hf).__name__ == spec.cls
    if family == "llama":
        assert hf.config.rope_parameters["rope_type"] == "llama3"
    ids = token_ids()
    stock_weights = block_weights(hf, spec.blocks)
    with torch.no_grad():
        dense = hf(input_ids=ids).logits
    model = CausalLM(hf).eval()  # unfuses experts in place
    with torch.no_grad():  # ... computing the same logits
        assert torch.allclose(model(ids), dense, rtol=1e-5, atol=1e-6)

    # the prunable layers: every linear of every block (each expert's), once, nothing else
    layers = prunable(model)
    expected = [f"hf.{spec.blocks}.{b}.{s}" for b in range(2) for s in spec.linears]
    assert sorted(layers) == sorted(expected)
    inside = [n for n, m in model.named_modules()
              if isinstance(m, linear_types()) and n.startswith(f"hf.{spec.blocks}.")]
    assert sorted(inside) == sorted(layers)
    assert len({id(m.weight) for m in layers.values()}) == len(layers)
    assert sum(m.weight.numel() for m in layers.values()) == stock_weights
    if spec.linears is MOE:
        assert all(isinstance(hf.get_submodule(f"{spec.blocks}.{b}.mlp.experts"), UnfusedExperts)
                   for b in range(2))
        assert f"hf.{spec.blocks}.0.mlp.gate" not in layers  # the router stays dense

    # the fast path: the chain it finds, equal to the naive scheme on a few layers and a block
    chain = structure(model)
    assert chain.where == spec.chain
    names = list(layers)
    pick = {n: layers[n] for n in names[:2] + names[-2:]}
    if spec.linears is MOE:
        pick[names[6]] = layers[names[6]]  # an expert of block 0
    block1 = [[n for n in names if n.startswith(f"hf.{spec.blocks}.1.")]]
    grid = np.linspace(0.0, 0.9, 5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lm_curves")  # no fallback
        fast = lm_curves(model, ids, grid, "mean", layers=pick, batch_size=2, progress=False,
                         grid_batch=2)
        fast_block = lm_curves(model, ids, grid, "worst", layers=layers, batch_size=2,
                               progress=False, groups=block1, grid_batch=3)
    naive = rd_curves_naive(model, ids, grid, "mean", layers=pick, batch_size=2, progress=False)
    naive_block = rd_curves_naive(model, ids, grid, "worst", layers=layers, batch_size=2,
                                  progress=False, groups=block1)
    assert (naive[:, 1:] > 0).all()
    assert np.abs(fast - naive).max() <= 1e-5 * np.abs(naive).max()
    assert np.abs(fast_block - naive_block).max() <= 1e-5 * np.abs(naive_block).max()
    if family == "gemma2":  # the cap is part of the logits: without it the chain is refused
        assert chain.softcap == 1.0
        calls = block_calls(model, chain.blocks, ids)
        with torch.no_grad():
            uncapped = dataclasses.replace(chain, softcap=None)
            assert "differ" in _mismatch(uncapped, calls, model(ids))
    if family == "gemma3":  # block 1 (global) run with block 0's (sliding) arguments differs
        calls = block_calls(model, chain.blocks, ids)
        with torch.no_grad():
            h1 = run_block(chain.blocks, 0, calls.hidden, calls)
            wrong = dataclasses.replace(calls, kwargs=[calls.kwargs[0]] * 2)
            assert not torch.allclose(run_block(chain.blocks, 1, h1, calls),
                                      run_block(chain.blocks, 1, h1, wrong), atol=1e-3)

    # every language-model method, both criteria, through the public API
    total = sum(m.weight.numel() for m in layers.values())
    target = num_pruned(total, 0.6)
    for method, options in METHODS.items():
        for criterion in CRITERIA:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="lm_curves")  # ours*: the fast path
                sparsities = rdprune.allocate(hf, calib=ids, sparsity=0.6, method=method,
                                              criterion=criterion, progress=False, **options)
            assert sorted(sparsities) == sorted(n[len("hf."):] for n in layers)
            pruned = copy.deepcopy(hf)
            masks = rdprune.prune(pruned, sparsities, criterion=criterion, calib=ids)
            removed = sum(int((~m).sum()) for m in masks.values())
            zeros = sum(int((pruned.get_submodule(n).weight == 0).sum()) for n in masks)
            assert zeros >= removed, (method, criterion)  # (SparseGPT may zero kept weights too)
            assert removed == target, (method, criterion, removed, target)
            with torch.no_grad():
                assert torch.isfinite(pruned(input_ids=ids).logits).all(), (method, criterion)


def test_every_method_meets_the_target_to_the_weight():
    hf, ids = build(FAMILIES["llama"].config), token_ids()
    missed = {}
    for method, options in METHODS.items():
        sparsities = rdprune.allocate(hf, calib=ids, sparsity=0.6, method=method,
                                      progress=False, **options)
        masks = rdprune.prune(copy.deepcopy(hf), sparsities)
        total = sum(m.numel() for m in masks.values())
        removed = sum(int((~m).sum()) for m in masks.values())
        if removed != num_pruned(total, 0.6):
            missed[method] = removed - num_pruned(total, 0.6)
    assert not missed


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_unfused_experts_round_trip_into_a_stock_model(family, tmp_path):
    """Unfuse, prune some expert weights, save in the fused layout, load a stock model."""
    from transformers import AutoModelForCausalLM

    if family == "gpt_oss":  # transposed, interleaved gate/up rows, biases
        config = dict(model_type="gpt_oss", num_local_experts=4, head_dim=8, sliding_window=8,
                      layer_types=["sliding_attention", "full_attention"], **MOE_SIZES)
    else:
        config = FAMILIES[family].config
    hf, ids = build(config), token_ids()
    for p in hf.parameters():  # GPT-OSS initialises its expert biases to zero: make them count
        if p.dim() == 2 and p.shape[0] == 4 and not p.any():
            nn.init.normal_(p)
    with torch.no_grad():
        dense = hf(input_ids=ids).logits
    assert unfuse_experts(hf) == 2 and unfuse_experts(hf) == 0
    experts = hf.model.layers[1].mlp.experts
    assert isinstance(experts, UnfusedExperts) and len(experts) == 4
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, dense, rtol=1e-5, atol=1e-6)
        experts[1].up_proj.weight[:, :5] = 0
        experts[2].down_proj.weight[3] = 0
        experts[0].gate_proj.weight[7] = 0
        pruned = hf(input_ids=ids).logits
    assert not torch.allclose(pruned, dense)
    state = fused_state_dict(CausalLM(hf))  # a wrapper is unwrapped to its transformers model
    assert not any(".experts.0." in k for k in state)
    hf.save_pretrained(tmp_path, state_dict=state)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    fused = stock.model.layers[1].mlp.experts
    assert not isinstance(fused, UnfusedExperts) and fused.gate_up_proj.dim() == 3
    with torch.no_grad():
        assert torch.allclose(stock(input_ids=ids).logits, pruned, rtol=1e-5, atol=1e-6)
    again = copy.deepcopy(hf)
    unfuse_experts(stock)
    for name, t in again.state_dict().items():  # the zeros survive, every weight in place
        assert torch.equal(stock.state_dict()[name], t), name
    assert refuse_experts(again) == 2
    assert again.model.layers[1].mlp.experts.gate_up_proj.shape == fused.gate_up_proj.shape
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())


def test_a_head_that_is_not_linear_falls_back_with_one_warning():
    """Cohere scales its logits after the head: the chain cannot reproduce them."""
    config = dict(model_type="cohere", **SMALL, logit_scale=0.5, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    model, ids = CausalLM(build(config)).eval(), token_ids()
    layers = prunable(model)
    pick = {n: layers[n] for n in list(layers)[:2]}
    grid = np.linspace(0.0, 0.9, 5)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast = lm_curves(model, ids, grid, layers=pick, batch_size=2, progress=False)
    ours = [str(w.message) for w in seen if str(w.message).startswith("lm_curves")]
    assert len(ours) == 1 and "differ from the model's" in ours[0] and "naive" in ours[0]
    naive = rd_curves_naive(model, ids, grid, layers=pick, batch_size=2, progress=False)
    assert np.array_equal(fast, naive)


class _OtherExperts(nn.Module):
    """The fused layout, but not the computation an UnfusedExperts reproduces."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 4))
        self.down_proj = nn.Parameter(torch.randn(2, 4, 4))
        self.act_fn = nn.SiLU()

    def forward(self, x, top_k_index, top_k_weights):
        return 2 * x


def test_experts_it_cannot_reproduce_stay_fused_with_a_warning():
    holder = nn.Sequential(_OtherExperts())
    before = holder[0].gate_up_proj.detach().clone()
    with pytest.warns(UserWarning, match="stays fused: the per-expert linears differ"):
        assert unfuse_experts(holder) == 0
    assert isinstance(holder[0], _OtherExperts) and torch.equal(holder[0].gate_up_proj, before)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, hidden_states, scale):
        return hidden_states + scale * self.fc2(torch.relu(self.fc1(hidden_states)))


class _KeywordCalls(nn.Module):
    """A causal LM whose blocks get the hidden state as ``hidden_states=``, each its own scale."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, 16)
        self.model.layers = nn.ModuleList([_Block(), _Block()])
        self.model.norm = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, VOCAB)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids, use_cache=False):
        from types import SimpleNamespace

        h = self.model.embed_tokens(input_ids)
        for j, block in enumerate(self.model.layers):
            h = block(hidden_states=h, scale=torch.tensor(float(j + 1)))
        return SimpleNamespace(logits=self.lm_head(self.model.norm(h)))


def test_blocks_given_the_hidden_state_by_keyword():
    model, ids = CausalLM(_KeywordCalls()).eval(), token_ids()
    layers = prunable(model)
    assert len(layers) == 4
    grid = np.linspace(0.0, 0.9, 5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lm_curves")
        fast = lm_curves(model, ids, grid, layers=layers, batch_size=2, progress=False,
                         grid_batch=2)
    naive = rd_curves_naive(model, ids, grid, layers=layers, batch_size=2, progress=False)
    assert np.abs(fast - naive).max() <= 1e-5 * np.abs(naive).max()
