"""Language models: the Wanda criterion, perplexity, prunable linears of HF models, the text
corpora, the blocks-downstream fast path, and the pipeline on a tiny LLaMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config
from torch import nn

from rdprune.pruning.statistics import input_norms
from rdprune.data.text_corpus import TextSplits, TokenWindows, stdlib_texts, text
from rdprune.tasks import prunable_layers as find_prunable
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import num_pruned, wanda_mask_count
from rdprune.models.lm import CausalLM, causal_lm
from rdprune.methods.rd.profiling import rd_curves_naive
from rdprune.methods.rd.profiling.lm import lm_curves

TINY_LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def tiny_llama(vocab: int = 97, seq_len: int = 16) -> CausalLM:
    torch.manual_seed(0)
    return causal_lm(name=None, weights=None, config=TINY_LLAMA, vocab_size=vocab,
                     prunable="blocks", seq_len=seq_len).eval()


# ------------------------------------------------------------------------------- Wanda


def test_wanda_mask_matches_a_per_row_sort():
    """k a multiple of the rows: every row loses its k / rows lowest |W_ij| * ||X_j||."""
    g = torch.Generator().manual_seed(0)
    w, norm = torch.randn(6, 10, generator=g), torch.rand(10, generator=g) + 0.1
    for per_row in range(11):
        mask = wanda_mask_count(w, norm, 6 * per_row)
        score = (w.abs() * norm).numpy()
        expected = np.ones((6, 10), dtype=bool)
        for i in range(6):
            expected[i, np.argsort(score[i], kind="stable")[:per_row]] = False
        assert np.array_equal(mask.numpy(), expected), per_row


def test_wanda_mask_removes_exactly_k_as_evenly_as_rows_allow():
    g = torch.Generator().manual_seed(1)
    w, norm = torch.randn(5, 8, generator=g), torch.rand(8, generator=g)
    w[0, :6] = 0  # row 0 already lost 6 of its 8
    for k in range(6, 41):
        removed = (~wanda_mask_count(w, norm, k)).sum(dim=1)
        assert int(removed.sum()) == k
        assert removed[0] >= 6  # the zeros always go
        others = removed[1:]
        assert int(others.max() - others.min()) <= 1 or int(others.min()) >= int(removed[0])
        assert (~wanda_mask_count(w, norm, k))[0, :6].all()


def test_input_norms_are_the_feature_norms_over_all_tokens():
    model = tiny_llama()
    x = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(2))
    layers = find_prunable(model, x[:1])
    seen = {}
    name = "hf.model.layers.1.mlp.down_proj"
    handle = layers[name].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = seen["x"].reshape(-1, seen["x"].shape[-1]).double().square().sum(0).sqrt()
    got = input_norms(model, layers, x, batch_size=2)[name]
    assert torch.allclose(got.double(), expected, rtol=1e-6)


# ------------------------------------------------------------------------------- models


def test_prunable_weights_of_a_tiny_llama_match_its_parameter_shapes():
    model = tiny_llama()
    layers = find_prunable(model, torch.zeros(1, 16, dtype=torch.long))
    h, i, heads, kv, blocks = 32, 64, 4, 2, 2
    per_block = h * h * 2 + 2 * h * (h // heads * kv) + 3 * h * i  # q, o; k, v; gate, up, down
    assert len(layers) == 7 * blocks
    assert sum(m.weight.numel() for m in layers.values()) == blocks * per_block
    assert not any("embed" in n or "lm_head" in n for n in layers)
    everything = causal_lm(name=None, weights=None, config=TINY_LLAMA, vocab_size=97,
                           prunable="all", seq_len=16)
    assert "hf.lm_head" in find_prunable(everything, torch.zeros(1, 16, dtype=torch.long))


def test_gpt2_conv1d_counts_as_linear():
    cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4)
    model = causal_lm(name=None, weights=None, config=cfg, vocab_size=97, prunable="blocks",
                      seq_len=16)
    layers = find_prunable(model, torch.zeros(1, 16, dtype=torch.long))
    assert len(layers) == 2 * 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP)
    assert {type(m).__name__ for m in layers.values()} == {"Conv1D"}


# ------------------------------------------------------------------------------- perplexity


class Fixed(nn.Module):
    """Logits that depend only on the current token: row ``tok`` of a table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def test_perplexity_is_exp_of_the_mean_next_token_nll_by_hand():
    table = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    stream = torch.tensor([0, 1, 2, 0, 2, 1, 1, 0, 2])  # windows of 4: [0 1 2 0], [2 1 1 0]
    windows = TokenWindows(stream, 4)
    data = TextSplits(name="text", train=windows, train_eval=windows, test=windows,
                      validation=windows, num_classes=3, input_shape=(4,), calib_size=1,
                      eval_batch_size=1, tokens={"train": stream}, seq_len=4, calib_len=4,
                      calib_seed=0, vocab_size=3, fingerprint="x", calib_windows=None)
    got = data.evaluate(Fixed(table))
    nll = []
    for w in ([0, 1, 2, 0], [2, 1, 1, 0]):  # the first token of a window is never predicted
        for a, b in zip(w[:-1], w[1:]):
            logp = table[a] - torch.logsumexp(table[a], 0)
            nll.append(-float(logp[b]))
    assert got["nll"] == pytest.approx(sum(nll) / 6, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(sum(nll) / 6), rel=1e-6)
    hits = sum(int(table[a].argmax()) == b for w in ([0, 1, 2, 0], [2, 1, 1, 0])
               for a, b in zip(w[:-1], w[1:]))
    assert got["top1"] == pytest.approx(100 * hits / 6)


