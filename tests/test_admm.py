"""ADMM pruning: projection, exact sparsity after hard pruning, convergence, resume, NaN guard."""

from __future__ import annotations

import copy
import functools
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on a shared CPU

import pytest
import torch
from conftest import dataset
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from rdprune import cache
from rdprune.training.admm import RESIDUALS, admm_phase, project
from rdprune.data import step_seed
from rdprune.errors import UserError
from rdprune.pruning.masks import (
    apply_masks,
    magnitude_mask,
    magnitude_masks,
    magnitude_order,
    num_pruned,
    sparsity_of,
)
from rdprune.training.train import TrainingDivergedError, evaluate, fit

torch.set_num_threads(1)

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.5)


@pytest.fixture(scope="module")
def data():
    """Digits at 8x8x1 without augmentation (1,437 training images)."""
    return dataset("digits", image_size=8, channels=1, augment=False, eval_batch_size=512)


def mlp(dropout: float = 0.0) -> tuple[nn.Module, dict[str, nn.Module]]:
    """64-64-10 MLP (4,736 prunable weights) and its two Linear layers, seeded init."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(dropout),
                          nn.Linear(64, 10))
    return model, {"1": model[1], "4": model[4]}


def small_cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    """Conv 3x3 -> 4, ReLU, Linear 144 -> 10 (36 + 1,440 prunable weights), seeded init."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    return model, {"0": model[0], "3": model[3]}


# ---------------------------------------------------------------- project


def tied(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values from {-2, -1, 0, 1, 2} / 4: many magnitude ties and exact zeros."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, shape, generator=g) / 4).float()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 3, 3)])
def test_project_matches_magnitude_mask(shape, seed):
    w = tied(shape, seed)
    n = w.numel()
    for keep in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        sparsity = (n - keep) / n
        assert n - num_pruned(n, sparsity) == keep
        mask = magnitude_mask(w, sparsity)
        assert int(mask.sum()) == keep
        z = project(w, keep)
        assert z.shape == w.shape
        assert torch.equal(z, torch.where(mask, w, torch.zeros_like(w)))
        # and, independently, the ``keep`` last entries of the stable magnitude order
        expected = torch.zeros(n)
        kept = magnitude_order(w)[n - keep :]
        expected[kept] = w.flatten()[kept]
        assert torch.equal(z.flatten(), expected)


def test_project_keeps_exact_count_under_ties():
    w = torch.ones(3, 4)  # all tied: the last `keep` positions win, as in magnitude_order
    z = project(w, 5)
    assert int(torch.count_nonzero(z)) == 5
    assert torch.equal(z.flatten(), torch.tensor([0.0] * 7 + [1.0] * 5))
    w = torch.tensor([0.0, -3.0, 0.0, 3.0, 1.0, -1.0])
    assert torch.equal(project(w, 3), torch.tensor([0.0, -3.0, 0.0, 3.0, 0.0, -1.0]))
    assert torch.equal(project(w, 6), w)  # already-zero entries are "kept" as zeros
    assert int(torch.count_nonzero(project(torch.randn(50), 17))) == 17
    with pytest.raises(ValueError):
        project(w, 7)
    with pytest.raises(ValueError):
        project(w, -1)


def test_project_leaves_input_and_grad_alone():
    w = torch.randn(4, 5, requires_grad=True)
    before = w.detach().clone()
    z = project(w, 3)
    assert not z.requires_grad
    assert torch.equal(w.detach(), before)


# ---------------------------------------------------------------- the phase


@pytest.mark.parametrize("sparsities", [(0.5, 0.9), (0.0, 0.97), (1 / 3, 1.0)])
def test_hard_pruning_after_admm_is_exact(data, sparsities):
    model, layers = small_cnn()
    history = admm_phase(model, data, layers, list(sparsities), iters=2, steps_per_iter=5,
                         rho=0.5, batch_size=32, optimizer=SGD, progress=False)
    assert [r["iter"] for r in history] == [1, 2]
    masks = magnitude_masks(layers, list(sparsities))
    apply_masks(layers, masks)
    total = removed = 0
    for (name, m), s in zip(layers.items(), sparsities):
        n = m.weight.numel()
        zeros = int((m.weight == 0).sum())
        assert zeros == num_pruned(n, s), name
        total, removed = total + n, removed + zeros
    expected = [num_pruned(m.weight.numel(), s) for m, s in zip(layers.values(), sparsities)]
    assert removed == sum(expected)
    assert sparsity_of(masks) == pytest.approx(removed / total, rel=1e-12)


def test_residual_shrinks_and_admm_beats_one_shot(data):
    dense, _ = mlp()
    fit(dense, data, steps=150, batch_size=32,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2), progress=False)
    sparsities = [0.9, 0.5]

    one_shot = copy.deepcopy(dense)
    one_shot_layers = {"1": one_shot[1], "4": one_shot[4]}
    apply_masks(one_shot_layers, magnitude_masks(one_shot_layers, sparsities))

    model = copy.deepcopy(dense)
    layers = {"1": model[1], "4": model[4]}
    history = admm_phase(model, data, layers, sparsities, iters=5, steps_per_iter=20, rho=1.0,
                         rho_growth=1.5, batch_size=32, optimizer=SGD, progress=False)
    assert [r["rho"] for r in history] == pytest.approx([1.5**i for i in range(5)])
    primal = [r["primal_residual"] for r in history]
    assert primal[-1] < 0.25 * primal[0], primal  # 0.845 -> 0.105 here
    assert history[-1]["primal_residual_rel"] < 0.03
    assert all(r["dual_residual"] >= 0 and r["loss"] > 0 for r in history)
    apply_masks(layers, magnitude_masks(layers, sparsities))
    # the point of ADMM: weights already near-sparse, so hard pruning costs (much) less
    assert evaluate(model, data) > evaluate(one_shot, data)


