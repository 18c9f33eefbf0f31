"""Schedules: iterative targets, per-round rows, monotone masks, re-profiling, resume by round."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY, compose_config
from test_faults import kill_when, results, start

from rdprune.errors import UserError
from rdprune.pruning.layers import find_prunable
from rdprune.run.pipeline import run
from rdprune.pruning.targets import iterative_targets, schedule_targets


def test_iterative_targets():
    t = iterative_targets(0.2, 20, 0.999)
    assert len(t) == 20 and t[-1] == pytest.approx(1 - 0.8**20)  # 98.85 %
    assert all(b > a for a, b in zip(t, t[1:]))
    assert iterative_targets(0.2, 20, 0.41) == pytest.approx([0.2, 0.36, 0.41])
    assert iterative_targets(0.6, 20, 0.893) == pytest.approx([0.6, 0.84, 0.893])
    assert schedule_targets({"name": "oneshot"}, 0.7) == [0.7]
    with pytest.raises(UserError):
        iterative_targets(1.0, 3, 0.5)
    with pytest.raises(UserError):
        schedule_targets({"name": "gradual"}, 0.5)


ITER = [*TINY, "schedule=iterative", "recipe.prune_amount=0.5", "recipe.rounds=5", "sparsity=0.8",
        "recipe.finetune_steps=4"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ours", "lamp", "erk", "uniform_plus"])
def test_iterative_rounds(tmp_path, method):
    extra = ["rd.grid_points=11", "method=ours_zerodata"] if method == "ours" else []
    metrics = run(compose_config([*ITER, f"method={method}", *extra], tmp_path))
    rows = pd.read_csv(tmp_path / "out" / "rounds.csv")
    assert list(rows["round"]) == [1, 2, 3]
    assert list(rows.target_sparsity) == pytest.approx([0.5, 0.75, 0.8])
    for achieved, target in zip(rows.achieved_sparsity, rows.target_sparsity):
        assert achieved >= target - 0.5 * 34 / 464_432
    for col in ("flops_kept", "pruned_top1", "top1", "finetune_seconds",
                "allocate_seconds"):
        assert rows[col].notna().all(), col
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert metrics["achieved_sparsity"] == rows.achieved_sparsity.iloc[-1]
    if method == "ours":  # re-profiled on the current model every round
        assert len(list((tmp_path / "cache" / "curves").glob("*.pt"))) == 3


@pytest.mark.slow
def test_pruned_weights_stay_pruned_across_rounds(tmp_path):
    cfg = compose_config([*ITER, "method=ours", "rd.grid_points=11"], tmp_path)
    run(cfg)
    from rdprune.cache import load

    rounds = sorted((tmp_path / "cache" / "rounds").glob("*.pt"),
                    key=lambda p: load(p).row["round"])
    assert [load(p).row["round"] for p in rounds] == [1, 2, 3]  # targets 0.5, 0.75, 0.8
    previous = None
    for path in rounds:
        masks = load(path).masks
        if previous is not None:
            for name, mask in masks.items():
                assert not (mask & ~previous[name]).any(), f"{name} un-pruned"
        previous = masks
    assert torch.is_tensor(previous["conv1"])


def test_the_allocation_itself_never_unprunes():
    """The DP respects `allowed` on its own (the pipeline's AND with the old masks would hide a
    solver that ignored it): a layer already pruned deep keeps at least its pruned count."""
    import numpy as np

    from rdprune.pruning.masks import num_pruned
    from rdprune.methods.problem import Problem
    from rdprune.tasks import task_of
    from rdprune.methods.rd.rate_distortion import RateDistortion
    from rdprune.models import resnet32

    torch.manual_seed(0)
    model = resnet32(num_classes=10).eval()
    calib = torch.randn(8, 3, 8, 8)
    layers = find_prunable(model, calib[:1])
    # the classifier and one conv "already lost" far more than an unconstrained DP gives them
    # (the weights stay dense, so only the constraint can keep the DP from choosing less)
    pruned = [0] * len(layers)
    for i, s in ((len(layers) - 1, 0.95), (5, 0.9)):
        pruned[i] = num_pruned(list(layers.values())[i].weight.numel(), s)
    method = RateDistortion(grid_points=21)
    problem = Problem(model=model, layers=layers, target=0.3, budget="params", pruned=pruned,
                      macs={k: 1 for k in layers}, calibration=calib, task=task_of(model),
                      progress=False)
    out = method.allocate(problem)
    counts = [num_pruned(m.weight.numel(), s) for m, s in zip(layers.values(), out.values())]
    assert all(c >= p for c, p in zip(counts, pruned)), (counts, pruned)
    # and the constraint binds: without it the DP prunes less there
    free = method.allocate(Problem(model=model, layers=layers, target=0.3, budget="params",
                                   pruned=[0] * len(layers), macs={k: 1 for k in layers},
                                   calibration=calib, task=task_of(model), progress=False))
    free_counts = [num_pruned(m.weight.numel(), s) for m, s in zip(layers.values(), free.values())]
    assert np.any(np.array(free_counts) < np.array(pruned))


@pytest.mark.slow
def test_killed_iterative_run_resumes_from_last_round(tmp_path):
    args = [*ITER, "method=lamp", "recipe.finetune_steps=30", "checkpoint_every=1000"]
    reference = results(run(compose_config(args, tmp_path / "ref")))
    cache, run_dir = tmp_path / "cache", tmp_path / "run"

    def in_round_three() -> bool:  # two rounds are cached, the third is on its way
        return len(list(cache.glob("rounds/*.pt"))) == 2

    kill_when(start(tmp_path, *args, run_dir=run_dir), in_round_three)
    proc = start(tmp_path, *args, run_dir=run_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("(cached)") == 2  # rounds 1 and 2 reused
    saved = results(json.loads((run_dir / "metrics.json").read_text()))
    assert saved == reference
    assert not math.isnan(saved["top1"])
