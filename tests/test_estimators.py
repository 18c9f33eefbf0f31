"""The RD-curve estimators: the closed-form layer error equals the layer's measured output error,
every estimator is exact where it measures, and the curves keep the exact path's properties."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import rdprune
from rdprune.errors import UserError
from rdprune.methods.rd.estimators import Estimator, gain_scaled, input_grams, local_errors, monotone
from rdprune.pruning.criteria import Criterion


class Net(nn.Module):
    """A conv, a grouped conv and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.group(torch.relu(self.conv(x)))).flatten(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer", ["conv", "group", "fc"])
def test_the_closed_form_is_the_layers_own_output_error(net, layer):
    """tr(dW G dW^T) from the Gram of the unfolded inputs = || layer(x; dW) ||^2 summed over the
    calibration set, for a conv, a grouped conv and a linear layer."""
    model, x = net
    module = getattr(model, layer)
    gram = input_grams(model, {layer: module}, x, batch_size=4)[layer]
    dw = torch.randn_like(module.weight) * 0.1
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    xin = seen[0].double()
    if isinstance(module, nn.Conv2d):
        direct = nn.functional.conv2d(xin, dw.double(), None, module.stride, module.padding,
                                      module.dilation, module.groups)
    else:
        direct = xin @ dw.double().T
    groups = gram.shape[0]
    d = dw.double().reshape(groups, dw.shape[0] // groups, -1)
    closed = torch.einsum("goi,gij,goj->", d, gram, d)
    assert float(closed) == pytest.approx(float(direct.square().sum()), rel=1e-9)


def test_local_errors_grow_with_the_sparsity_and_sum_over_a_unit(net):
    model, x = net
    layers = {"conv": model.conv, "fc": model.fc}
    grid = np.linspace(0, 1, 11)
    single = local_errors(model, layers, [["conv"], ["fc"]], grid, Criterion(), x, 4)
    joint = local_errors(model, layers, [["conv", "fc"]], grid, Criterion(), x, 4)
    assert (single[:, 0] == 0).all() and (single[:, 1:] > 0).all()
    assert np.allclose(joint[0], single.sum(axis=0))


def test_measured_points_stay_measured_and_the_rest_is_monotone():
    grid = np.linspace(0, 1, 21)
    est = Estimator("exact", points=4)
    measured = est.measured(grid)
    assert list(grid[measured]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    values = np.array([0.0, 0.1, 0.3, 1.0, 4.0])
    row = est.complete(grid, measured, values, None)
    assert np.allclose(row[measured], values) and (np.diff(row) >= 0).all()
    assert np.allclose(monotone(grid[measured], values, grid), row)


def test_the_gain_is_exact_at_its_anchors_and_log_linear_between():
    grid = np.linspace(0, 1, 11)
    local = np.linspace(0, 2, 11) ** 2
    anchors = np.array([0, 5, 10])
    exact = np.array([0.0, local[5] * 3.0, local[10] * 12.0])
    row = gain_scaled(grid, anchors, exact, local)
    assert np.allclose(row[anchors], exact)
    g = row[1:] / local[1:]  # grid points 1..10
    assert np.allclose(g[:5], 3.0)  # constant up to the second anchor's left
    assert np.allclose(np.log(g[4:]), np.linspace(np.log(3), np.log(12), 6))


@pytest.mark.parametrize("bad, message", [
    (dict(kind="fisher"), "rd.estimator must be one of exact, local"),
    (dict(points=0), "rd.points must be null or a positive integer"),
    (dict(tokens=1.5), "rd.tokens must be null, a count of tokens"),
    (dict(tokens=-3), "rd.tokens must be null, a count of tokens"),
    (dict(precision="int8"), "rd.precision must be null or one of"),
])
def test_bad_estimator_settings_are_one_line_errors(bad, message):
    with pytest.raises(UserError, match=message):
        Estimator(**bad)


def test_tokens_take_whole_sequences_or_samples():
    ids = torch.zeros(8, 16, dtype=torch.long)
    images = torch.zeros(8, 3, 4, 4)
    assert len(Estimator(tokens=40).inputs(ids)) == 3  # ceil(40 / 16) sequences
    assert len(Estimator(tokens=0.25).inputs(ids)) == 2
    assert len(Estimator(tokens=5).inputs(images)) == 5  # samples of an image model
    assert len(Estimator(tokens=0.5).inputs(images)) == 4


def test_every_estimator_meets_the_target_and_leaves_the_model_as_it_was(net):
    model, x = net
    before = copy.deepcopy(model.state_dict())
    exact = rdprune.allocate(model, calib=x, sparsity=0.6, method="ours", grid_points=11,
                             progress=False)
    for options in (dict(estimator="local"), dict(points=3), dict(tokens=3),
                    dict(estimator="local", tokens=0.5, precision="bfloat16")):
        alloc = rdprune.allocate(model, calib=x, sparsity=0.6, method="ours", grid_points=11,
                                 progress=False, **options)
        sizes = [m.weight.numel() for m in (model.conv, model.group, model.fc)]
        removed = sum(round(s * n) for s, n in zip(alloc.values(), sizes))
        assert removed == round(0.6 * sum(sizes)), options
        assert (alloc.curves[:, 0] == 0).all()
        measured = Estimator(**{"kind" if k == "estimator" else k: v
                                for k, v in options.items()}).measured(alloc.grid)
        if options.get("estimator") != "local" and "tokens" not in options and \
                "precision" not in options:
            assert np.allclose(alloc.curves[:, measured], exact.curves[:, measured])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
