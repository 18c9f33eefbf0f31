"""Vision transformers on the traced fast path, grid batching, and weights outside the prunable set.

Float32 models at 32x32 with patch 8 (17 tokens). Without BN folding and channels-last the fast
path runs the naive scheme's kernels on the same values: bitwise equal curves. Otherwise the
claim is relative to the model's own noise (see :func:`noise`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from rdprune.pruning.layers import find_prunable, unprunable_weights
from rdprune.methods.rd.profiling import gaussian_inputs, rd_curves, rd_curves_naive

# Any warning (a fallback to the naive scheme, grid batching giving up) fails a test.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

GRID = [0.0, 0.2, 0.6, 0.9, 1.0]
NOISE_FACTOR = 8  # the bound stated in rdprune.methods.rd.profiling's docstring


def timm_vit(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        name, pretrained=False, img_size=32, patch_size=8, num_classes=10, depth=2
    ).eval()


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.2)  # zero at init: every curve would be 0
    return model.eval()


def torchvision_vit_unfused() -> nn.Module:
    from rdprune.models.attention import unfuse_attention

    model = torchvision_vit()
    unfuse_attention(model)
    return model


MODELS = {
    "timm_vit_tiny": lambda: timm_vit("vit_tiny_patch16_224"),
    "timm_deit_tiny": lambda: timm_vit("deit_tiny_patch16_224"),
    "torchvision_vit": torchvision_vit,
    "torchvision_vit_unfused": torchvision_vit_unfused,
}


def inputs(n: int = 4) -> torch.Tensor:
    return gaussian_inputs(n, (3, 32, 32), seed=1)


def nudged(x: torch.Tensor) -> torch.Tensor:
    """Every input moved by one ulp, up or down at random."""
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    return x * (1 + torch.finfo(x.dtype).eps * sign)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-layer max |a - b| / max |b|."""
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def noise(model: nn.Module, x: torch.Tensor, naive: np.ndarray, **kw) -> float:
    """How far the naive curves move when the inputs move by one ulp."""
    return rel(rd_curves_naive(model, nudged(x), GRID, **kw), naive)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vit_fast_path_equals_naive(name):
    model = MODELS[name]()
    x = inputs()
    kw = dict(reduction="worst", progress=False, batch_size=4)
    naive = rd_curves_naive(model, x, GRID, **kw)
    assert (naive[:, 0] == 0).all() and (naive[:, -1] > 0).all()
    exact = rd_curves(model, x, GRID, fold_bn=False, channels_last=False, **kw)
    np.testing.assert_array_equal(exact, naive)
    bound = NOISE_FACTOR * noise(model, x, naive, **kw)
    assert 0 < bound < 1e-3
    for options in ({}, {"grid_batch": 2}, {"grid_batch": 3, "fold_bn": False}):
        fast = rd_curves(model, x, GRID, **options, **kw)
        assert rel(fast, naive) <= bound, options


class OptionalArguments(nn.Module):
    """Optional forward arguments that steer Python control flow (as timm's ``attn_mask``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x, mask=None, negate=False):
        h = self.conv(x)
        if mask is not None:
            h = h * mask
        if negate:
            h = -h
        return self.fc(h.mean((2, 3)))


def test_optional_forward_arguments_are_bound_to_their_defaults():
    torch.manual_seed(0)
    model = OptionalArguments().double().eval()
    x = inputs().double()
    naive = rd_curves_naive(model, x, GRID, "mean", progress=False)
    fast = rd_curves(model, x, GRID, "mean", progress=False, grid_batch=2)
    np.testing.assert_allclose(fast, naive, rtol=1e-10, atol=0)


def test_timm_vit_batches_attention_layers_with_shape_reads():
    """timm's attention reshapes with ``B, N, C = x.shape`` read upstream of qkv / proj."""
    model = timm_vit("vit_tiny_patch16_224")
    x = inputs(6)
    layers = find_prunable(model, x[:1])
    attention = [n for n in layers if ".attn." in n]
    assert len(attention) == 4
    naive = rd_curves_naive(model, x, GRID, "mean", layers=attention, progress=False)
    batched = rd_curves(model, x, GRID, "mean", layers=attention, progress=False,
                        grid_batch=4, fold_bn=False, channels_last=False)
    bound = NOISE_FACTOR * noise(model, x, naive, reduction="mean", layers=attention,
                                 progress=False)
    assert rel(batched, naive) <= bound


