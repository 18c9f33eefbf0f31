"""Every cached stage recomputes when something it depends on changes, and only then."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_config

from rdprune.run.pipeline import run

BASE = [*TINY, "method=ours", "rd.grid_points=4", "dataset.calib_size=16",
        "recipe.dense_steps=10", "recipe.finetune_steps=2", "sparsity=0.5"]
STAGES = ("dense", "curves", "solve", "rounds")


def counts(cache) -> dict[str, int]:
    return {stage: len(list((cache / stage).glob("*.pt"))) for stage in STAGES}


# change -> stages that must recompute (all others must be reused)
CHANGES = {
    "dense.optimizer.lr=0.01": {"dense", "curves", "solve", "rounds"},   # weights change
    "seed=1": {"dense", "curves", "solve", "rounds"},
    "dataset.calib_size=12": {"curves", "solve", "rounds"},             # calibration subset
    "rd.grid_points=5": {"curves", "solve", "rounds"},
    "rd.reduction=mean": {"curves", "solve", "rounds"},
    "method=ours_zerodata": {"curves", "solve", "rounds"},              # zero-data
    "sparsity=0.6": {"solve", "rounds"},                                # curves reused
    "flops_kept=0.5": {"solve", "rounds"},                              # FLOPs budget
    "precision=bf16": {"dense", "curves", "solve", "rounds"},           # training precision
    "recipe.finetune_steps=3": {"rounds"},                              # recipe
    "recipe.finetune_schedule=cosine": {"rounds"},
    "finetune.optimizer.lr=0.01": {"rounds"},
}


@pytest.mark.slow
def test_each_input_change_recomputes_exactly_its_stages(tmp_path):
    cache = tmp_path / "cache"
    run(compose_config(BASE, tmp_path, out="base"))
    base = counts(cache)
    assert all(base[s] == 1 for s in STAGES), base
    run(compose_config(BASE, tmp_path, out="again"))
    assert counts(cache) == base, "an unchanged rerun recomputed something"
    for i, (change, expected) in enumerate(CHANGES.items()):
        before = counts(cache)
        run(compose_config([*BASE, change], tmp_path, out=f"change{i}"))
        after = counts(cache)
        recomputed = {s for s in STAGES if after[s] > before[s]}
        assert recomputed == expected, change