# ------------------------------------------------------------------------------- text data


def test_stdlib_corpus_splits_by_file_deterministically():
    a, b = stdlib_texts(0), stdlib_texts(0)
    assert a == b and all(len(a[s]) for s in ("train", "validation", "test"))
    assert stdlib_texts(1)["test"] != a["test"]
    n = sum(len(v) for v in a.values())
    assert len(a["train"]) == int(0.8 * n)


def text_data(tmp_path, **kw) -> TextSplits:
    args = dict(name="text", corpus="stdlib", tokenizer="byte", vocab_size=257, seq_len=32,
                calib_size=4, calib_len=24, calib_seed=0, calib_corpus=None, eval_tokens=4096,
                split_seed=0, cache_dir=str(tmp_path), num_workers=0, eval_batch_size=8,
                hub_model=None)
    return text(**{**args, **kw})


def test_text_windows_calibration_and_batches(tmp_path):
    data = text_data(tmp_path)
    calib = data.calibration()
    assert calib.shape == (4, 24) and calib.dtype == torch.int64
    assert torch.equal(calib, text_data(tmp_path).calibration())  # cached tokens, same draw
    assert not torch.equal(calib, text_data(tmp_path, calib_seed=1).calibration())
    first = [x for x, _ in data.train_batches(8, seed=3, start=0, stop=3)]
    again = [x for x, _ in data.train_batches(8, seed=3, start=1, stop=3)]  # resumed at step 1
    assert all(torch.equal(a, b) for a, b in zip(first[1:], again))
    assert len(data.test) == 4096 // 32 and int(calib.max()) < 257


def test_wikitext2_loading_code_on_a_local_file(tmp_path, monkeypatch):
    """The WikiText-2 path of ``hub_texts`` on files the test writes (no internet here)."""
    import datasets

    files = {}
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text("\n".join(f"{split} line {i} = with some words" for i in range(60)))
    real = datasets.load_dataset

    def local(path, name=None, **kwargs):
        assert (path, name) == ("wikitext", "wikitext-2-raw-v1")
        return real("text", data_files={k: str(v) for k, v in files.items()})

    monkeypatch.setattr(datasets, "load_dataset", local)
    data = text_data(tmp_path, corpus="wikitext2")
    joined = "\n\n".join(files["test"].read_text().split("\n"))
    assert len(data.tokens["test"]) == len(joined.encode()) + 1  # + the end-of-text token


