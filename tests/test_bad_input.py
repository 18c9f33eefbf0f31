"""Every bad input of docs/errors.md's table is one line, before any stage, whatever the cache holds.

Each case runs against a *warm* cache (a finished run with the same settings otherwise), with the
expensive stages replaced by a tripwire: a cached stage can never hide a bad setting. Each case
also runs once through ``run.py`` as users call it (a fresh process: its own logging and warning
state): exit code 2 and one ``error:`` line, nothing printed before or after it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from rdprune.run import pipeline
from rdprune.errors import UserError
from rdprune.pruning.masks import num_pruned

BASE = [*TINY, "method=ours", "rd.grid_points=4"]

#: the image models (a language model, hf_lm, runs on dataset=text: tests/test_lm.py)
IMAGE_MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                      if not p.stem.startswith("hf_lm"))  # the language models: test_lm*


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A directory whose cache holds every stage of the BASE run."""
    root = tmp_path_factory.mktemp("warm")
    pipeline.run(compose_config(BASE, root, out="first"))
    return root


@pytest.fixture
def tripwire(monkeypatch):
    def boom(*_args, **_kwargs):
        raise AssertionError("an expensive stage started before the bad input was caught")

    monkeypatch.setattr(pipeline, "dense_stage", boom)
    monkeypatch.setattr(pipeline, "rounds_stage", boom)


def fails(warm: Path, *overrides: str, match: str) -> str:
    cache_files = sorted(p.name for p in (warm / "cache").rglob("*"))
    with pytest.raises(UserError, match=match) as info:
        pipeline.run(compose_config([*BASE, *overrides], warm, out="bad"))
    message = str(info.value)
    assert "\n" not in message
    assert sorted(p.name for p in (warm / "cache").rglob("*")) == cache_files
    return message


CASES = {
    "recipe.batch_size=0": "recipe.batch_size must be",
    "device=tpu": "device must be auto, cpu, cuda or cuda:N",
    "paths.cache_dir=/proc/forbidden": "cannot be created or written",
    "finetune.optimizer.lr=-1": "finetune.optimizer is invalid .*learning rate",
    "dense.optimizer.lr=-1": "dense.optimizer is invalid",
    "recipe.finetune_steps=-1": "recipe.finetune_steps must be",
    "recipe.dense_steps=2.5": "recipe.dense_steps must be an integer",
    "dataset.calib_size=0": "dataset.calib_size must be",
    "precision=fp16": "precision must be one of 32, bf16",
    f"devices={(os.cpu_count() or 1) + 1}": "cores",
    "finetune=admm devices=2": r"^finetune=admm runs its ADMM phase in one process, devices=2 is "
                               "not supported: use devices=1$",
    "recipe.finetune_schedule=linear": "recipe.finetune_schedule must be one of",
    "rd.reduction=median": "reduction",
    "checkpoint_every=0": "checkpoint_every must be",
    "rd.shards=2 rd.shard=5": r"^rd.shard must be in \[0, 1\] \(one of rd.shards=2 shards\), "
                              "got 5$",
    "model=hf_lm": r"^model hf_lm is a language model: it needs dataset=text, got dataset=digits$",
    "prune.criterion=snip": r"^prune.criterion must be one of magnitude, wanda, sparsegpt, got 'snip'$",
    "prune.criterion=wanda": r"^prune.criterion=wanda compares the weights of each output row of "
                             r"a linear layer; 33 of the 34 prunable layers are not linear "
                             r"\(conv1: Conv2d\): use prune.criterion=magnitude$",
    "flops_kept=0": "flops_kept must be in",
    "method=lamp flops_kept=0.5": "FLOPs target",
    "dense.checkpoint=/etc/passwd": "not a PyTorch state_dict",
    "model=vgg16 dataset.image_size=16": "vgg16 needs inputs of at least 32x32, got 16x16.*"
                                         "set dataset.image_size=32",
    "model=generic model.name=vit_tiny_patch16_224": "vit_tiny_patch16_224 needs inputs of e.g. "
                                                     "224x224, got 8x8.*AssertionError.*"
                                                     r"\+model.kwargs.img_size=8",
    # a key the dataset / model / method does not take, or a value of a key that models read
    "dataset=cifar10 dataset.image_size=64": r"^dataset.image_size must be 32 \(CIFAR images are "
                                             r"not resized\), got 64$",
    "+dataset.bogus=1": r"^dataset.bogus is not a setting of dataset digits \(rdprune.data.digits "
                        "takes name, image_size, channels, ",
    "+model.bogus=1": r"^model.bogus is not a setting of model resnet32 \(rdprune.models.resnet32 "
                      r"takes num_classes, in_channels, shortcut, weights\)$",
    "+method.bogus=1": r"^method.bogus is not a setting of method ours \(it takes no settings; "
                       r"the RD options are rd.\*\)$",
}


