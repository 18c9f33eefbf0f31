"""Resumable RD profiling: every layer's curve is stored as soon as it is measured, a stop signal
ends profiling after the layer in flight, a rerun measures only the missing layers, shards split
the layers by cost, and the curves equal a single uninterrupted job's bitwise."""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from rdprune.cache import ReadOnlyCacheError
from rdprune.pruning.layers import find_prunable
from rdprune.methods.problem import Problem
from rdprune.tasks import task_of
from rdprune.methods.rd.rate_distortion import RateDistortion
from rdprune.methods.rd.profiling import store as store_module
from rdprune.methods.rd.profiling.store import CurveStore, shard_layers


class Requeued(Exception):
    """Stands for submitit's handler, which requeues the job and exits."""


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


L = 4


def problem(cache_dir) -> Problem:
    model = Net().eval()
    x = torch.randn(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    layers = find_prunable(model, x[:1])
    return Problem(model=model, layers=layers, target=0.5, budget="params", pruned=[0] * L,
                   macs=None, calibration=x, task=task_of(model), cache_dir=cache_dir,
                   progress=False)


METHOD = RateDistortion(grid_points=11, reduction="worst")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    done, grid, measured = METHOD.curves(problem(tmp_path_factory.mktemp("ref")))
    assert measured == L
    return done["curves"]


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def signal_at(monkeypatch, layer: int, signum: int) -> None:
    """Send ``signum`` to this process while layer ``layer``'s row is being stored."""
    put = CurveStore.put

    def put_and_signal(self, li, row, seconds):
        if li == layer:
            os.kill(os.getpid(), signum)
        put(self, li, row, seconds)

    monkeypatch.setattr(CurveStore, "put", put_and_signal)


def stored(cache_dir) -> int:
    return len(list((cache_dir / "curves").glob("*/*.pt")))


def test_sigusr2_stops_after_the_layer_in_flight_and_the_rerun_measures_the_rest(
        tmp_path, reference, handlers, monkeypatch):
    def requeue(signum, frame):
        raise Requeued

    signal.signal(signal.SIGUSR2, requeue)
    signal_at(monkeypatch, 1, signal.SIGUSR2)
    with pytest.raises(Requeued):
        METHOD.curves(problem(tmp_path))
    assert stored(tmp_path) == 2  # layers 0 and 1: the one in flight was finished and stored
    monkeypatch.undo()
    done, _, measured = METHOD.curves(problem(tmp_path))
    assert measured == L - 2
    assert np.array_equal(done["curves"], reference)
    assert stored(tmp_path) == 0 and len(list((tmp_path / "curves").glob("*.pt"))) == 1
    assert METHOD.curves(problem(tmp_path))[2] == 0  # assembled: nothing measured again


def test_ctrl_c_is_a_keyboard_interrupt_after_the_layer_in_flight(
        tmp_path, reference, handlers, monkeypatch):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal_at(monkeypatch, 0, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        METHOD.curves(problem(tmp_path))
    assert stored(tmp_path) == 1
    monkeypatch.undo()
    done, _, measured = METHOD.curves(problem(tmp_path))
    assert measured == L - 1 and np.array_equal(done["curves"], reference)


def test_shards_split_the_layers_and_the_last_assembles_bitwise(tmp_path, reference):
    measured = []
    for k in range(3):
        done, _, n = METHOD.curves(problem(tmp_path), shards=3, shard=k)
        measured.append(n)
        assert (done is not None) == (k == 2)  # complete once every shard is done
    assert sum(measured) == L and all(n >= 1 for n in measured)
    assert np.array_equal(done["curves"], reference)
    assert METHOD.curves(problem(tmp_path))[2] == 0


def test_a_layer_another_process_holds_is_waited_for_not_measured_twice(tmp_path, reference,
                                                                         monkeypatch):
    """The other process holds layer 2's lock and stores its row while this one profiles."""
    p = problem(tmp_path)
    store = METHOD.curve_store(p)[0]
    other = contextlib.ExitStack()
    assert other.enter_context(store.claim(2))  # a second open file: a lock like another job's
    wait = CurveStore.wait

    def other_finishes(self, li):
        if li == 2 and other._exit_callbacks:
            self.put(2, reference[2], 0.0)
            other.close()
        wait(self, li)

    monkeypatch.setattr(CurveStore, "wait", other_finishes)
    done, _, measured = METHOD.curves(p)
    assert measured == L - 1 and np.array_equal(done["curves"], reference)


def test_a_dead_holder_s_layer_is_measured_here(tmp_path, reference, monkeypatch):
    """The lock is released but no row was stored (the other job died): measured here."""
    p = problem(tmp_path)
    store = METHOD.curve_store(p)[0]
    other = contextlib.ExitStack()
    assert other.enter_context(store.claim(3))
    wait = CurveStore.wait

    def holder_dies(self, li):
        other.close()
        wait(self, li)

    monkeypatch.setattr(CurveStore, "wait", holder_dies)
    done, _, measured = METHOD.curves(p)
    assert measured == L and np.array_equal(done["curves"], reference)


def test_read_only_cache_without_the_curves_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr("rdprune.cache.writable", lambda d: False)
    with pytest.raises(ReadOnlyCacheError, match="read-only"):
        METHOD.curves(problem(tmp_path))


@pytest.mark.parametrize("costs, shards", [
    ([5, 1, 1, 1, 1, 1], 2), ([3, 3, 2, 2, 2], 2), (list(range(1, 35)), 3), ([1.0], 3)])
def test_shard_layers_partition_and_balance(costs, shards):
    parts = [shard_layers(costs, shards, k) for k in range(shards)]
    assert sorted(li for p in parts for li in p) == list(range(len(costs)))  # each layer once
    loads = [sum(costs[li] for li in p) for p in parts]
    # greedy by decreasing cost (LPT): no shard exceeds the lightest by more than one layer's cost
    assert max(loads) - min(loads) <= max(costs)
    assert parts == [shard_layers(costs, shards, k) for k in range(shards)]  # deterministic
    with pytest.raises(ValueError):
        shard_layers(costs, shards, shards)


def test_store_ignores_a_corrupted_row(tmp_path, reference):
    p = problem(tmp_path)
    store = METHOD.curve_store(p)[0]
    store.put(0, reference[0], 0.0)
    (store.folder / "1.pt").write_bytes(b"garbage")
    assert set(store.rows()) == {0}
    assert store_module.CurveStore(None, "k", 2).rows() == {}
