"""Rate-distortion curves: the traced fast path against the naive baseline and the definition.

Exactness checks run in float64 (element-wise rtol 1e-6), where float32 noise cannot hide a wrong
mask or a stale cached value. Networks are tiny (8x8 inputs, a few samples, coarse grids).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdprune.pruning.layers import find_prunable
from rdprune.pruning.masks import apply_masks, magnitude_mask
from rdprune.models import cifar_resnet, efficientnet_b0
from rdprune.methods.rd.profiling import gaussian_inputs, rd_curves, rd_curves_naive, warm_batchnorm

# A silent fallback to the naive scheme would make the fast-vs-naive checks vacuous.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

GRID = [0.0, 0.1, 0.35, 0.5, 0.8, 0.97, 1.0]
RTOL, ATOL = 1e-6, 1e-12


def _settle_bn(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Non-trivial BN running statistics from a few train-mode passes on random data."""
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(gaussian_inputs(16, shape, seed + i, dtype=next(model.parameters()).dtype))
    return model.eval()


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return _settle_bn(cifar_resnet(8, num_classes=5, shortcut="conv").double(), (3, 8, 8))


class TinyDense(nn.Module):
    """DenseNet-like: pre-activation bottlenecks concatenated to their input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        ch = 6
        for _ in range(2):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "bn1": nn.BatchNorm2d(ch),
                        "conv1": nn.Conv2d(ch, 8, 1, bias=False),
                        "bn2": nn.BatchNorm2d(8),
                        "conv2": nn.Conv2d(8, 4, 3, padding=1, bias=False),
                    }
                )
            )
            ch += 4
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, 5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            out = b["conv1"](F.relu(b["bn1"](x)))
            out = b["conv2"](F.relu(b["bn2"](out)))
            x = torch.cat([out, x], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class LinearNet(nn.Module):
    """Conv + Linears, in-place ops on fresh values, and a Linear that is never called."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(4 * 8 * 8, 16)
        self.unused = nn.Linear(16, 16)  # defined, never called: not a prunable layer
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.act(self.conv(x)).flatten(1)
        h = self.act(self.fc1(h))
        r = self.fc2(h)
        r += h
        return self.head(torch.relu_(r))


class OddNet(nn.Module):
    """Grouped conv with reflect padding, a conv called twice, a functional use of a weight."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="reflect")
        self.shared = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.dw(h)) + h
        h = self.shared(F.relu(self.shared(h)))
        return F.linear(h.mean((2, 3)), self.head.weight, self.head.bias)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = h * 2
        return self.fc(h.mean((2, 3)))


class Aliased(nn.Module):
    """``h += 1`` also changes ``y`` in eager mode; torch.fx records an out-of-place add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.conv(x)
        y = h
        h += 1
        return self.fc((h + y).mean((2, 3)))


