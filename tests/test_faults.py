"""Faults: a job SIGKILLed during dense training, profiling or fine-tuning, then run again with
the same command, finishes, reuses what was completed, and ends with the metrics of an
uninterrupted run. Two jobs needing the same dense model compute it once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from rdprune.run.pipeline import run

FAULT = [*TINY, "method=ours", "rd.grid_points=21", "recipe.dense_steps=60",
         "recipe.finetune_steps=40", "checkpoint_every=10"]


def results(metrics: dict) -> dict:
    """Metrics without wall-clock timings (which differ between any two runs)."""
    if isinstance(metrics, dict):
        return {k: results(v) for k, v in metrics.items() if "seconds" not in k}
    if isinstance(metrics, list):
        return [results(v) for v in metrics]
    return metrics


def start(tmp_path: Path, *overrides: str, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "RDPRUNE_CACHE_DIR": str(tmp_path / "cache"), "OMP_WAIT_POLICY": "PASSIVE",
           "RDPRUNE_LOG_DIR": str(tmp_path / "logs"), "RDPRUNE_DATA_DIR": str(tmp_path / "data")}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the job ended before the fault could be injected"
        assert time.monotonic() < deadline, "the job never reached the stage"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_in_every_stage_then_rerun(tmp_path):
    reference = results(run(compose_config(FAULT, tmp_path / "ref")))

    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    stages = {
        "dense training": lambda: any(cache.glob("dense/*.partial.pt")),
        "profiling": lambda: any(cache.glob("curves/*/*.pt")),  # a layer's row is stored
        "fine-tuning": lambda: any(cache.glob("finetune/*.partial.pt")),
    }
    for stage, ready in stages.items():
        proc = start(tmp_path, *FAULT, run_dir=run_dir)
        kill_when(proc, ready)
        assert not (run_dir / "metrics.json").exists(), f"killed in {stage} yet finished"
        if stage == "profiling":  # the next attempt measures only the layers not stored
            stored = len(list(cache.glob("curves/*/*.pt")))
            assert 1 <= stored < 34
            layers_left = 34 - stored
    proc = start(tmp_path, *FAULT, run_dir=run_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    # the dense model and the curves were finished by earlier attempts: reused, not redone
    assert "dense model loaded from cache" in out and "RD curves loaded from cache" in out
    # (the attempt killed in fine-tuning measured the layers the profiling kill left)
    log = "\n".join(p.read_text() for p in run_dir.glob("*.log"))
    assert f"RD curves: {layers_left} of 34 layers measured here" in log, log[-3000:]
    assert "resuming from step" in out  # fine-tuning picked up its checkpoint
    assert results(json.loads((run_dir / "metrics.json").read_text())) == reference
    assert not list(cache.rglob("*.partial.pt")), "partial checkpoints are cleaned up"


@pytest.mark.slow
def test_two_jobs_needing_the_same_dense_model_train_it_once(tmp_path):
    args = [*TINY, "method=lamp", "recipe.dense_steps=80"]
    jobs = [start(tmp_path, *args, f"sparsity={s}", run_dir=tmp_path / f"run{s}")
            for s in (0.5, 0.8)]
    outs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outs
    assert sum("dense model trained" in out for out in outs) == 1
    assert sum("dense model loaded from cache" in out for out in outs) == 1
    assert len(list((tmp_path / "cache" / "dense").glob("*.pt"))) == 1


def test_same_seed_same_config_gives_identical_masks_and_metrics(tmp_path):
    from rdprune.cache import load

    args = [*TINY, "method=ours", "rd.grid_points=6"]
    first = run(compose_config(args, tmp_path / "a"))
    second = run(compose_config(args, tmp_path / "b"))  # separate caches: computed twice
    assert results(first) == results(second)
    ma, mb = load(tmp_path / "a" / "out" / "masks.pt"), load(tmp_path / "b" / "out" / "masks.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma) and list(ma) == list(mb)


def test_corrupted_cache_file_is_reported_and_recomputed(tmp_path, caplog):
    import logging

    args = [*TINY, "method=lamp"]
    reference = results(run(compose_config(args, tmp_path, out="first")))
    (dense,) = (tmp_path / "cache" / "dense").glob("*.pt")
    dense.write_bytes(dense.read_bytes()[:1000])  # truncated, as by a full disk
    for stale in (tmp_path / "cache" / "rounds").glob("*.pt"):
        stale.unlink()
    with caplog.at_level(logging.WARNING):
        again = results(run(compose_config(args, tmp_path, out="second")))
    warnings = [r.getMessage() for r in caplog.records if "corrupted cache file" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert again == reference  # retrained to the same weights, same results
