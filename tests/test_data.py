"""Datasets: digits works offline with a fixed split; calibration is fixed and un-augmented;
training batches are a pure function of (seed, step)."""

from __future__ import annotations

import pytest
import torch

from rdprune.data import digits, synthetic
from rdprune.errors import UserError


@pytest.fixture(scope="module")
def dig():
    return digits(image_size=16, channels=3, calib_size=64)


def test_digits_split_is_fixed_and_stratified(dig):
    assert len(dig.train) + len(dig.test) == 1797
    assert (len(dig.train), len(dig.test)) == (1437, 360)
    assert dig.input_shape == (3, 16, 16)
    labels = torch.tensor([dig.test[i][1] for i in range(len(dig.test))])
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    again = digits(image_size=16, channels=3, calib_size=64)
    assert torch.equal(again.test.x, dig.test.x)


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3)])
def test_digits_resolution_and_channels(size, channels):
    d = digits(image_size=size, channels=channels)
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
    with pytest.raises(UserError, match="calibration size 5000"):
        dig.calibration_indices(5000)


def test_batches_depend_only_on_seed_and_step(dig):
    full = [x for x, _ in dig.train_batches(100, seed=7, start=0, stop=20)]
    tail = [x for x, _ in dig.train_batches(100, seed=7, start=13, stop=20)]
    for a, b in zip(full[13:], tail):
        assert torch.equal(a, b)
    other = [x for x, _ in dig.train_batches(100, seed=8, start=0, stop=1)]
    assert not torch.equal(full[0], other[0])
    # augmentation is on: the same image differs between epochs
    assert not torch.equal(full[0], full[14])


def test_synthetic_any_shape_and_classes():
    s = synthetic(num_classes=3, channels=2, image_size=5, train_size=30, test_size=9)
    x, y = s.train[0]
    assert x.shape == (2, 5, 5) and 0 <= y < 3
    assert len(s.test) == 9 and s.num_classes == 3
