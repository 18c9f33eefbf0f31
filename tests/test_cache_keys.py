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


# --- the one key builder: every config key is read or ignored, with a reason, by every stage ---

def _all_configs(tmp_path):
    """The default config, every model and dataset group option, and every experiment."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [[]] + [[f"experiment={p.stem}"] for p in sorted((conf / "experiment").glob(
        "*.yaml"))] + [["model=hf_lm", "dataset=text"]] + [
        [f"method={p.stem}"] for p in sorted((conf / "method").glob("*.yaml"))] + [
        [f"finetune={p.stem}"] for p in sorted((conf / "finetune").glob("*.yaml"))] + [
        [f"dataset={p.stem}"] for p in sorted((conf / "dataset").glob("*.yaml"))]
    return [compose_config(o, tmp_path) for o in overrides]


def test_every_config_key_is_read_or_ignored_by_every_stage(tmp_path):
    """A key a stage neither reads nor ignores (with a reason) fails here: the guard against a
    key that changes a stage's result but is left out of its cache key."""
    from omegaconf import OmegaConf

    from rdprune.keys import STAGES, classify

    for cfg in _all_configs(tmp_path):
        node = OmegaConf.to_container(cfg, resolve=False)
        for stage in STAGES:
            found = classify(node, stage)
            assert not found["unclassified"], (stage, found["unclassified"])
            assert not found["both"], (stage, found["both"])


def test_a_read_key_changes_the_stage_key_and_an_ignored_one_does_not(tmp_path):
    from rdprune.keys import key, select

    base = compose_config(["model=hf_lm", "dataset=text"], tmp_path)

    def stage_key(cfg, stage):
        return key(stage, select(cfg, stage))

    cases = {  # change -> stages whose key must change
        "prune.criterion=wanda": {"round"}, "prune.sequential=false": {"round"},
        "method=owl": {"round"}, "rd.grid_points=11": {"round"}, "seed=1": {"dense", "round"},
        "dataset.calib_size=8": {"round"}, "dataset.eval_tokens=4096": {"eval", "round"}, "dataset.seq_len=64": {"dense", "eval",
                                                                          "round"},
        "recipe.dense_steps=5": {"dense"}, "dense.optimizer.lr=0.1": {"dense"},
        "model.dtype=bfloat16": {"round"}, "threads=1": set(), "rd.shards=2": set(),
        "name=other": set(), "dataset.eval_batch_size=7": set(),
    }
    for change, expected in cases.items():
        other = compose_config(["model=hf_lm", "dataset=text", change], tmp_path)
        changed = {s for s in ("dense", "eval", "round")
                   if stage_key(base, s) != stage_key(other, s)}
        assert changed == expected, change
