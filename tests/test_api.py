"""The Python API (rdprune.allocate / prune / finetune): the README example runs, the budget is
exact, masks survive fine-tuning, and bad input is one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import ROOT
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rdprune
from rdprune.errors import UserError
from rdprune.pruning.layers import find_prunable
from rdprune.pruning.masks import kept_count, num_pruned
from rdprune.models import resnet32


def readme_example(section: str) -> dict:
    """Run the first Python block under the README heading ``section``; its variables."""
    text = (ROOT / "README.md").read_text().split(f"## {section}", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example
    return scope


def test_the_readme_example_runs():
    scope = readme_example("Use it on your own model")
    masks, model = scope["masks"], scope["model"]
    total = sum(m.numel() for m in masks.values())
    removed = total - sum(kept_count(m) for m in masks.values())
    # the DP's unused budget is given back: the target to the weight
    assert removed == num_pruned(total, 0.9)
    modules = dict(model.named_modules())
    for name, mask in masks.items():  # fine-tuning kept the pruned weights at zero
        assert not modules[name].weight[~mask].any()


def test_the_readme_language_model_example_runs():
    scope = readme_example("Language models")
    masks, model, ids = scope["masks"], scope["model"], scope["ids"]
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(masks) == {n for n in linears if ".layers." in n}  # blocks only: no lm_head
    total = sum(m.numel() for m in masks.values())
    assert total - sum(kept_count(m) for m in masks.values()) == num_pruned(total, 0.6)
    modules = dict(model.named_modules())
    assert all(not modules[n].weight[~m].any() for n, m in masks.items())
    with torch.no_grad():
        assert model(input_ids=ids).logits.isfinite().all()  # the model is still a model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet32(num_classes=10).eval()


def lamp_by_hand(weights: list[torch.Tensor], sparsity: float) -> list[float]:
    """LAMP written out (Lee et al., ICLR 2021): per layer, the squared weights in ascending
    order, each divided by the sum of itself and all larger ones; the ``num_pruned(N, sparsity)``
    lowest scores of the whole network are removed. Returns removed / size per layer."""
    scores, owner = [], []
    for i, w in enumerate(weights):
        sq = np.sort(w.detach().double().flatten().numpy() ** 2)
        suffix = np.cumsum(sq[::-1])[::-1]
        scores.append(np.divide(sq, suffix, out=np.zeros_like(sq), where=suffix > 0))
        owner.append(np.full(len(sq), i))
    order = np.argsort(np.concatenate(scores), kind="stable")
    removed = np.concatenate(owner)[order[:num_pruned(sum(w.numel() for w in weights), sparsity)]]
    return [int((removed == i).sum()) / w.numel() for i, w in enumerate(weights)]


def test_baseline_through_the_api_equals_lamp_by_hand(model):
    calib = torch.randn(8, 3, 16, 16)
    out = rdprune.allocate(model, calib, sparsity=0.8, method="lamp")
    layers = find_prunable(model, calib[:1])
    assert list(out) == list(layers)  # model order
    expected = lamp_by_hand([m.weight for m in layers.values()], 0.8)
    assert len(set(expected)) > 1  # layer-adaptive: not one sparsity everywhere
    assert list(out.values()) == expected


def test_ours_meets_the_budget_and_caches_like_the_pipeline(model, tmp_path):
    calib = torch.randn(16, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = rdprune.allocate(model, calib, sparsity=0.7, grid_points=11, cache_dir=tmp_path,
                           progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    layers = find_prunable(model, calib[:1])
    sizes = [m.weight.numel() for m in layers.values()]
    removed = sum(num_pruned(n, s) for n, s in zip(sizes, out.values()))
    assert num_pruned(sum(sizes), 0.7) <= removed <= num_pruned(sum(sizes), 0.7 + 1e-3) + 1
    assert out.curves.shape == (len(layers), 11) and len(list(tmp_path.rglob("*.pt"))) == 2
    again = rdprune.allocate(model, calib, sparsity=0.7, grid_points=11, cache_dir=tmp_path,
                             progress=False)
    assert again == out and len(list(tmp_path.rglob("*.pt"))) == 2  # served from the cache


def test_a_flops_target_keeps_at_most_that_share_of_the_macs(model):
    from rdprune.pruning.flops import flops_kept, layer_macs

    calib = torch.randn(8, 3, 16, 16)
    out = rdprune.allocate(model, calib, flops_kept=0.3, grid_points=21, progress=False)
    layers = find_prunable(model, calib[:1])
    macs = layer_macs(model, calib[:1], list(layers))
    densities = [1 - num_pruned(m.weight.numel(), out[k]) / m.weight.numel()
                 for k, m in layers.items()]
    assert flops_kept([macs[k] for k in layers], densities) <= 0.3
    with pytest.raises(UserError, match="FLOPs target"):
        rdprune.allocate(model, calib, flops_kept=0.3, method="erk")


def test_prune_then_finetune_keeps_the_zeros(model):
    calib = torch.randn(32, 3, 16, 16)
    loader = DataLoader(TensorDataset(calib, torch.randint(0, 10, (32,))), batch_size=8,
                        shuffle=True)
    masks = rdprune.prune(model, rdprune.allocate(model, calib, sparsity=0.5, method="erk"))
    again = rdprune.prune(model, {k: 0.0 for k in masks}, masks)  # pruned weights stay pruned
    assert all(torch.equal(again[k], masks[k]) for k in masks)
    history = rdprune.finetune(model, masks, loader, steps=6, progress=False)
    assert history and history[-1]["step"] == 6
    modules = dict(model.named_modules())
    assert all(not modules[k].weight[~m].any() for k, m in masks.items())


class NoLayers(nn.Module):
    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("call,match", [
    (lambda m, x: rdprune.allocate(NoLayers(), x, sparsity=0.5), "no Conv2d or Linear"),
    (lambda m, x: rdprune.allocate(m, torch.randn(4, 5), sparsity=0.5), "rejects an input"),
    (lambda m, x: rdprune.allocate(m, x, sparsity=1.2), "sparsity must be in"),
    (lambda m, x: rdprune.allocate(m, x), "exactly one target"),
    (lambda m, x: rdprune.allocate(m, x, sparsity=0.5, method="lampp"), "unknown method"),
    (lambda m, x: rdprune.allocate(m, x, sparsity=0.5, method="lamp", grid_points=3),
     "takes no options"),
    (lambda m, x: rdprune.allocate(m, x, sparsity=0.5, grid_pints=3), "grid_pints"),
    (lambda m, x: rdprune.prune(m, {"nope": 0.5}), "no layer 'nope'"),
])
def test_bad_input_is_one_line(model, call, match):
    with pytest.raises(UserError, match=match) as info:
        call(model, torch.randn(4, 3, 16, 16))
    assert "\n" not in str(info.value)


def test_a_users_vit_gets_a_warning_with_the_attention_weights_it_leaves_dense(caplog):
    """torchvision's ViT runs nn.MultiheadAttention, a fused kernel no prunable layer is called
    in: allocate says how many weights that leaves dense, and how to prune them too."""
    import logging

    import torchvision

    from rdprune.models.attention import unfuse_attention

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2,
                                               num_heads=4, hidden_dim=64, mlp_dim=128,
                                               num_classes=10)  # vit_b_16's class, small
    x = torch.randn(4, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="rdprune.api"):
        s = rdprune.allocate(vit, calib=x, sparsity=0.5, method="uniform", progress=False)
    fused = 2 * (3 * 64 * 64 + 64 * 64)  # in_proj and out_proj of 2 blocks
    assert f"2 nn.MultiheadAttention modules keep their {fused:,} weights dense" in caplog.text
    assert "unfuse_attention" in caplog.text
    caplog.clear()
    assert unfuse_attention(vit) == 2
    with caplog.at_level(logging.WARNING, logger="rdprune.api"):
        unfused = rdprune.allocate(vit, calib=x, sparsity=0.5, method="uniform", progress=False)
    assert "MultiheadAttention" not in caplog.text and len(unfused) == len(s) + 4
