"""The SLURM path: launcher config and job folder names everywhere; on a real scheduler (tests
marked ``slurm``, skipped unless ``sinfo`` answers: ``tests/slurm/local_cluster.sh start``) a sweep
as one job array, and a job that outlasts its time limit, is signalled, requeued and resumed to the
metrics of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, ROOT, TINY, compose_config
from hydra import compose, initialize_config_dir
from test_faults import results

from rdprune.run.spec import config_id
from rdprune.run.pipeline import run


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_slurm = pytest.mark.skipif(
    not _slurm_answers(),
    reason="no SLURM cluster answers (sinfo); start one: tests/slurm/local_cluster.sh start",
)
#: what a job may ask of a small test node (the defaults are a GPU node's)
SMALL_JOB = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]


def paths(tmp: Path) -> list[str]:
    """Absolute-path overrides (kept out of job folder names by override_dirname)."""
    return [f"paths.cache_dir={tmp / 'cache'}", f"paths.data_dir={tmp / 'data'}",
            f"paths.log_dir={tmp / 'logs'}", f"hydra.sweep.dir={tmp / 'sweep'}"]


def sweep(tmp: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python run.py -m <overrides>`` in ``tmp``; the caller checks the outcome."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *overrides, *paths(tmp)], cwd=tmp, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def job_folders(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "sweep").iterdir() if p.is_dir() and p.name[0] != ".")


# ---------------------------------------------------------------- everywhere


def launcher_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["launcher=slurm", *overrides],
                      return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize("overrides, gpus", [
    (["device=cpu"], 0),                     # a CPU-only cluster: no GPU asked for
    (["device=cpu", "devices=2"], 0),
    (["device=cuda"], 1),
    (["device=cuda:1"], 1),
    (["device=cuda", "devices=4"], 4),       # DDP: one GPU per process
    (["device=auto"], 1),
])
def test_gpus_per_node_follows_the_device(overrides, gpus):
    assert launcher_config(*overrides).gpus_per_node == gpus


def test_an_explicit_gpu_count_wins():
    assert launcher_config("device=cuda", "hydra.launcher.gpus_per_node=2").gpus_per_node == 2


def test_the_launcher_does_not_change_what_a_run_is(tmp_path):
    """A job run through SLURM is the same setting as the same run started locally: the keys
    ``launcher=slurm`` adds stay out of ``config_id`` (the report pairs and groups by it)."""
    local = compose_config(["experiment=quickstart", "device=cpu"], tmp_path)
    slurm = compose_config(["launcher=slurm", "experiment=quickstart", "device=cpu"], tmp_path)
    assert "slurm_gpus" in slurm and "slurm_gpus" not in local  # the configs do differ
    assert config_id(slurm) == config_id(local)


def test_job_folders_leave_out_path_overrides(tmp_path):
    """A local sweep with absolute-path overrides: folders named by the swept values only."""
    proc = sweep(tmp_path, *TINY, "method=uniform", "recipe.finetune_steps=0",
                 "sparsity=0.5,0.8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = job_folders(tmp_path)
    assert len(folders) == 2 and all((tmp_path / "sweep" / f / "metrics.json").exists()
                                     for f in folders)
    assert [f.endswith(f"sparsity={s}") for f, s in zip(folders, ("0.5", "0.8"))] == [True] * 2
    assert not [f for f in folders if "paths." in f or str(tmp_path) in f]


# ---------------------------------------------------------------- on a scheduler


@pytest.fixture
def cancel_leftover_jobs(tmp_path):
    """Cancels the jobs of a sweep on SLURM in ``tmp_path`` that a failed test left behind."""
    yield
    folder = tmp_path / "sweep" / ".submitit"
    ids = {p.name.split("_")[0] for p in folder.iterdir()} if folder.exists() else set()
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True)


def submitit_jobs(tmp: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs (``<array>_<task>``; one job: ``<id>``), from submitit's
    folders."""
    return sorted(p.name for p in (tmp / "sweep" / ".submitit").iterdir()
                  if p.is_dir() and any(p.glob("*_log.*")))  # not the array's script folder