class ReadAfterInplace(nn.Module):
    """An in-place ReLU whose input is read again afterwards."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.conv(x)
        r = h.relu_()
        return self.fc((r * h).mean((2, 3)))


def _double(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model.double().eval()


def _inputs(n: int = 6, dtype=torch.float64) -> torch.Tensor:
    return gaussian_inputs(n, (3, 8, 8), seed=1, dtype=dtype)


def _snapshot(model: nn.Module) -> dict:
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = [m.training for m in model.modules()]
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return {"state": state, "modes": modes, "hooks": hooks}


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_unchanged(model: nn.Module, snap: dict) -> None:
    now = model.state_dict(keep_vars=True)
    assert now.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        cur = now[k].detach()
        assert cur.dtype == v.dtype and cur.shape == v.shape, k
        # Bitwise: compare the raw bytes (tells -0.0 from 0.0, NaN payloads, ...).
        assert torch.equal(_bytes(cur), _bytes(v)), k
    assert [m.training for m in model.modules()] == snap["modes"]
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    assert hooks == snap["hooks"]


def _both(model, x, grid=GRID, reduction="worst", **kw):
    naive = rd_curves_naive(model, x, grid, reduction, progress=False, batch_size=4, **kw)
    fast = rd_curves(model, x, grid, reduction, progress=False, batch_size=4, **kw)
    return naive, fast


NETS = {
    "resnet": tiny_resnet,
    "dense": lambda: _settle_bn(_double(TinyDense()), (3, 8, 8)),
    "linear": lambda: _double(LinearNet()),
}


@pytest.mark.parametrize("grid_batch", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "worst"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_fast_matches_naive_float64(net, reduction, grid_batch):
    model = NETS[net]()
    x = _inputs()
    naive, fast = _both(model, x, reduction=reduction, grid_batch=grid_batch)
    layers = find_prunable(model, x[:1])
    assert fast.shape == (len(layers), len(GRID)) and fast.dtype == np.float64
    assert "unused" not in layers
    assert (naive[:, -1] > 0).all()  # every layer matters at s = 1
    np.testing.assert_allclose(fast, naive, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("grid_batch", [1, 3])
def test_grouped_shared_functional_and_batched(grid_batch):
    model = _double(OddNet())
    x = _inputs()
    names = ["stem", "dw", "shared", "head"]  # head runs only through its weight: name it
    naive = rd_curves_naive(model, x, GRID, "mean", layers=names, progress=False)
    fast = rd_curves(model, x, GRID, "mean", layers=names, progress=False, grid_batch=grid_batch)
    np.testing.assert_allclose(fast, naive, rtol=RTOL, atol=ATOL)


def test_resnet_grid_batch_channels_last_and_unsorted_grid():
    model = tiny_resnet()
    x = _inputs()
    grid = [0.5, 0.0, 0.5, 1.0, 0.02, 0.021]  # repeats and near-repeats are copied
    naive = rd_curves_naive(model, x, grid, "worst", progress=False)
    options = ({"grid_batch": 4}, {"channels_last": True}, {"fold_bn": True}, {"reuse": False})
    for kw in options:
        fast = rd_curves(model, x, grid, "worst", progress=False, batch_size=3, **kw)
        np.testing.assert_allclose(fast, naive, rtol=RTOL, atol=ATOL, err_msg=str(kw))


def test_float32_exact_mode_bitwise_defaults_within_1e5():
    torch.manual_seed(0)
    model = _settle_bn(cifar_resnet(8, num_classes=5), (3, 8, 8))
    x = _inputs(dtype=torch.float32)
    naive, exact = _both(model, x, fold_bn=False, channels_last=False)
    np.testing.assert_array_equal(exact, naive)  # same kernels on the same values
    fast = rd_curves(model, x, GRID, "worst", progress=False, batch_size=4)  # the defaults
    rel = np.abs(fast - naive).max(axis=1) / np.abs(naive).max(axis=1)
    assert rel.max() <= 1e-5
    auto = dict(autocast_dtype=torch.bfloat16, channels_last=True)
    fast_bf16 = rd_curves(model, x, GRID, "worst", progress=False, **auto)
    assert np.isfinite(fast_bf16).all() and (fast_bf16[:, 0] == 0).all()
    assert (fast_bf16[:, -1] > 0).all()


def test_efficientnet_every_option_fast_and_within_model_noise():
    """Random-init EfficientNet-B0 (warmed BN), float32: rounding differences of folding and
    channels-last are ~1e-4 of the curves, like the naive scheme's own under a one-ulp input
    nudge. Whatever the options, the trace check keeps the fast path (no fallback warning) and
    the curves stay within 8 x that noise (the bound in rdprune.methods.rd.profiling's docstring)."""
    torch.manual_seed(0)
    model = warm_batchnorm(efficientnet_b0(), [gaussian_inputs(8, (3, 32, 32), 100 + i)
                                               for i in range(2)])
    x = gaussian_inputs(4, (3, 32, 32), seed=1)
    layers = list(find_prunable(model, x[:1]))[::10]
    grid = [0.0, 0.05, 0.5, 1.0]
    kw = dict(layers=layers, progress=False, batch_size=4)
    naive = rd_curves_naive(model, x, grid, "worst", **kw)
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    nudged = rd_curves_naive(model, x * (1 + torch.finfo(x.dtype).eps * sign), grid, "worst",
                             **kw)

    def rel(a: np.ndarray) -> float:
        return float((np.abs(a - naive).max(axis=1) / np.abs(naive).max(axis=1)).max())

    noise = rel(nudged)
    assert 1e-7 < noise < 1e-3
    for fold_bn in (False, True):
        for channels_last in (False, True):
            fast = rd_curves(model, x, grid, "worst", fold_bn=fold_bn,
                             channels_last=channels_last, **kw)
            assert rel(fast) <= 8 * noise, (fold_bn, channels_last)
            if not (fold_bn or channels_last):
                np.testing.assert_array_equal(fast, naive)


class Cancelling(nn.Module):
    """Logits are the small difference of two large ones: a float32 condition number of ~1e4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc_a, self.fc_b = nn.Linear(8, 5), nn.Linear(8, 5)
        with torch.no_grad():
            self.fc_b.weight.copy_(self.fc_a.weight * (1 + 1e-4 * torch.randn(5, 8)))
            self.fc_b.bias.copy_(self.fc_a.bias)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc_a(h) - self.fc_b(h)


def test_trace_check_tolerance_follows_the_models_own_noise():
    """Folding BN moves these logits by ~1e-3 of their size, beyond a fixed 1000-ulp tolerance,
    but no further than a one-ulp input nudge moves them: the fast path is kept, and its curves
    are as close to the naive ones as the naive ones are to themselves under the nudge."""
    torch.manual_seed(0)
    model = warm_batchnorm(Cancelling(), [gaussian_inputs(8, (3, 8, 8), 10)])
    x = _inputs(dtype=torch.float32)
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    naive = rd_curves_naive(model, x, GRID, "mean", progress=False)
    nudged = rd_curves_naive(model, x * (1 + torch.finfo(x.dtype).eps * sign), GRID, "mean",
                             progress=False)
    fast = rd_curves(model, x, GRID, "mean", progress=False, channels_last=False)

    def rel(a: np.ndarray) -> float:
        return float((np.abs(a - naive).max(axis=1) / np.abs(naive).max(axis=1)).max())

    assert rel(fast) <= 8 * rel(nudged)
    with torch.no_grad():
        y = model(x)
        folded = copy.deepcopy(model)
        bn = folded.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        folded.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        folded.conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        folded.bn = nn.Identity()
        moved = float((folded(x) - y).abs().max() / y.abs().max())
    assert moved > 1000 * torch.finfo(torch.float32).eps  # a fixed tolerance would fall back


def test_independent_definition_check():
    model = tiny_resnet()
    x = _inputs()
    name, s = "layer2.0.conv1", 0.37
    pruned = copy.deepcopy(model)
    layer = pruned.get_submodule(name)
    apply_masks({name: layer}, {name: magnitude_mask(layer.weight, s)})
    with torch.no_grad():
        y, y_hat = model(x), pruned(x)
    per_sample = ((y - y_hat) ** 2).mean(dim=1)
    for reduction, expected in (("mean", per_sample.mean()), ("worst", per_sample.max())):
        got = rd_curves(model, x, [s], reduction, layers=[name], progress=False)
        assert got.shape == (1, 1)
        np.testing.assert_allclose(got[0, 0], expected.item(), rtol=1e-10)


def test_zero_column_worst_above_mean_and_model_unchanged():
    model = tiny_resnet()
    model.layer1.train()  # mixed modes must come back exactly
    snap = _snapshot(model)
    x = _inputs()
    mean = rd_curves(model, x, GRID, "mean", progress=False)
    worst = rd_curves(model, x, GRID, "worst", progress=False)
    _assert_unchanged(model, snap)
    rd_curves_naive(model, x, GRID, "mean", progress=False)
    _assert_unchanged(model, snap)
    assert (mean[:, 0] == 0).all() and (worst[:, 0] == 0).all()
    assert (worst >= mean).all()
    assert (np.diff(worst[:, [0, -1]], axis=1) > 0).all()


@pytest.mark.parametrize("path", [rd_curves, rd_curves_naive])
def test_model_unchanged_after_exception(path, monkeypatch):
    model = tiny_resnet()
    model.layer2.train()
    snap = _snapshot(model)
    calls = {"n": 0}
    conv2d = F.conv2d

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 60:  # well past the reference pass: some layer is mid-curve
            raise RuntimeError("boom")
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        path(model, _inputs(), GRID, "worst", progress=False, batch_size=6)
    monkeypatch.undo()
    _assert_unchanged(model, snap)


def test_prezeroed_weights_give_exact_zeros():
    model = tiny_resnet()
    layers = find_prunable(model, _inputs()[:1])
    sparsity = [0.3 if i % 2 else 0.55 for i in range(len(layers))]
    masks = {n: magnitude_mask(m.weight, s) for (n, m), s in zip(layers.items(), sparsity)}
    apply_masks(layers, masks)
    grid = [0.0, 0.1, 0.3, 0.55, 0.56, 0.8, 1.0]
    naive, fast = _both(model, _inputs(), grid)
    np.testing.assert_allclose(fast, naive, rtol=RTOL, atol=ATOL)
    for i, s in enumerate(sparsity):
        for j, g in enumerate(grid):
            if g <= s:
                assert fast[i, j] == 0.0 and naive[i, j] == 0.0
            else:
                assert fast[i, j] > 0.0


class ViewReadAfterInplace(nn.Module):
    """A view taken before an in-place op and read after it sees the new values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = self.conv(x)
        flat = h.flatten(1)
        h.relu_()
        return self.fc(flat)


@pytest.mark.parametrize("net", [Branchy, Aliased, ReadAfterInplace, ViewReadAfterInplace])
def test_untraceable_model_falls_back_to_naive(net):
    model = _double(net())
    x = _inputs()
    naive = rd_curves_naive(model, x, GRID, "mean", progress=False)
    with pytest.warns(UserWarning, match="naive"):
        fast = rd_curves(model, x, GRID, "mean", progress=False)
    np.testing.assert_array_equal(fast, naive)


def test_gaussian_inputs_deterministic():
    a, b = gaussian_inputs(4, (3, 2, 2), seed=7), gaussian_inputs(4, (3, 2, 2), seed=7)
    assert a.shape == (4, 3, 2, 2) and torch.equal(a, b)
    assert not torch.equal(a, gaussian_inputs(4, (3, 2, 2), seed=8))


def test_warm_batchnorm_averages_batch_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.3))
    batches = [gaussian_inputs(5, (3, 6, 6), seed) * (seed + 1) for seed in range(3)]
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    assert warm_batchnorm(model, batches) is model and not model.training
    bn = model[1]
    assert bn.momentum == 0.3
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