@pytest.fixture(scope="module")
def cli(warm, tmp_path_factory, request) -> dict[str, subprocess.CompletedProcess]:
    """The selected cases through ``python run.py`` against the warm cache, a few at a time
    (each process spends seconds importing): ``{case: finished process}``. The cache is
    unchanged."""
    logs = tmp_path_factory.mktemp("cli")
    before = sorted(str(p) for p in (warm / "cache").rglob("*"))
    selected = {item.callspec.params["override"] for item in request.session.items
                if item.originalname == "test_bad_input_on_a_warm_cache"}

    def call(item: tuple[int, str]) -> subprocess.CompletedProcess:
        i, override = item
        proc = run_py(*BASE, *override.split(), f"hydra.run.dir={logs / str(i)}", cwd=warm)
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        cases = [case for case in CASES if case in selected]
        done = dict(zip(cases, pool.map(call, enumerate(cases))))
    assert sorted(str(p) for p in (warm / "cache").rglob("*")) == before
    return done


@pytest.mark.parametrize("override", list(CASES))
def test_bad_input_on_a_warm_cache(warm, tripwire, cli, override):
    message = fails(warm, *override.split(), match=CASES[override])
    proc = cli[override]  # the same case through run.py: the same line, and nothing else
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")


def test_a_timm_vit_sized_to_the_data_sets_up(tmp_path):
    cfg = compose_config(["model=generic", "model.name=vit_tiny_patch16_224",
                          "+model.kwargs.img_size=32", "+model.kwargs.patch_size=8"], tmp_path)
    run = pipeline.setup(cfg)
    assert len(run.layers) == 1 + 12 * 4 + 1  # patch embedding, 4 Linear per block, head


def test_random_bytes_checkpoint(warm, tripwire):
    path = warm / "random.pt"
    path.write_bytes(os.urandom(4096))
    fails(warm, f"dense.checkpoint={path}", match="not a PyTorch state_dict")


def test_a_target_that_keeps_no_weight_names_the_largest_that_keeps_one(warm, tripwire):
    message = fails(warm, "sparsity=0.999999", match="removes all 464,432 prunable weights")
    largest = float(message.rsplit(" ", 1)[-1])
    assert largest == 1 - 1 / 464_432
    assert num_pruned(464_432, largest) == 464_431  # it does keep one weight


def test_a_huge_grid_warns_with_its_cost_instead_of_refusing(warm, caplog):
    with caplog.at_level(logging.WARNING):
        run = pipeline.setup(compose_config([*BASE, "rd.grid_points=100000"], warm, out="grid"))
    assert run.layers
    assert "rd.grid_points=100000" in caplog.text and "hours per round" in caplog.text


def test_a_method_sweep_sets_the_rd_options_of_the_methods_that_have_them(warm):
    """`-m method=ours,lamp rd.grid_points=11`: both jobs set up (lamp ignores rd.*)."""
    for method in ("ours", "lamp"):
        run = pipeline.setup(compose_config([*BASE, f"method={method}", "rd.grid_points=11"],
                                            warm, out=method))
        assert getattr(run.method, "grid_points", 11) == 11


