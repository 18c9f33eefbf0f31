"""Datasets: digits works offline with a fixed split; calibration is fixed and un-augmented;
training batches are a pure function of (seed, step); every key of a dataset config is a
parameter of its factory, which has no defaults of its own."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from conftest import CONF, dataset
from omegaconf import OmegaConf

import rdprune.data
from rdprune.data.batches import step_indices
from rdprune.errors import UserError


@pytest.fixture(scope="module")
def dig():
    return dataset("digits", image_size=16, channels=3, calib_size=64)


def test_digits_split_is_fixed_and_stratified(dig):
    assert len(dig.train) + len(dig.test) == 1797
    assert (len(dig.train), len(dig.test)) == (1437, 360)
    assert dig.input_shape == (3, 16, 16)
    labels = torch.tensor([dig.test[i][1] for i in range(len(dig.test))])
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    again = dataset("digits", image_size=16, channels=3, calib_size=64)
    assert torch.equal(again.test.x, dig.test.x)


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3)])
def test_digits_resolution_and_channels(size, channels):
    d = dataset("digits", image_size=size, channels=channels)
    x, _ = d.train_eval[0]
    assert x.shape == (channels, size, size)
    assert torch.equal(x[0], x[-1])  # grey repeated


def test_calibration_is_evenly_strided_and_unaugmented(dig):
    idx = dig.calibration_indices()
    assert len(idx) == 64 and len(set(idx)) == 64
    assert idx == [i * len(dig.train_eval) // 64 for i in range(64)]
    first, second = dig.calibration(), dig.calibration()
    assert torch.equal(first, second)  # no augmentation noise: same images every time
    assert torch.equal(first[1], dig.train_eval.x[idx[1]])


def test_calibration_size_checked(dig):
    dig.calibration()  # a loaded calibration set is not carried over to other Splits
    too_many = dataclasses.replace(dig, calib_size=5000)
    with pytest.raises(UserError, match="calibration size 5000"):
        too_many.calibration()
    assert len(dataclasses.replace(dig, calib_size=8).calibration()) == 8


def test_batches_depend_only_on_seed_and_step(dig):
    full = [x for x, _ in dig.train_batches(100, seed=7, start=0, stop=20)]
    tail = [x for x, _ in dig.train_batches(100, seed=7, start=13, stop=20)]
    for a, b in zip(full[13:], tail):
        assert torch.equal(a, b)
    other = [x for x, _ in dig.train_batches(100, seed=8, start=0, stop=1)]
    assert not torch.equal(full[0], other[0])


def two_epochs(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training sample as two epochs' batches give it (two augmentation draws), in the
    order of the training split."""
    n = len(data.train)
    (x0, _), (x1, _) = data.train_batches(n, seed=7, start=0, stop=2)
    (_, i0), (_, i1) = step_indices(n, n, 7, 0, 2)
    return x0[i0.argsort()], x1[i1.argsort()]


def test_augmentation_draws_differ_for_the_same_sample(dig):
    first, second = two_epochs(dig)
    differs = (first != second).flatten(1).any(1)
    assert differs.float().mean() > 0.8  # 2-pixel shifts: 24 of 25 draws move the image
    plain = dataset("digits", image_size=16, channels=3, augment=False)
    first, second = two_epochs(plain)
    assert torch.equal(first, second)  # the same sample is the same image without augmentation
    assert torch.equal(first, plain.train_eval.x)


def test_synthetic_any_shape_and_classes():
    s = dataset("synthetic", num_classes=3, channels=2, image_size=5, train_size=30, test_size=9)
    x, y = s.train[0]
    assert x.shape == (2, 5, 5) and 0 <= y < 3
    assert len(s.test) == 9 and s.num_classes == 3


@pytest.mark.parametrize("path", sorted((CONF / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_dataset_config_holds_exactly_its_factory_parameters(path):
    """The YAML is the one place with values: its factory takes every key, keyword-only,
    without a default and without **kwargs (a key it did not use would be silently dropped)."""
    node = OmegaConf.load(path)
    factory = getattr(rdprune.data, node._target_.rpartition(".")[2])
    assert node._target_ == f"rdprune.data.{factory.__name__}"
    params = inspect.signature(factory).parameters
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params.values())
    assert set(params) == set(node) - {"_target_"}


@pytest.mark.parametrize("name,key,value,allowed", [
    ("cifar10", "image_size", 64, "must be 32 .CIFAR images are not resized., got 64"),
    ("cifar100", "channels", 1, "must be 3 .CIFAR images are RGB., got 1"),
    ("cifar10", "name", "cifar11", "must be cifar10 or cifar100, got 'cifar11'"),
    ("imagenet", "channels", 1, "must be 3 .ImageNet images are RGB., got 1"),
    ("digits", "name", "mnist", "must be digits, got 'mnist'"),
    ("synthetic", "image_size", 0, "must be a positive integer, got 0"),
])
def test_keys_other_configs_read_are_checked_before_loading(tmp_path, name, key, value, allowed):
    where = {"root": str(tmp_path)} if name.startswith(("cifar", "imagenet")) else {}
    with pytest.raises(UserError, match=f"^dataset.{key} {allowed}$"):
        dataset(name, **where, **{key: value})  # (no data there: it is not loaded)


def test_the_package_keeps_its_public_names():
    from rdprune.data.splits import Splits

    assert rdprune.data.Splits is Splits
    for name in ("digits", "synthetic", "cifar", "cifar_splits", "imagenet", "step_seed"):
        assert inspect.isfunction(getattr(rdprune.data, name)), name
