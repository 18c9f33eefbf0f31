"""The language-model path wired as its users prune: every number a run reports recomputed here
independently from what the run left (layers.csv, rounds.csv, the exported model), the sequential
protocol against a plain block-by-block loop, the export loaded back by transformers, dtype, the
model's own tokenizer, and hub names that cannot be had offline."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from conftest import compose_config

from rdprune.errors import UserError

# a tiny LLaMA on the offline corpus, with a small BPE (exported with the model)
TINY = ["model=hf_lm", "dataset=text", "device=cpu", "threads=1", "dataset.tokenizer=bpe",
        "dataset.vocab_size=320", "dataset.seq_len=32", "dataset.calib_size=6",
        "dataset.calib_len=32", "dataset.eval_tokens=2048", "recipe.dense_steps=20",
        "recipe.batch_size=4", "model.config.hidden_size=32", "model.config.intermediate_size=64",
        "model.config.num_hidden_layers=3", "rd.grid_points=11", "rd.batch_size=4",
        "finetune=none"]


def run_lm(tmp_path, *overrides: str, out: str = "out") -> tuple[dict, object]:
    from rdprune.run.pipeline import run

    cfg = compose_config([*TINY, *overrides], tmp_path, out=out)
    return run(cfg), cfg


def dense(tmp_path, *overrides: str):
    """The run's dense model and data, as its setup builds them (the dense model cached)."""
    from rdprune.run.pipeline import dense_stage
    from rdprune.run.setup import setup

    run = setup(compose_config([*TINY, *overrides], tmp_path, out="dense"))
    dense_stage(run)
    return run


def layer_sparsity(path) -> dict[str, float]:
    with open(path / "layers.csv") as f:
        return {r["name"]: float(r["sparsity"]) for r in csv.DictReader(f)}


def wanda_norms(model, layers, calib) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every layer's input over the calibration tokens (independent hooks)."""
    sums = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=name: sums.__setitem__(
            name, sums.get(name, 0) + args[0].double().reshape(-1, args[0].shape[-1])
            .square().sum(0))) for name, m in layers.items()]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def blocks_of(names):
    return [int(n.split(".layers.")[1].split(".")[0]) for n in names]


def test_owl_uses_the_wanda_norms_of_the_calibration_set(tmp_path):
    """Per-block OWL sparsities of the run = OWL's official mapping of outlier ratios computed
    here from the dense model's Wanda metric on the run's calibration windows."""
    metrics, _ = run_lm(tmp_path, "method=owl", "sparsity=0.6", "method.lam=0.1",
                        "method.m=3")
    got = layer_sparsity(tmp_path / "out")
    run = dense(tmp_path, "method=owl")
    norms = wanda_norms(run.model, run.layers, run.data.calibration())
    blocks = blocks_of(list(run.layers))
    ratios = []
    for b in sorted(set(blocks)):
        scores = torch.cat([(m.weight.detach().double().abs() * norms[n]).flatten()
                            for (n, m), bb in zip(run.layers.items(), blocks) if bb == b])
        ratios.append(100.0 * float((scores > 3 * scores.mean()).sum()) / scores.numel())
    ratios = np.array(ratios)
    r = (ratios - ratios.min()) / (ratios.max() - ratios.min()) * 2 * 0.1
    expected = 0.6 + r.mean() - r  # equal blocks: the official unweighted mean
    for (name, m), b in zip(run.layers.items(), blocks):
        assert got[name] == pytest.approx(expected[b], abs=1.5 / m.weight.numel()), name
    assert metrics["achieved_sparsity"] == pytest.approx(0.6, abs=1e-6)


