"""``run.py`` as users call it: a multirun sweep, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY


def run_py(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RDPRUNE_CACHE_DIR": str(tmp_path / "cache"),
           "RDPRUNE_LOG_DIR": str(tmp_path / "logs"), "RDPRUNE_DATA_DIR": str(tmp_path / "data"),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_multirun_runs_four_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", *TINY, "model=resnet32", "method=lamp,global_magnitude",
                  "sparsity=0.5,0.9", f"hydra.sweep.dir={sweep}", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(sweep.glob("*/metrics.json"))
    assert len(found) == 4
    combos = {(m["method"], m["target_sparsity"]) for m in map(json.loads,
                                                                (p.read_text() for p in found))}
    assert combos == {(m, s) for m in ("lamp", "global_magnitude") for s in (0.5, 0.9)}
    # the dense model was trained once and reused by the other three jobs
    assert len(list((tmp_path / "cache" / "dense").glob("*.pt"))) == 1


@pytest.mark.parametrize("override,needle", [
    ("sparsity=1.5", "sparsity must be in [0, 1)"),
    ("dataset=cifar10 dataset.image_size=32", "not found"),  # (TINY sets digits' 8)
])
def test_bad_input_is_one_line_nonzero_exit(tmp_path, override, needle):
    proc = run_py(*TINY, *override.split(), tmp_path=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()
    assert not list((tmp_path / "logs").rglob("metrics.json"))
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_failed_sweep_job_leaves_a_marker_and_the_others_go_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", *TINY, "method=lamp", "sparsity=1.5,0.5", f"hydra.sweep.dir={sweep}",
                  tmp_path=tmp_path)
    assert proc.returncode != 0  # the sweep reports its failure ...
    ok = [p.parent.name for p in sweep.glob("*/metrics.json")]
    failed = [p.parent.name for p in sweep.glob("*/FAILED")]
    assert len(ok) == 1 and ok[0].endswith("sparsity=0.5")  # ... after the other job finished
    assert len(failed) == 1 and failed[0].endswith("sparsity=1.5")
    marker = (sweep / failed[0] / "FAILED").read_text()
    assert "sparsity must be in [0, 1)" in marker and marker.count("\n") == 1


def test_slurm_launcher_composes_with_its_documented_keys():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb",
                "array_parallelism", "setup"):
        assert key in launcher, key
    assert launcher.partition == "gpu"