def test_layer_without_constraint_gets_no_penalty(data):
    """Sparsity 0 everywhere: no penalty, residuals 0 (plain training, not a proximal pull)."""
    model, layers = mlp()
    history = admm_phase(model, data, layers, [0.0, 0.0], iters=2, steps_per_iter=3, rho=10.0,
                         batch_size=32, optimizer=SGD, progress=False)
    for row in history:
        assert row["penalty"] == row["primal_residual"] == row["dual_residual"] == 0.0


def reference_admm(data, sparsities, *, iters, steps_per_iter, rho, rho_growth, seed):
    """ADMM written out step by step, independently of the training loop: ``steps_per_iter``
    SGD steps on cross-entropy + ``rho/2 sum ||W - (Z - U)||^2``, then the Z- and U-steps and
    ``rho *= rho_growth``. Returns the model and the final Z and U."""
    model, layers = mlp()
    opt = SGD(model.parameters())
    kept = {name: m.weight.numel() - num_pruned(m.weight.numel(), s)
            for (name, m), s in zip(layers.items(), sparsities)}
    weights = {name: m.weight for name, m in layers.items()}
    z = {name: project(w, kept[name]) for name, w in weights.items()}
    u = {name: torch.zeros_like(w) for name, w in weights.items()}
    step = 0
    for _ in range(iters):
        for _ in range(steps_per_iter):
            [(x, y)] = data.train_batches(32, seed, step, step + 1)
            torch.manual_seed(step_seed(seed, step))
            loss = nn.functional.cross_entropy(model(x), y)
            penalty = torch.zeros(())
            for name, w in weights.items():
                penalty = penalty + (w - (z[name] - u[name])).pow(2).sum()
            opt.zero_grad()
            (loss + penalty * (rho / 2)).backward()
            opt.step()
            step += 1
        with torch.no_grad():
            z = {name: project(w + u[name], kept[name]) for name, w in weights.items()}
            u = {name: u[name] + w - z[name] for name, w in weights.items()}
        rho *= rho_growth
    return model, z, u


