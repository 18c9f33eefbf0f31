"""Masks survive fine-tuning (momentum, weight decay, Adam) and a save/reload; resumption is
exact."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import Dying, dataset

from rdprune.pruning.layers import find_prunable
from rdprune.pruning.masks import check_masks, magnitude_masks, sparsity_of
from rdprune.models import resnet32
from rdprune.training.train import TrainingDivergedError, evaluate, fit

OPTIMIZERS = {
    "sgd_momentum_wd": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9,
                                         weight_decay=5e-4),
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
}


@pytest.fixture(scope="module")
def data():
    return dataset("synthetic", image_size=8, train_size=128, test_size=64, calib_size=16)


def pruned_model(seed: int = 0):
    torch.manual_seed(seed)
    model = resnet32()
    layers = find_prunable(model, torch.zeros(1, 3, 8, 8))
    masks = magnitude_masks(layers, [0.7] * len(layers))
    return model, layers, masks


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masks_survive_finetuning_and_reload(data, opt, tmp_path):
    model, layers, masks = pruned_model()
    before = {k: m.weight.detach().clone() for k, m in layers.items()}
    fit(model, data, steps=12, batch_size=32, optimizer=OPTIMIZERS[opt], masks=masks,
        progress=False)
    check_masks(layers, masks)
    for name, module in layers.items():  # kept weights did train
        assert not torch.equal(module.weight[masks[name]], before[name][masks[name]])
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = resnet32()  # the unpruned architecture loads the checkpoint: plain keys, zeros in place
    fresh.load_state_dict(torch.load(path))
    reloaded = {name: m.weight != 0  # the masks, read back from the zeros in the weights
                for name, m in find_prunable(fresh, torch.zeros(1, 3, 8, 8)).items()}
    assert sparsity_of(reloaded) == pytest.approx(sparsity_of(masks), abs=1e-12)
    for name in masks:
        assert torch.equal(reloaded[name], masks[name])
    assert evaluate(fresh, data) == evaluate(model, data)


def test_optimizer_state_of_pruned_weights_stays_zero(data):
    model, layers, masks = pruned_model()
    captured = {}

    def make(params):
        captured["opt"] = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        return captured["opt"]

    fit(model, data, steps=5, batch_size=32, optimizer=make, masks=masks, progress=False)
    state = captured["opt"].state
    for name, module in layers.items():
        buf = state[module.weight]["momentum_buffer"]
        assert not buf[~masks[name]].any(), name


def test_resume_from_checkpoint_is_exact(data, tmp_path):
    opt = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=10)
    model_a, _, masks = pruned_model()
    hist_a = fit(model_a, data, steps=10, batch_size=32, optimizer=opt, scheduler=sched,
                 masks=masks, seed=3, progress=False, log_every=1)

    # a run that dies during step 6 leaves the checkpoint of step 4 ...
    ckpt = tmp_path / "ft.partial.pt"
    model_b, _, _ = pruned_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model_b, Dying(data, after=6), steps=10, batch_size=32, optimizer=opt,
            scheduler=sched, masks=masks, seed=3, progress=False, checkpoint=ckpt,
            checkpoint_every=4, log_every=1)
    assert ckpt.exists()
    # ... and a fresh process resumes from it
    model_c, _, _ = pruned_model(seed=123)  # different init: everything must come from the file
    hist_c = fit(model_c, data, steps=10, batch_size=32, optimizer=opt, scheduler=sched,
                 masks=masks, seed=3, progress=False, checkpoint=ckpt, checkpoint_every=4,
                 log_every=1)
    assert hist_c == hist_a
    for (k, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), k


def test_nan_loss_stops_with_the_step(data, tmp_path):
    model, _, _ = pruned_model()
    opt = functools.partial(torch.optim.SGD, lr=1e30)
    with pytest.raises(TrainingDivergedError, match=r"at step \d+"):
        fit(model, data, steps=50, batch_size=32, optimizer=opt, progress=False)


def test_a_revived_weight_is_an_error_not_a_warning(data, monkeypatch):
    """If anything revives a pruned weight mid-training, the epoch check stops the run."""
    import rdprune.training.loop as loop_module
    from rdprune.pruning.masks import MaskViolationError

    model, layers, masks = pruned_model()
    real_apply = loop_module.apply_masks
    calls = {"n": 0}

    def leaky_apply(layers_, masks_):
        calls["n"] += 1
        if calls["n"] < 3:  # the first steps mask properly, then masking silently breaks
            real_apply(layers_, masks_)

    monkeypatch.setattr(loop_module, "apply_masks", leaky_apply)
    monkeypatch.setattr(loop_module, "mask_gradients", lambda *a: None)
    with pytest.raises(MaskViolationError, match="pruned weights of layer"):
        fit(model, data, steps=8, batch_size=32, optimizer=OPTIMIZERS["adamw"], masks=masks,
            progress=False)
