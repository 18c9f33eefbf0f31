"""Stop signals mid-stage: the checkpoint holds every step done, the signal is handed on after it,
and a resumed stage ends bitwise-identical to an uninterrupted one (fit, ADMM, DDP workers)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
import torch.distributed as dist
from conftest import ROOT, dataset
from torch import nn

from rdprune import cache
from rdprune.training.admm import admm_phase
from rdprune.pruning.layers import find_prunable
from rdprune.pruning.masks import magnitude_masks
from rdprune.training.preemption import Guard
from rdprune.training.train import fit

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-3)
SCHED = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=12)
STEPS = 12


class Requeued(Exception):
    """Stands for submitit's handler, which requeues the job and exits."""


class Signalling:
    """Splits whose training batches send ``signum`` to process ``pid`` (default: this one) while
    loading the batch of global step ``at`` (``times`` times), i.e. in the middle of a stage, then
    take ``pause`` seconds per batch (time for the signal to travel)."""

    def __init__(self, data, signum: int, at: int, pid: int | None = None, times: int = 1,
                 pause: float = 0.0) -> None:
        self.data, self.signum, self.at, self.pid = data, signum, at, pid
        self.times, self.pause = times, pause

    def __getattr__(self, name):
        if name == "data":  # while unpickling in a DDP worker: not set yet
            raise AttributeError(name)
        return getattr(self.data, name)

    def train_batches(self, batch_size, seed, start, stop, rank=0, world=1, device=None):
        batches = self.data.train_batches(batch_size, seed, start, stop, rank, world,
                                          device=device)
        for step, batch in enumerate(batches, start=start):
            if step == self.at and rank == 0:
                for _ in range(self.times):
                    os.kill(self.pid or os.getpid(), self.signum)
            if step > self.at:
                time.sleep(self.pause)
            yield batch


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(16, 32), nn.Dropout(0.2), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x.flatten(1)))))


@pytest.fixture(scope="module")
def data():
    return dataset("synthetic", channels=1, image_size=4, train_size=64, test_size=32,
                   calib_size=16)


@pytest.fixture
def handlers():
    """Restores the signal handlers a test replaces."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def model_and_masks(seed: int = 0):
    """A model initialised from ``seed`` and the masks of the one from seed 0."""
    torch.manual_seed(0)
    layers = find_prunable(MLP(), torch.zeros(1, 1, 4, 4))
    masks = magnitude_masks(layers, [0.5, 0.6])
    torch.manual_seed(seed)
    return MLP(), masks


def train(data, seed=0, **kw):
    """Masked SGD + cosine + dropout from a seeded init; returns the model and its history."""
    model, masks = model_and_masks(seed)
    args = dict(steps=STEPS, batch_size=16, optimizer=SGD, scheduler=SCHED, masks=masks, seed=3,
                log_every=5, checkpoint_every=1000, progress=False)
    return model, fit(model, data, **(args | kw))


def assert_same(model_a, hist_a, model_b, hist_b):
    assert hist_a == hist_b
    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.fixture(scope="module")
def reference(data):
    return train(data)


def saved_step(path) -> int:
    return cache.load(path)["step"]


def test_sigusr2_checkpoints_the_steps_done_then_requeues(data, reference, tmp_path, handlers):
    ckpt = tmp_path / "ft.partial.pt"
    seen = {}

    def submitit_like(signum, frame):
        seen["step"] = saved_step(ckpt)  # written before the handler runs
        raise Requeued

    signal.signal(signal.SIGUSR2, submitit_like)
    with pytest.raises(Requeued):
        train(Signalling(data, signal.SIGUSR2, at=6), checkpoint=ckpt)
    # the signal came while step 6's batch loaded: step 6 finished, nothing after it
    assert seen["step"] == saved_step(ckpt) == 7
    assert signal.getsignal(signal.SIGUSR2) is submitit_like  # the guard is gone
    resumed = train(data, seed=1, checkpoint=ckpt)  # other init: all from the file
    assert_same(*reference, *resumed)


def test_ctrl_c_checkpoints_before_keyboard_interrupt(data, reference, tmp_path, handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ckpt = tmp_path / "ft.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        train(Signalling(data, signal.SIGINT, at=3), checkpoint=ckpt)
    assert saved_step(ckpt) == 4
    assert_same(*reference, *train(data, seed=1, checkpoint=ckpt))


def test_ctrl_c_twice_interrupts_at_once(data, tmp_path, handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ckpt = tmp_path / "ft.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        train(Signalling(data, signal.SIGINT, at=3, times=2), checkpoint=ckpt)
    assert not ckpt.exists()  # no waiting for the step, no checkpoint


def test_a_handler_that_returns_leaves_a_checkpoint_after_every_step(data, reference, tmp_path,
                                                                    handlers, monkeypatch):
    """submitit only logs SIGTERM (the kill follows): training goes on, saving every step."""
    calls = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    ckpt = tmp_path / "ft.partial.pt"
    saves = []
    real_save = cache.save
    monkeypatch.setattr(cache, "save", lambda path, obj: (saves.append(obj["step"]),
                                                          real_save(path, obj)))
    finished = train(Signalling(data, signal.SIGTERM, at=8), checkpoint=ckpt)
    assert calls == [signal.SIGTERM]
    assert saves == [9, 10, 11, 12]
    assert_same(*reference, *finished)


def test_default_action_after_the_checkpoint(data, tmp_path):
    """Without a handler (plain python run.py), SIGTERM still ends the process, by SIGTERM."""
    ckpt = tmp_path / "ft.partial.pt"
    script = textwrap.dedent(f"""
        import signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_preemption import Signalling, train
        from conftest import dataset
        data = dataset("synthetic", channels=1, image_size=4, train_size=64, test_size=32,
                       calib_size=16)
        train(Signalling(data, signal.SIGTERM, at=5), checkpoint={str(ckpt)!r})
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout
    assert saved_step(ckpt) == 6