@pytest.mark.parametrize("log_every", [1, 3, 4, 7, 100])
def test_z_and_u_steps_follow_steps_per_iter_whatever_log_every(data, tmp_path, log_every):
    """Exactly ``iters`` Z/U-steps, after steps 4, 8, 12: W, Z and U are bitwise those of the
    written-out ADMM whatever the logging interval; rows every ``log_every`` steps."""
    settings = dict(iters=3, steps_per_iter=4, rho=0.5, rho_growth=2.0, seed=5)
    expected, z, u = reference_admm(data, [0.8, 0.5], **settings)
    model, layers = mlp()
    ckpt = tmp_path / "admm.pt"
    history = admm_phase(model, data, layers, [0.8, 0.5], batch_size=32, optimizer=SGD,
                         checkpoint=ckpt, progress=False, log_every=log_every, **settings)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    state = cache.load(ckpt)
    assert state["iteration"] == 3 and state["rho"] == 0.5 * 2.0**3
    for name in layers:
        assert torch.equal(state["z"][name], z[name]) and torch.equal(state["u"][name], u[name])

    steps = sorted({*range(log_every, 13, log_every), 12})
    assert [r["step"] for r in history] == steps
    assert [r["iter"] for r in history] == [s // 4 for s in steps]
    assert [r["rho"] for r in history] == [0.5 * 2.0 ** ((s - 1) // 4) for s in steps]
    for row in history:  # the residuals of the last iteration done, none before the first
        assert all(math.isnan(row[k]) for k in RESIDUALS) == (row["step"] < 4)
    # at an iteration's end, the residuals of that iteration, as one row per iteration has them
    model, layers = mlp()
    per_iter = admm_phase(model, data, layers, [0.8, 0.5], batch_size=32, optimizer=SGD,
                          progress=False, **settings)
    assert [r["step"] for r in per_iter] == [4, 8, 12]
    by_step = {r["step"]: r for r in history}
    for row in per_iter:
        if row["step"] in by_step:
            assert {k: by_step[row["step"]][k] for k in (*RESIDUALS, "iter", "rho")} == \
                {k: row[k] for k in (*RESIDUALS, "iter", "rho")}


# ---------------------------------------------------------------- resume


class Killed(Exception):
    """Stands for the job being killed."""


class KillAfter:
    """Data whose training batches stop with :class:`Killed` after ``n`` batches."""

    def __init__(self, data, n: int) -> None:
        self.data, self.n = data, n

    def train_batches(self, *args, **kwargs):
        for i, batch in enumerate(self.data.train_batches(*args, **kwargs)):
            if i == self.n:
                raise Killed
            yield batch


def run(data, ckpt, iters: int) -> nn.Module:
    """A fresh model (as a restarted job builds it) through the phase; dropout exercises seeding."""
    model, layers = mlp(dropout=0.2)
    admm_phase(model, data, layers, [0.8, 0.6], iters=iters, steps_per_iter=5, rho=0.2,
               rho_growth=1.3, batch_size=32, optimizer=torch.optim.Adam, seed=3,
               checkpoint=ckpt, progress=False)
    return model


@pytest.mark.parametrize("interruption", ["killed mid-iteration", "fewer iters first"])
def test_resume_is_bitwise_identical(data, tmp_path, interruption):
    n = 4
    reference = run(data, tmp_path / "reference.pt", n)
    ckpt = tmp_path / "resumed.pt"
    if interruption == "killed mid-iteration":
        with pytest.raises(Killed):
            run(KillAfter(data, 12), ckpt, n)  # dies in iteration 3
        assert cache.load(ckpt)["iteration"] == 2
    else:
        run(data, ckpt, 2)
    resumed = run(data, ckpt, n)

    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = cache.load(tmp_path / "reference.pt"), cache.load(ckpt)
    assert a["iteration"] == b["iteration"] == n
    assert a["history"] == b["history"] and len(a["history"]) == n
    assert a["rho"] == b["rho"]
    for part in ("z", "u"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    for k, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][k][name]) for name, v in state.items())

    # a finished checkpoint is returned as is; other settings or fewer iters are refused
    again = run(data, ckpt, n)  # no training: the model is the checkpoint's, bitwise
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in resumed.state_dict().items())
    with pytest.raises(UserError, match="more than iters"):
        run(data, ckpt, n - 1)
    model, layers = mlp()
    with pytest.raises(UserError, match="other settings"):
        admm_phase(model, data, layers, [0.8, 0.5], iters=n, steps_per_iter=5, rho=0.2,
                   rho_growth=1.3, batch_size=32, optimizer=torch.optim.Adam, seed=3,
                   checkpoint=ckpt, progress=False)


# ---------------------------------------------------------------- guards and config


def test_nan_loss_raises(data):
    model, layers = mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"iteration 1/2, step 1/3"):
        admm_phase(model, data, layers, [0.5, 0.5], iters=2, steps_per_iter=3, rho=1e-3,
                   batch_size=32, optimizer=SGD, progress=False)


def test_bad_arguments(data):
    model, layers = mlp()
    kwargs = dict(iters=1, steps_per_iter=1, rho=1e-3, batch_size=32, optimizer=SGD,
                  progress=False)
    with pytest.raises(ValueError, match="sparsities"):
        admm_phase(model, data, layers, [0.5], **kwargs)
    with pytest.raises(UserError, match="rho"):
        admm_phase(model, data, layers, [0.5, 0.5], **{**kwargs, "rho": 0.0})
    with pytest.raises(UserError, match="steps_per_iter"):
        admm_phase(model, data, layers, [0.5, 0.5], **{**kwargs, "steps_per_iter": 0})


def test_finetune_admm_config(tiny_config):
    cfg = tiny_config("finetune=admm", "model=lenet5", "dataset.image_size=16")
    ft = OmegaConf.to_container(cfg.finetune, resolve=True)
    assert ft["name"] == "admm" and cfg.recipe.finetune_steps == 6 and cfg.recipe.batch_size == 64
    assert ft["optimizer"] == OmegaConf.to_container(
        tiny_config("finetune=adamw").finetune.optimizer)  # the masked retraining is adamw's
    admm = ft["admm"]
    assert admm == {**admm, "iters": 30, "steps_per_iter": 1000, "rho": 1e-4, "rho_growth": 1.0}
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(instantiate(cfg.finetune.admm.optimizer)(params), torch.optim.Adam)
    assert isinstance(instantiate(cfg.finetune.optimizer)(params), torch.optim.AdamW)