def test_bad_text_settings_are_one_line_errors(tmp_path):
    from rdprune.errors import UserError

    with pytest.raises(UserError, match="dataset.corpus must be"):
        text_data(tmp_path, corpus="books")
    # every later use of the token streams is checked when the data is built, before training
    with pytest.raises(UserError, match=r"the validation split has .* tokens \(dataset.eval_tokens=16"
                                        r"\), fewer than one window of dataset.seq_len=32"):
        text_data(tmp_path, eval_tokens=16)
    with pytest.raises(UserError, match="dataset.calib_len=48 exceeds dataset.seq_len=32"):
        text_data(tmp_path, calib_len=48)


# ------------------------------------------------------------------------------- fast path


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_lm_fast_path_equals_the_naive_scheme(criterion):
    model = tiny_llama()
    x = torch.randint(0, 97, (6, 16), generator=torch.Generator().manual_seed(3))
    layers = find_prunable(model, x[:1])
    crit = Criterion() if criterion == "magnitude" else Criterion(
        "wanda", input_norms(model, layers, x))
    grid = np.linspace(0, 1, 6)
    fast = lm_curves(model, x, grid, "worst", layers=layers, batch_size=4, progress=False,
                     criterion=crit, grid_batch=3)
    naive = rd_curves_naive(model, x, grid, "worst", layers=layers, batch_size=4,
                            progress=False, criterion=crit)
    assert np.abs(fast - naive).max() <= 1e-6 * np.abs(naive).max()
    assert (fast[:, 0] == 0).all() and (fast[:, -1] > fast[:, 1]).all()
    blocks = [[n for n in layers if f".layers.{b}." in n] for b in range(2)]
    fast = lm_curves(model, x, grid, "mean", layers=layers, batch_size=4, progress=False,
                     criterion=crit, groups=blocks, grid_batch=2)
    naive = rd_curves_naive(model, x, grid, "mean", layers=layers, batch_size=4,
                            progress=False, criterion=crit, groups=blocks)
    assert np.abs(fast - naive).max() <= 1e-6 * np.abs(naive).max()


# ------------------------------------------------------------------------------- pipeline


LM_TINY = ["model=hf_lm", "dataset=text", "device=cpu", "threads=1", "dataset.tokenizer=byte",
           "dataset.vocab_size=257", "dataset.seq_len=32", "dataset.calib_size=4",
           "dataset.calib_len=32", "dataset.eval_tokens=2048", "recipe.dense_steps=8",
           "recipe.batch_size=4", "model.config.hidden_size=32",
           "model.config.intermediate_size=64", "model.config.num_hidden_layers=2",
           "rd.grid_points=11", "rd.batch_size=4"]


@pytest.mark.parametrize("method, criterion", [
    ("ours", "wanda"), ("ours_block", "magnitude"), ("owl", "magnitude"), ("atp", "wanda"),
    ("alpha_pruning", "wanda"), ("lamp", "wanda")])