def test_atp_beta_is_the_argmin_of_the_validation_loss_over_its_grid(tmp_path):
    from rdprune.methods.llm_baselines import atp, atp_beta_grid
    from rdprune.pruning.layers import out_in

    run_lm(tmp_path, "method=atp", "sparsity=0.6", "prune.criterion=wanda")
    with open(tmp_path / "out" / "rounds.csv") as f:
        row = next(csv.DictReader(f))
    run = dense(tmp_path, "method=atp", "prune.criterion=wanda")
    names = list(run.layers)
    weights = [out_in(m).detach() for m in run.layers.values()]
    blocks = blocks_of(names)
    largest = min(2 * 0.6, 2 * 0.4) / (max(blocks))
    grid = [0.0] + atp_beta_grid(0.6, max(blocks) + 1, step=largest / 5)
    losses = []
    for beta in grid:
        model = copy.deepcopy(run.model)
        layers = {k: model.get_submodule(k) for k in names}
        sparsities = dict(zip(names, atp(weights, 0.6, blocks=blocks, beta=beta)))
        run.task.prune(model, layers, sparsities, "wanda", run.data.calibration(),
                       batch_size=run.cfg.rd.batch_size)
        losses.append(run.data.evaluate(model, run.device, split="validation")["nll"])
    assert float(row["beta"]) == pytest.approx(grid[int(np.argmin(losses))])
    assert float(row["validation_nll"]) == pytest.approx(min(losses), rel=1e-9)


def test_alpha_pruning_block_sparsities_follow_the_alphas(tmp_path):
    from rdprune.methods.llm_baselines import esd_alpha

    run_lm(tmp_path, "method=alpha_pruning", "sparsity=0.5", "method.epsilon=0.2")
    got = layer_sparsity(tmp_path / "out")
    run = dense(tmp_path, "method=alpha_pruning")
    blocks = blocks_of(list(run.layers))
    alphas = [esd_alpha(m.weight.detach()) for m in run.layers.values()]
    mean = np.array([np.mean([a for a, b in zip(alphas, blocks) if b == k])
                     for k in sorted(set(blocks))])
    r = (mean - mean.min()) / (mean.max() - mean.min()) * 0.4 + 0.8
    # s_l = c r_b: every layer's sparsity over its block's r is one constant (to the weight)
    ratio = [got[n] / r[b] for n, b in zip(run.layers, blocks)]
    tol = max(1.0 / m.weight.numel() for m in run.layers.values()) / r.min()
    assert max(ratio) - min(ratio) <= 2 * tol
    order = np.argsort(mean)
    per_block = [np.mean([got[n] for n, b in zip(run.layers, blocks) if b == k]) for k in order]
    assert per_block == sorted(per_block)  # a larger alpha, more pruning


def test_wanda_mask_is_the_per_row_sort_when_the_count_does_not_divide():
    from rdprune.pruning.masks import wanda_mask_count

    g = torch.Generator().manual_seed(4)
    w, norm = torch.randn(5, 9, generator=g), torch.rand(9, generator=g) + 0.1
    score = (w.abs() * norm).numpy()
    for k in (7, 13, 22, 31):  # 5 rows: not multiples
        mask = wanda_mask_count(w, norm, k).numpy()
        quota = (~mask).sum(axis=1)
        assert quota.sum() == k and quota.max() - quota.min() <= 1
        for i in range(5):
            expected = np.ones(9, dtype=bool)
            expected[np.argsort(score[i], kind="stable")[:quota[i]]] = False
            assert np.array_equal(mask[i], expected), (k, i)
        # the rows that lose one more are those whose next weight is the cheapest
        base = quota.min()
        nxt = np.sort(score, axis=1)[:, base]
        assert set(np.flatnonzero(quota > base)) == set(np.argsort(nxt, kind="stable")[
            :k - 5 * base])