def test_guard_leaves_ignored_signals_and_other_threads_alone(handlers):
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with Guard():
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def in_thread():
        with Guard() as guard:
            out["installed"] = dict(guard.previous)

    out = {}
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert out["installed"] == {}


# ---------------------------------------------------------------- ADMM


def admm(data, ckpt, iters=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(32, 10))
    layers = {"1": model[1], "4": model[4]}
    history = admm_phase(model, data, layers, [0.8, 0.6], iters=iters, steps_per_iter=4, rho=0.2,
                         rho_growth=1.3, batch_size=16, optimizer=torch.optim.Adam, seed=3,
                         checkpoint=ckpt, progress=False)
    return model, history


def test_admm_stops_mid_iteration_and_resumes_bitwise(data, tmp_path, handlers):
    reference = admm(data, tmp_path / "reference.pt")

    def requeue(signum, frame):
        raise Requeued

    signal.signal(signal.SIGUSR2, requeue)
    ckpt = tmp_path / "admm.partial.pt"
    with pytest.raises(Requeued):
        admm(Signalling(data, signal.SIGUSR2, at=5), ckpt)  # in iteration 2 of 3
    state = cache.load(ckpt)
    assert (state["step"], state["iteration"]) == (6, 1)
    assert len(state["window"]["loss"]) == len(state["window"]["penalty"]) == 2
    assert_same(*reference, *admm(data, ckpt))
    a, b = cache.load(tmp_path / "reference.pt"), cache.load(ckpt)
    for part in ("z", "u"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


# ---------------------------------------------------------------- DDP


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_ddp_workers_stop_together_rank0_saves(data, tmp_path, handlers):
    """A worker signals the parent (as a scheduler would): the parent forwards the signal, every
    rank stops after the same step, rank 0 saves, and the parent hands the signal on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_model, ref_hist = train(data, devices=2)

        def requeue(signum, frame):
            raise Requeued

        signal.signal(signal.SIGUSR2, requeue)
        ckpt = tmp_path / "ft.partial.pt"
        with pytest.raises(Requeued):
            train(Signalling(data, signal.SIGUSR2, at=2, pid=os.getpid(), pause=0.3),
                  devices=2, checkpoint=ckpt)
        step = saved_step(ckpt)
        assert 3 <= step < STEPS  # after the signal, before the end: the forwarding takes time
        resumed = train(data, seed=1, devices=2, checkpoint=ckpt)
        assert_same(ref_model, ref_hist, *resumed)
    finally:
        torch.set_num_threads(threads)