def test_language_model_runs_through_the_pipeline(tmp_path, method, criterion):
    from rdprune.run.pipeline import run

    cfg = compose_config([*LM_TINY, f"method={method}", f"prune.criterion={criterion}",
                          "sparsity=0.6"], tmp_path)
    metrics = run(cfg)
    assert metrics["method"] == method and metrics["criterion"] == criterion
    assert metrics["perplexity"] > metrics["dense_perplexity"] * 0.5
    assert metrics["achieved_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert metrics["num_layers"] == 14 and metrics["data_fingerprint"]
    layers = np.genfromtxt(tmp_path / "out" / "layers.csv", delimiter=",", names=True,
                           dtype=None, encoding=None)
    kept = {str(r["name"]): int(r["kept"]) for r in layers}
    # MACs per token: a linear layer's weight count
    assert all(int(r["dense_macs"]) == int(r["weights"]) for r in layers)
    if method in ("ours_block", "owl", "atp", "alpha_pruning"):  # one sparsity per block
        for b in range(2):
            block = [k for k in kept if f".layers.{b}." in k]
            sizes = [int(r["weights"]) for r in layers if str(r["name"]) in block]
            fractions = [kept[k] / n for k, n in zip(block, sizes)]
            assert max(fractions) - min(fractions) < 0.01, (b, fractions)
    total = sum(int(r["weights"]) for r in layers)
    assert total - sum(kept.values()) >= num_pruned(total, 0.6) - 14
    if method.startswith("ours"):  # the DP's unused budget is given back: exact to the weight
        assert total - sum(kept.values()) == num_pruned(total, 0.6)


def test_image_model_on_text_and_lm_on_images_are_one_line_errors(tmp_path):
    from rdprune.errors import UserError
    from rdprune.run.pipeline import run

    with pytest.raises(UserError, match="needs dataset=text"):
        run(compose_config(["model=hf_lm", "device=cpu"], tmp_path))
    with pytest.raises(UserError, match="needs an image dataset"):
        run(compose_config(["dataset=text", "device=cpu"], tmp_path))


def test_calibration_draws_share_the_dense_lm(tmp_path):
    """seed = the calibration draw, dense.seed fixed: one dense model, other calibration sets,
    other curves; paired by seed in the report (same dense_key)."""
    from rdprune.run.pipeline import run

    runs = [run(compose_config([*LM_TINY, "method=ours", "sparsity=0.5", "dense.seed=0",
                                f"seed={s}"], tmp_path, out=f"s{s}")) for s in (0, 1)]
    assert runs[0]["dense_key"] == runs[1]["dense_key"]
    assert runs[0]["dense_perplexity"] == runs[1]["dense_perplexity"]
    assert runs[1]["seconds"]["dense"] == runs[0]["seconds"]["dense"]  # (from the cache)
    assert len(list((tmp_path / "cache" / "dense").glob("*.pt"))) == 1
    curves = [np.load(tmp_path / f"s{s}" / "rd_curves.npz")["curves"] for s in (0, 1)]
    assert not np.array_equal(*curves)  # another calibration draw


def test_fine_tuning_a_pruned_lm_keeps_its_masks(tmp_path):
    """finetune=adamw on a language model: the causal LM loss through the one training loop,
    pruned weights held at zero (the loop checks the masks), the perplexity after it measured."""
    import json

    from rdprune.run.pipeline import run

    metrics = run(compose_config([*LM_TINY, "method=uniform", "sparsity=0.7", "finetune=adamw",
                                  "recipe.finetune_steps=6", "finetune.optimizer.lr=1e-2"],
                                 tmp_path))
    assert metrics["perplexity"] < metrics["pruned_perplexity"]  # it trained on the pruned model
    assert metrics["achieved_sparsity"] == pytest.approx(0.7, abs=14 / metrics["num_weights"])
    history = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text()
               .splitlines()]
    assert any("finetune_round1" in json.dumps(h) for h in history)


@pytest.mark.parametrize("method", ["ours", "lamp"])
def test_the_criterion_is_part_of_what_a_round_caches(tmp_path, method):
    """Magnitude, then Wanda, same method, target and cache: the Wanda run prunes its own
    weights (its round, and for ours its curves, are not the magnitude run's)."""
    from rdprune.cache import load
    from rdprune.run.pipeline import run

    runs = {c: run(compose_config([*LM_TINY, f"method={method}", f"prune.criterion={c}",
                                   "sparsity=0.6"], tmp_path, out=c))
            for c in ("magnitude", "wanda")}
    assert runs["wanda"]["rounds"][0]["allocate_seconds"] > 0  # computed, not served
    assert runs["wanda"]["perplexity"] != runs["magnitude"]["perplexity"]
    masks = [load(tmp_path / c / "masks.pt") for c in runs]
    assert any(not torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_wanda_on_a_convolutional_network_is_one_line_up_front(tmp_path):
    from conftest import TINY

    from rdprune.errors import UserError
    from rdprune.run.pipeline import run

    with pytest.raises(UserError, match=r"wanda compares the weights of each output row of a "
                                        r"linear layer; \d+ of the \d+ prunable layers"):
        run(compose_config([*TINY, "prune.criterion=wanda"], tmp_path))
    assert not (tmp_path / "cache" / "dense").exists()  # before any stage