def test_sequential_protocol_equals_a_plain_block_by_block_loop(tmp_path):
    """Wanda's prune_wanda loop, written out here: block b's norms from the outputs of blocks
    0..b-1 already pruned; the masks equal the task's; the dense protocol's differ."""
    from rdprune.models.lm import block_calls, decoder_blocks, run_block
    from rdprune.pruning.masks import num_pruned, wanda_mask_count

    run = dense(tmp_path)
    calib = run.data.calibration()
    sparsities = {n: 0.3 + 0.1 * (i % 5) for i, n in enumerate(run.layers)}
    ours = copy.deepcopy(run.model)
    ours_layers = {k: ours.get_submodule(k) for k in run.layers}
    masks = run.task.prune(ours, ours_layers, sparsities, "wanda", calib, batch_size=4)

    ref = copy.deepcopy(run.model).eval()
    ref_layers = {k: ref.get_submodule(k) for k in run.layers}
    blocks = decoder_blocks(ref)
    calls = block_calls(ref, blocks, calib)
    hidden, expected = calls.hidden, {}
    for b in range(len(blocks)):
        names = [n for n in run.layers if f".layers.{b}." in n]
        norms = {}
        hooks = [ref_layers[n].register_forward_pre_hook(
            lambda mod, args, n=n: norms.__setitem__(
                n, args[0].double().reshape(-1, args[0].shape[-1]).square().sum(0).sqrt()))
            for n in names]
        with torch.no_grad():
            run_block(blocks, b, hidden, calls)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for n in names:
                w = ref_layers[n].weight
                mask = wanda_mask_count(w, norms[n], num_pruned(w.numel(), sparsities[n]))
                w.mul_(mask)
                expected[n] = mask
            hidden = run_block(blocks, b, hidden, calls)
    assert all(torch.equal(masks[n], expected[n]) for n in run.layers)
    other = copy.deepcopy(run.model)
    dense_masks = run.task.prune(other, {k: other.get_submodule(k) for k in run.layers},
                                 sparsities, "wanda", calib, sequential=False)
    differs = {n for n in run.layers if not torch.equal(dense_masks[n], masks[n])}
    assert differs and all(".layers.0." not in n for n in differs)  # block 0: same inputs


