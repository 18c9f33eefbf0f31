"""Data-parallel fit (devices > 1) on CPU with gloo: same trajectory, same masks, errors surface.

Worker processes are started with ``spawn`` (a few seconds each on a loaded CPU), so the runs that
need them are shared through module fixtures.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle

import pytest
import torch
import torch.distributed as dist
from conftest import Dying, dataset
from torch import nn
from torch.multiprocessing.spawn import ProcessRaisedException

from rdprune import cache
from rdprune.training.distributed import (
    Rank,
    ReplicaMismatchError,
    _worker_error,
    compare_digests,
    resolve_devices,
)
from rdprune.errors import UserError
from rdprune.pruning.layers import find_prunable
from rdprune.pruning.masks import check_masks, magnitude_masks
from rdprune.training.train import TrainingDivergedError, fit

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-3)
SCHED = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=8)


class MLP(nn.Module):
    """No BatchNorm, no dropout: DDP over half-batches equals the full-batch step."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)
        self.spare = nn.Linear(4, 4)  # defined but never called (DDP must cope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get threads // devices, at least 1
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return dataset("synthetic", channels=1, image_size=4, train_size=64, test_size=32,
                   calib_size=16)


def pruned_mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP()
    layers = find_prunable(model, torch.zeros(1, 1, 4, 4))
    masks = magnitude_masks(layers, [0.5, 0.6])
    return model, layers, masks


def train(model, data, masks, **kw):
    args = dict(steps=8, batch_size=16, optimizer=SGD, scheduler=SCHED, masks=masks, seed=3,
                log_every=1, progress=False)
    return fit(model, data, **(args | kw))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same 8 masked SGD steps: single-process, and DDP (2 ranks) resumed both ways.

    The DDP run resumes from a single-process checkpoint of step 2 and writes its own at steps 4
    and 6; a single process then resumes from the DDP checkpoint of step 6 to the end.
    """
    ckpt = tmp_path_factory.mktemp("ddp") / "ft.partial.pt"
    ref, _, masks = pruned_mlp()
    ref_history = train(ref, data, masks)

    first, _, _ = pruned_mlp()
    with pytest.raises(KeyboardInterrupt):
        train(first, Dying(data, after=3), masks, checkpoint=ckpt, checkpoint_every=2)
    ddp, layers, _ = pruned_mlp(seed=1)  # another init: everything must come from the file
    ddp_history = train(ddp, data, masks, devices=2, checkpoint=ckpt, checkpoint_every=2)
    assert cache.load(ckpt)["step"] == 6  # written by rank 0
    last, _, _ = pruned_mlp(seed=2)
    last_history = train(last, data, masks, checkpoint=ckpt, checkpoint_every=2)
    return dict(ref=ref, ref_history=ref_history, ddp=ddp, ddp_history=ddp_history,
                last=last, last_history=last_history, layers=layers, masks=masks)


def assert_same_training(model_a, hist_a, model_b, hist_b):
    assert [h["step"] for h in hist_a] == [h["step"] for h in hist_b] == list(range(1, 9))
    for a, b in zip(hist_a, hist_b):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_follows_the_single_process_run(runs):
    assert_same_training(runs["ref"], runs["ref_history"], runs["ddp"], runs["ddp_history"])


def test_single_process_resumes_a_ddp_checkpoint(runs):
    assert_same_training(runs["ref"], runs["ref_history"], runs["last"], runs["last_history"])


def test_masks_hold_in_the_callers_model(runs):
    ddp, layers, masks = runs["ddp"], runs["layers"], runs["masks"]
    check_masks(layers, masks)
    fresh, _, _ = pruned_mlp(seed=1)
    for name, module in layers.items():
        assert not module.weight[~masks[name]].any(), name
        assert not torch.equal(module.weight, getattr(fresh, name).weight), name
    assert all(p.device.type == "cpu" for p in ddp.parameters())


def test_shards_partition_each_global_batch(data):
    whole = [x for x, _ in data.train_batches(16, 5, 2, 7)]
    shards = [[x for x, _ in data.train_batches(16, 5, 2, 7, rank, 4)] for rank in range(4)]
    for step, x in enumerate(whole):
        torch.testing.assert_close(torch.cat([s[step] for s in shards]), x, rtol=0, atol=0)
    second = [x for x, _ in Rank(1, 2, torch.device("cpu")).batches(data, 16, 5, 2, 7)]
    for x, own in zip(whole, second, strict=True):  # what a worker trains on
        torch.testing.assert_close(own, x[8:], rtol=0, atol=0)


def test_nan_in_the_workers_stops_all_with_the_step(data):
    model, _, masks = pruned_mlp()
    with pytest.raises(TrainingDivergedError, match=r"at step \d+") as info:
        train(model, data, masks, optimizer=functools.partial(torch.optim.SGD, lr=1e30),
              steps=50, devices=2, precision="bf16")
    assert "training worker" in "".join(getattr(info.value, "__notes__", []))
    assert multiprocessing.active_children() == []  # no worker left behind


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=15), "not divisible by devices=2"),
    (dict(optimizer=lambda params: torch.optim.SGD(params, lr=0.1)), "cannot be pickled"),
    (dict(precision="16"), "precision must be 32 or bf16"),
])
def test_bad_requests_fail_before_starting_workers(data, kw, match):
    model, _, masks = pruned_mlp()
    with pytest.raises(UserError, match=match):
        train(model, data, masks, devices=2, **kw)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("devices", [0, -1, "two", 1.5, True])
def test_devices_must_be_a_positive_integer(devices):
    with pytest.raises(UserError, match="devices must be"):
        resolve_devices(devices, "cpu")


def test_devices_auto_and_one():
    assert resolve_devices("auto", "cpu") == 1
    assert resolve_devices("3", "cpu") == 3
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="GPU"):
            resolve_devices(2, "cuda")


def test_digest_mismatch_is_an_error():
    compare_digests(["a", "a", "a"], "masks")
    with pytest.raises(ReplicaMismatchError, match=r"rank\(s\) \[2\]"):
        compare_digests(["a", "a", "b"], "masks")


def test_worker_exception_keeps_type_and_message(tmp_path):
    (tmp_path / "error-1.pkl").write_bytes(pickle.dumps(ValueError("bad shape")))
    error = _worker_error(ProcessRaisedException("trace", 1, 123), tmp_path, 2)
    assert isinstance(error, ValueError) and str(error) == "bad shape"
    assert "training worker 1 of 2" in error.__notes__[0]
    generic = _worker_error(ProcessRaisedException("\n\ntrace\nmore", 0, 123), tmp_path, 2)
    assert isinstance(generic, RuntimeError) and "training worker 0 of 2 failed" in str(generic)