class NumelBatch(nn.Module):
    """Reads the batch size through ``numel``, which planning does not treat as a shape read."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        n = h.numel() // 8
        h = self.a(h).reshape(n, 2, 4).flatten(1)
        h = self.b(h).reshape(n, 2, 4).flatten(1)
        return self.head(h)


def test_failed_grid_batching_warns_once_per_call_and_stays_exact():
    torch.manual_seed(0)
    model = NumelBatch().double().eval()
    x = torch.randn(6, 8, dtype=torch.float64)
    naive = rd_curves_naive(model, x, GRID, "mean", progress=False)
    with pytest.warns(UserWarning) as record:
        fast = rd_curves(model, x, GRID, "mean", progress=False, grid_batch=3)
    assert len(record) == 1
    assert "grid batching failed for 2 of 4 layers (first a: " in str(record[0].message)
    np.testing.assert_allclose(fast, naive, rtol=1e-10, atol=0)


def test_torchvision_vit_attention_is_unfused_prunable_and_counted():
    """torchvision's nn.MultiheadAttention reads in_proj_weight / out_proj functionally: as built
    by rdprune.models (unfuse_attention) each block has two more prunable Linears, computing the
    same function, counted in MACs, and pruned to the target with the rest."""
    from rdprune.methods.baselines import lamp
    from rdprune.pruning.flops import layer_macs
    from rdprune.pruning.masks import magnitude_masks, num_pruned, sparsity_of
    from rdprune.models.attention import SelfAttention, unfuse_attention

    model, x = torchvision_vit(), inputs(4)
    fused = unprunable_weights(model, find_prunable(model, x[:1]))
    attn = "encoder.layers.encoder_layer_{}.self_attention.{}"
    assert fused[attn.format(0, "in_proj_weight")] == 3 * 32 * 32  # the stock module: not prunable
    state, before = model.state_dict(), model(x)
    assert unfuse_attention(model) == 2
    torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-6)
    layers = find_prunable(model, x[:1])
    for i in range(2):
        assert isinstance(layers[attn.format(i, "in_proj")], nn.Linear)
        assert layers[attn.format(i, "out_proj")].weight.shape == (32, 32)
    assert unprunable_weights(model, layers) == {"class_token": 32, "encoder.pos_embedding": 17 * 32}
    macs = layer_macs(model, x[:1], list(layers))
    assert macs[attn.format(0, "in_proj")] == 17 * 32 * 96  # 17 tokens x [32 -> 96]
    assert macs[attn.format(1, "out_proj")] == 17 * 32 * 32
    weights = [m.weight for m in layers.values()]
    masks = magnitude_masks(layers, lamp(weights, 0.8))
    total = sum(w.numel() for w in weights)
    assert round(sparsity_of(masks) * total) == num_pruned(total, 0.8)
    assert masks[attn.format(0, "in_proj")].float().mean() < 1  # attention weights pruned too
    fresh = torchvision_vit()  # a state dict of the stock module loads into the unfused one
    unfuse_attention(fresh)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), before, rtol=1e-6, atol=1e-6)
    assert isinstance(fresh.encoder.layers[0].self_attention, SelfAttention)


def test_weights_read_with_f_linear_are_prunable_swin_and_resnet():
    """torchvision Swin's attention reads qkv / proj with F.linear: they are used, so prunable
    and counted; only the relative position bias tables stay outside."""
    from rdprune.pruning.flops import layer_macs

    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2],
        num_classes=10,
    ).eval()  # fmt: skip
    layers = find_prunable(swin, inputs(1))
    got = unprunable_weights(swin, layers)
    assert set(got) == {f"features.{s}.0.attn.relative_position_bias_table" for s in (1, 3)}
    macs = layer_macs(swin, inputs(1), list(layers))
    for stage, dim, tokens in ((1, 8, 64), (3, 16, 16)):
        prefix = f"features.{stage}.0.attn."
        assert macs[prefix + "qkv"] == tokens * dim * 3 * dim  # every token through [d -> 3d]
        assert macs[prefix + "proj"] == tokens * dim * dim
    resnet = torchvision.models.resnet18(num_classes=10)
    assert unprunable_weights(resnet, find_prunable(resnet, inputs(1))) == {}


def test_bench_profiling_vit_toy(tmp_path):
    """The benchmark's ViT section runs at toy size; its exact variant is bitwise naive."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "bench_profiling.py"
    spec = importlib.util.spec_from_file_location("bench_profiling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.txt"
    bench.main(["--model", "vit", "--n", "2", "--grid-points", "3", "--reductions", "worst",
                "--groups", "1", "--ablation-every", "0", "--out", str(out)])
    text = out.read_text()
    assert "timm ViT-Tiny (32x32, patch 8, depth 4) (18 prunable layers)" in text
    exact = next(ln for ln in text.splitlines() if "fast, exact" in ln)
    assert float(exact.split()[-2]) == 0.0
    assert "s = 0 column exactly 0 in every variant: True" in text