@pytest.mark.slurm
@needs_slurm
@pytest.mark.usefixtures("cancel_leftover_jobs")
def test_sweep_is_one_array_and_reports_a_table(tmp_path):
    proc = sweep(tmp_path, "launcher=slurm", *SMALL_JOB, *TINY, "method=uniform,lamp",
                 "sparsity=0.5,0.8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = submitit_jobs(tmp_path)
    assert len(jobs) == 4 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one array
    (script,) = (tmp_path / "sweep" / ".submitit").glob("*/*submission.sh")
    assert "--gpus-per-node=0" in script.read_text()  # device=cpu: no GPU asked for
    folders = job_folders(tmp_path)
    assert len(folders) == 4 and not [f for f in folders if "paths." in f]
    assert all((tmp_path / "sweep" / f / "metrics.json").exists() for f in folders)

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "rdprune.report", str(tmp_path / "sweep"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with open(out / "baselines.csv") as f:
        cells = {(r["method"], float(r["target_sparsity"])) for r in csv.DictReader(f)
                 if r["metric"] == "top1" and r["mean"]}
    assert cells == {(m, s) for m in ("lamp", "uniform") for s in (50.0, 80.0)}
    assert "| Method | 50% | 80% |" in (out / "baselines.md").read_text()


@pytest.mark.slurm
@needs_slurm
@pytest.mark.usefixtures("cancel_leftover_jobs")
def test_quickstart_finishes_in_one_minute_windows(tmp_path, record_property):
    """The preemption issue's command: 1-minute limit, SIGUSR2 15 s before it, at most 10
    requeues, 2 cores: every stage (dense training, RD profiling, fine-tuning) resumes where the
    last attempt stopped, and the metrics equal an uninterrupted run's."""
    proc = sweep(tmp_path, "launcher=slurm", "hydra.launcher.gpus_per_node=0",
                 "hydra.launcher.cpus_per_task=2", "hydra.launcher.mem_gb=4", "device=cpu",
                 "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15",
                 "hydra.launcher.max_num_timeout=10", "experiment=quickstart", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (jid,) = submitit_jobs(tmp_path)
    info = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True)
    requeues = int(re.search(r"Restarts=(\d+)", info.stdout).group(1))
    log = (tmp_path / "sweep" / ".submitit" / jid / f"{jid}_0_log.out").read_text()
    stops = len(re.findall(r"RD profiling: stopped after layer", log))
    resumed = [int(s) for s in re.findall(r"dense training: resuming from step (\d+)", log)]
    record_property("requeues", requeues)
    print(f"\n{requeues} requeues, {stops} of them stopped RD profiling after a layer, dense "
          f"training resumed from steps {resumed}")
    # the job outlasted its first window (the quickstart takes about twice one on 2 cores), and
    # every attempt went on from where the previous one stopped: no stage started again
    assert requeues >= 1, log[-3000:]
    assert resumed == sorted(set(resumed)) and all(step > 0 for step in resumed), resumed
    # each layer's curve measured once over all attempts: stopped ones stored theirs
    stopped = re.findall(r"RD profiling: stopped after layer \d+ of 34 \((\d+) measured here", log)
    finished = re.findall(r"RD curves: (\d+) of 34 layers measured here", log)
    assert sum(map(int, stopped + finished)) == 34, (stopped, finished)
    (folder,) = job_folders(tmp_path)
    metrics = json.loads((tmp_path / "sweep" / folder / "metrics.json").read_text())
    # the uninterrupted run, afterwards, as the README starts it: a fresh process on the same
    # 2 cores with torch's default threads, as the job had them (this test process may have set
    # other thread counts, and float sums differ with the thread count)
    ref = tmp_path / "ref"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "experiment=quickstart", "device=cpu",
         f"paths.cache_dir={ref / 'cache'}", f"paths.data_dir={tmp_path / 'data'}",
         f"paths.log_dir={ref / 'logs'}", f"hydra.run.dir={ref / 'out'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads((ref / "out" / "metrics.json").read_text())
    assert results(metrics) == results(reference)


@pytest.mark.slurm
@needs_slurm
@pytest.mark.usefixtures("cancel_leftover_jobs")
def test_profiling_split_over_a_job_array_equals_one_job(tmp_path, caplog):
    """rd.shards=3 rd.shard=0,1,2 as one SLURM array: each task profiles its share of the
    layers into the shared cache; the run afterwards measures nothing and its curves equal a
    single job's bitwise."""
    base = [*TINY, "rd.grid_points=21", "recipe.finetune_steps=0"]
    proc = sweep(tmp_path, "launcher=slurm", *SMALL_JOB, *base, "rd.shards=3", "rd.shard=0,1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = submitit_jobs(tmp_path)
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one array
    shards = [json.loads((tmp_path / "sweep" / f / "shard.json").read_text())
              for f in job_folders(tmp_path)]
    assert sorted(s["shard"] for s in shards) == [0, 1, 2]
    assert sum(s["measured_layers"] for s in shards) == 34
    assert all(s["measured_layers"] >= 1 for s in shards)
    assert sum(s["complete"] for s in shards) == 1  # the last to finish assembled the set
    cfg = compose_config([*base, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path, out="main")
    with caplog.at_level(logging.INFO, logger="rdprune"):
        run(cfg)
    assert "RD curves loaded from cache" in caplog.text
    single = run(compose_config(base, tmp_path / "single"))
    assert single["rounds"][0]["profile_seconds"] > 0
    sharded = np.load(tmp_path / "main" / "rd_curves.npz")["curves"]
    alone = np.load(tmp_path / "single" / "out" / "rd_curves.npz")["curves"]
    assert np.array_equal(sharded, alone)