def test_the_export_loads_in_transformers_with_its_zeros_after_fine_tuning(tmp_path):
    """A fine-tuned LM's zeros read from the saved weights: the save_pretrained directory loads
    with AutoModelForCausalLM, its zeros are the masks', its per-layer sparsities those of
    layers.csv and sparsity.json, its logits the run's model's, and its tokenizer the BPE."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics, _ = run_lm(tmp_path, "method=ours", "sparsity=0.6", "finetune=adamw",
                        "recipe.finetune_steps=3")
    out = tmp_path / "out"
    export = out / "pruned_model"
    hf = AutoModelForCausalLM.from_pretrained(export)
    from rdprune import cache

    masks = cache.load(out / "masks.pt")
    csv_sparsity = layer_sparsity(out)
    record = json.loads((export / "sparsity.json").read_text())
    for name, mask in masks.items():
        w = hf.get_submodule(name.removeprefix("hf.")).weight
        assert torch.equal(w != 0, mask) or bool(((w != 0) <= mask).all()), name
        zeros = 1.0 - float((w != 0).sum()) / w.numel()
        assert zeros == pytest.approx(csv_sparsity[name], abs=1e-12), name
        assert record["layers"][name.removeprefix("hf.")] == pytest.approx(zeros, abs=1e-12)
    assert record["method"] == "ours" and record["criterion"] == "magnitude"
    tok = AutoTokenizer.from_pretrained(export)
    assert len(tok) == 320
    state = torch.load(out / "model.pt", weights_only=True)
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    from rdprune.models.lm import causal_lm

    ours = causal_lm(name=None, weights=None, config=dict(
        model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
        prunable="blocks", vocab_size=320, seq_len=32)
    ours.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(ids), hf.eval()(input_ids=ids).logits, atol=1e-5)
    assert metrics["task"] == "causal_lm"


def test_an_exported_model_is_a_hub_model_with_its_own_tokenizer_and_dtype(tmp_path):
    """The export of a bfloat16 run is loaded back by name (a local directory) as a pretrained
    model: its own tokenizer (auto), its own dtype (auto: bfloat16), offline."""
    first, _ = run_lm(tmp_path, "method=uniform", "sparsity=0.5", "model.dtype=bfloat16")
    export = tmp_path / "out" / "pruned_model"
    assert json.loads((export / "sparsity.json").read_text())["dtype"] == "bfloat16"
    again, _ = run_lm(tmp_path, f"model.name={export}", "model.weights=pretrained",
                      "dataset.tokenizer=auto", "method=uniform", "sparsity=0.5",
                      "recipe.dense_steps=0", out="again")
    # (within bfloat16 rounding: from_pretrained may pick another attention kernel)
    assert again["dense_perplexity"] == pytest.approx(first["perplexity"], rel=1e-3)
    with pytest.raises(UserError, match="reads .* own token ids.*dataset.tokenizer=bpe"):
        run_lm(tmp_path, f"model.name={export}", "model.weights=pretrained",
               "recipe.dense_steps=0", "dataset.tokenizer=bpe", out="bpe")


def test_bfloat16_shares_the_dense_model_and_accumulates_in_float32(tmp_path):
    bf16, _ = run_lm(tmp_path, "method=ours", "sparsity=0.5", "model.dtype=bfloat16")
    fp32, _ = run_lm(tmp_path, "method=ours", "sparsity=0.5", out="fp32")
    assert len(list((tmp_path / "cache" / "dense").glob("*.pt"))) == 1  # trained once
    # one dense model (the runs pair on it), evaluated in each precision: the cast weights'
    # perplexity is not the float32 one read from the evaluation cache
    assert bf16["dense_key"] == fp32["dense_key"]
    assert bf16["dense_perplexity"] != fp32["dense_perplexity"]
    assert bf16["dense_perplexity"] == pytest.approx(fp32["dense_perplexity"], rel=0.05)
    assert np.isfinite(bf16["perplexity"]) and bf16["achieved_sparsity"] == pytest.approx(0.5)


def test_an_unreachable_hub_name_is_one_line_within_seconds(tmp_path, monkeypatch):
    from rdprune.models import hf_hub

    monkeypatch.setattr(hf_hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError) as e:
        run_lm(tmp_path, "model.name=nobody/no-such-model", "model.weights=pretrained",
               "dataset.tokenizer=auto", "recipe.dense_steps=0")
    msg = str(e.value)
    assert "\n" not in msg and "nobody/no-such-model" in msg and "HF_HUB_OFFLINE" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the Hugging Face cache and HF_HUB_OFFLINE"):
        run_lm(tmp_path, "model.name=nobody/no-such-model", "model.weights=pretrained",
               "dataset.tokenizer=auto", "recipe.dense_steps=0")


def test_a_model_under_accelerate_hooks_prunes_as_the_plain_model():
    """device_map (accelerate's dispatch, as transformers loads a model over several GPUs):
    allocation, the sequential protocol and evaluation run through its hooks and give what the
    plain model gives; offloaded (meta) weights are refused in one line."""
    import transformers
    from accelerate import cpu_offload, dispatch_model

    import rdprune

    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    plain = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    hooked = dispatch_model(copy.deepcopy(plain), device_map={"": "cpu"}, force_hooks=True)
    assert hooked._hf_hook is not None
    results = []
    for model in (plain, hooked):
        s = rdprune.allocate(model, calib=ids, sparsity=0.6, method="ours", criterion="wanda",
                             grid_points=6, progress=False)
        masks = rdprune.prune(model, s, criterion="wanda", calib=ids)
        with torch.no_grad():
            results.append((dict(s), {k: v.clone() for k, v in masks.items()},
                            model(input_ids=ids).logits))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])
    assert torch.equal(results[0][2], results[1][2])
    offloaded = cpu_offload(copy.deepcopy(plain), execution_device="cpu")
    with pytest.raises(UserError, match="offloaded"):
        rdprune.allocate(offloaded, calib=ids, sparsity=0.5, method="uniform", progress=False)


@pytest.mark.parametrize("override, message", [
    ("model.config.num_attention_heads=5", "model.config is not a llama model"),
    ("model.config.model_type=no_such_model", "model.config is not a no_such_model model"),
    ("dataset.calib_len=64", "dataset.calib_len=64 exceeds dataset.seq_len=32"),
    ("dataset.eval_tokens=16", "fewer than one window of dataset.seq_len=32"),
    ("model.dtype=float8", "model.dtype must be auto, float32, bfloat16, float16"),
])
def test_every_lm_key_is_checked_before_the_dense_lm_trains(tmp_path, override, message):
    """On an empty cache, a bad setting of the LM path stops the run in one line before any
    training: the cache holds no dense model (nor a partial one) afterwards."""
    with pytest.raises(UserError, match=message) as e:
        run_lm(tmp_path, override)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("dense/*"))