def test_bf16_does_not_reuse_a_float32_result(warm):
    """The cache keys include the precision: bf16 trains its own dense model."""
    dense = len(list((warm / "cache" / "dense").glob("*.pt")))
    metrics = pipeline.run(compose_config([*BASE, "precision=bf16", "method=lamp"], warm,
                                          out="bf16"))
    assert len(list((warm / "cache" / "dense").glob("*.pt"))) == dense + 1
    assert metrics["precision"] == "bf16"


def run_py(*args: str, cwd: Path, prefix: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "RDPRUNE_CACHE_DIR": str(cwd / "cache"),
           "RDPRUNE_LOG_DIR": str(cwd / "logs"), "RDPRUNE_DATA_DIR": str(cwd / "data"),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([*prefix, sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_finished_run_directory_is_refused_and_left_untouched(tmp_path):
    done = tmp_path / "done"
    (done / ".hydra").mkdir(parents=True)
    (done / "metrics.json").write_text('{"top1": 90.0}\n')
    (done / ".hydra" / "overrides.yaml").write_text("- sparsity=0.9\n")
    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    proc = run_py(*TINY, f"hydra.run.dir={done}", "sparsity=1", cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert err.startswith("error: ") and "finished run" in err
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    args = [*TINY, "method=lamp", "recipe.dense_steps=100000", "checkpoint_every=1000000",
            f"hydra.run.dir={tmp_path / 'run'}"]
    # A shell starts background jobs with SIGINT ignored and the child inherits that (rdprune then
    # rightly ignores Ctrl-C); start it as a terminal would, with SIGINT not ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = run_py(*args, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline and not partial:  # interrupt once dense training is running
        time.sleep(0.5)
        partial = list((tmp_path / "cache").glob("dense/*.lock"))
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip() and "dense training" not in line]
    assert lines == ["interrupted: run the same command again to resume (finished stages are "
                     "cached, training continues from its last checkpoint)"], err[-2000:]
    assert "Traceback" not in err
    # the interrupted stage saved its progress at once
    saved = list((tmp_path / "cache" / "dense").glob("*.partial.pt"))
    assert len(saved) == 1
    from rdprune.cache import load

    assert load(saved[0])["step"] > 0


@pytest.mark.skipif(sys.platform != "linux", reason="drops a Linux capability when root")
def test_a_read_only_shared_cache_serves_every_result(tmp_path):
    """A lab-wide cache: files as readable as the umask allows, served to a process that cannot
    write there (its lock files included)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    args = [*TINY, "method=lamp", f"paths.cache_dir={shared / 'cache'}"]
    first = run_py(*args, f"hydra.run.dir={shared / 'owner'}", cwd=shared)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    files = [p for p in (shared / "cache").rglob("*") if p.is_file()]
    umask = os.umask(0)
    os.umask(umask)
    for p in files:  # readable as far as the umask allows (mkstemp alone would give 0600)
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
    reader = tmp_path / "reader"
    reader.mkdir()
    owner_metrics = json.loads((shared / "owner" / "metrics.json").read_text())
    for p in [shared / "cache", *(shared / "cache").rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"]
    try:
        second = run_py(*args, f"hydra.run.dir={reader / 'run'}", cwd=reader, prefix=prefix)
        _, err = second.communicate(timeout=600)
    finally:
        for p in [shared / "cache", *(shared / "cache").rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
    assert second.returncode == 0, err[-2000:]
    metrics = json.loads((reader / "run" / "metrics.json").read_text())
    assert metrics["top1"] == owner_metrics["top1"]
    assert sorted(p for p in (shared / "cache").rglob("*") if p.is_file()) == sorted(files)
    mine = torch.load(reader / "run" / "model.pt")
    theirs = torch.load(shared / "owner" / "model.pt")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_model_config_sets_up_on_the_offline_default(tmp_path, model):
    """`python run.py model=<any>` on the default digits: the image size and recipe adapt to
    the model (VGG's five max-pools need 32x32; ImageNet models train from scratch offline)."""
    cfg = compose_config([f"model={model}", "device=cpu"], tmp_path)
    assert cfg.dataset.name == "digits" and cfg.recipe.dense_steps <= 1000
    run = pipeline.setup(cfg)
    assert run.layers and cfg.model.get("weights") is None
    assert cfg.dataset.image_size == cfg.input_size
