"""End-to-end: composed configs run the whole pipeline and write complete, consistent outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from rdprune.cache import load
from rdprune.pruning.layers import find_prunable
from rdprune.run.pipeline import run

METRIC_KEYS = {
    "model", "dataset", "method", "seed", "target_sparsity", "achieved_sparsity",
    "flops_kept", "dense_top1", "pruned_top1", "top1", "seconds",
    "joint_distortion_mean", "joint_distortion_worst",
}


@pytest.mark.slow
def test_quickstart_shrunk_writes_complete_outputs(tiny_config, tmp_path):
    cfg = tiny_config("experiment=quickstart", "rd.grid_points=6")
    metrics = run(cfg)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved)
    assert saved == json.loads(json.dumps(metrics))
    assert (saved["model"], saved["dataset"], saved["method"]) == ("resnet32", "digits", "ours")
    assert saved["target_sparsity"] == 0.9
    # the DP may land below the target by at most its tolerance, never above the budget
    assert 0.9 <= saved["achieved_sparsity"] <= 0.9 + 1e-3 + 1 / 464_432
    for key in ("dense_top1", "pruned_top1", "top1"):
        assert 0.0 <= saved[key] <= 100.0
    for key in ("profile_seconds", "solve_seconds", "predicted_distortion"):
        assert key in saved
    assert saved["protocol"]["protocol"] == "none"  # digits: no official recipe to compare with

    layers = pd.read_csv(out / "layers.csv")
    assert list(layers.columns[:7]) == ["name", "type", "shape", "weights", "kept", "sparsity",
                                        "dense_macs"]
    assert len(layers) == 34 and layers.weights.sum() == 464_432
    assert layers.kept.sum() == saved["kept_weights"]
    macs = layers.dense_macs
    expected_flops = (macs * (1 - layers.sparsity)).sum() / macs.sum()  # a fraction, as sparsity
    assert saved["flops_kept"] == pytest.approx(expected_flops)
    assert (out / "config.yaml").exists() and (out / "rd_curves.npz").exists()

    # the saved model loads into the unpruned architecture and matches the saved masks
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(out / "model.pt"))
    masks = load(out / "masks.pt")
    prunable = find_prunable(model, torch.zeros(1, 3, 8, 8))
    assert list(masks) == list(prunable)
    for name, module in prunable.items():
        assert not module.weight[~masks[name]].any(), name
    assert saved["kept_weights"] == sum(int(m.sum()) for m in masks.values())


@pytest.mark.slow
def test_admm_then_hard_prune_then_retrain(tiny_config, tmp_path):
    cfg = tiny_config("model=lenet5", "dataset.image_size=16", "dataset.channels=1",
                      "method=erk", "sparsity=0.9", "finetune=admm", "recipe.finetune_steps=3",
                      "recipe.batch_size=32", "finetune.admm.iters=3",
                      "finetune.admm.steps_per_iter=2")
    metrics = run(cfg)
    out = tmp_path / "out"
    admm = pd.read_csv(out / "admm.csv")
    assert list(admm["iter"]) == [1, 2, 3] and admm.primal_residual.notna().all()
    layers = pd.read_csv(out / "layers.csv")
    from rdprune.pruning.masks import num_pruned

    removed = int((layers.weights - layers.kept).sum())  # hard-pruned to exactly ERK's counts
    assert abs(removed - num_pruned(int(layers.weights.sum()), 0.9)) <= len(layers)
    masks = load(out / "masks.pt")
    assert [int(m.sum()) for m in masks.values()] == list(layers.kept)
    assert metrics["seconds"]["admm"] > 0


@pytest.mark.slow
def test_a_flops_target_is_met_in_macs(tiny_config, tmp_path):
    """flops_kept=0.3: the conv/linear MACs kept are at most 30% of the dense ones (the DP's
    MACs budget is never exceeded) and short of it by less than one weight's MACs."""
    metrics = run(tiny_config("method=ours", "rd.grid_points=11", "flops_kept=0.3"))
    layers = pd.read_csv(tmp_path / "out" / "layers.csv")
    kept = (layers.dense_macs * (1 - layers.sparsity)).sum() / layers.dense_macs.sum()
    assert metrics["flops_kept"] == pytest.approx(kept)
    # the unused budget is given back: short of 30% by less than the MACs of one weight
    one_weight = (layers.dense_macs // layers.weights).max() / layers.dense_macs.sum()
    assert 0.3 - one_weight <= metrics["flops_kept"] <= 0.3
    assert metrics["target_flops_kept"] == 0.3 and metrics["target_sparsity"] is None
    assert metrics["budget_type"] == "flops"


def test_admm_with_iterative_schedule_is_refused(tiny_config):
    from rdprune.errors import UserError

    with pytest.raises(UserError, match="oneshot"):
        run(tiny_config("finetune=admm", "schedule=iterative", "method=lamp"))


@pytest.mark.parametrize("grid_points", [5, 101])
def test_ours_meets_the_target_to_the_weight_on_any_grid(tiny_config, tmp_path, grid_points):
    """The DP picks grid points within rd.tol under the budget; the budget it leaves unused is
    given back to the steepest curves, so the target count is removed exactly."""
    from rdprune.pruning.masks import num_pruned

    metrics = run(tiny_config("method=ours", f"rd.grid_points={grid_points}", "sparsity=0.7",
                              "recipe.finetune_steps=0"))
    layers = pd.read_csv(tmp_path / "out" / "layers.csv")
    total = int(layers.weights.sum())
    assert total - int(layers.kept.sum()) == num_pruned(total, 0.7)
    assert metrics["achieved_sparsity"] == pytest.approx(num_pruned(total, 0.7) / total)
