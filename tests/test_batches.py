"""In-memory training batches: pixel for pixel the per-sample transforms under the same draws,
the same augmentation law as the per-sample path (chi-square tests), same order, exact resume,
DDP shares, and used by training whenever a dataset is held in memory."""

from __future__ import annotations

import dataclasses
import functools
import pickle

import numpy as np
import pytest
import torch
from conftest import dataset
from PIL import Image
from scipy import stats
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

import rdprune.data.splits
from rdprune.data.batches import ImageBatches, per_sample_batches, step_indices
from rdprune.data import CIFAR_MEAN, CIFAR_STD, cifar_splits
from rdprune.models import resnet32
from rdprune.training.train import fit

#: a correct implementation fails a statistical test below for at most this share of seeds
ALPHA = 1e-6


def fake_cifar(images: np.ndarray, labels: np.ndarray) -> CIFAR10:
    """torchvision's CIFAR10 (its own ``__getitem__``: PIL images) over arrays, without files."""
    ds = CIFAR10.__new__(CIFAR10)
    ds.data, ds.targets = images, labels.tolist()
    ds.transform = ds.target_transform = None
    return ds


def cifar_like(images: np.ndarray, augment: bool = True):
    labels = np.arange(len(images)) % 10
    return cifar_splits("cifar10", fake_cifar(images, labels), fake_cifar(images[:10], labels[:10]),
                        num_classes=10, calib_size=8, augment=augment, num_workers=0,
                        eval_batch_size=50)


@pytest.fixture(scope="module")
def noise():
    """CIFAR-shaped random images (uint8, N x 32 x 32 x 3, as torchvision holds them)."""
    return np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)


def reference(image, top: int, left: int, flip: bool, size: int, pad: int, after=None):
    """torchvision's per-sample RandomCrop(size, padding=pad) [+ flip] with the given draw."""
    crop = v2.RandomCrop(size, padding=pad)
    params = crop.make_params([image]) | {"top": top, "left": left}
    out = crop.transform(image, params)
    if flip:
        out = v2.RandomHorizontalFlip().transform(out, {})
    return after(out) if after else out


def test_cifar_batch_is_the_per_sample_transform_pixel_for_pixel(noise):
    data = cifar_like(noise)
    seed, step, size = 3, 5, 100
    (_, index), = step_indices(len(noise), size, seed, step, step + 1)
    draws = data.train_memory.draws(seed, step, size)
    top, left, flip = draws.T.tolist()
    # the draw covers both flips and both extreme offsets on each axis: every case is compared
    assert {0, 8} <= set(top) and {0, 8} <= set(left) and set(flip) == {0, 1}
    (x, y), = data.train_batches(size, seed, step, step + 1)
    normalize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"])])
    for k, i in enumerate(index.tolist()):
        want = reference(Image.fromarray(noise[i]), top[k], left[k], bool(flip[k]), 32, 4,
                         normalize)
        assert torch.equal(x[k], want), k
        assert y[k] == i % 10


def test_digits_shifts_are_the_per_sample_crop_pixel_for_pixel():
    data = dataset("digits", image_size=16, channels=3, calib_size=8)
    memory, pad = data.train_memory, 2  # max(1, 16 // 8)
    assert (memory.pad, memory.flip) == (pad, False)
    seed, step, size = 1, 4, 64
    (_, index), = step_indices(len(memory), size, seed, step, step + 1)
    top, left, flip = memory.draws(seed, step, size).T.tolist()
    assert set(flip) == {0} and {0, 2 * pad} <= set(top) & set(left)
    (x, _), = data.train_batches(size, seed, step, step + 1)
    for k, i in enumerate(index.tolist()):
        image = data.train_eval[i][0]
        assert torch.equal(x[k], reference(image, top[k], left[k], False, 16, pad)), k


def coordinates(n: int) -> np.ndarray:
    """Images whose channels 0 and 1 hold row + 1 and column + 1 (padding reads as 0)."""
    rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 200)], axis=-1).astype(np.uint8)
    return np.repeat(image[None], n, axis=0)


def decode(batches) -> np.ndarray:
    """Cell ``(top * 9 + left) * 2 + flip`` of every image of CIFAR-normalised ``coordinates``."""
    cells = []
    mean = torch.tensor(CIFAR_MEAN["cifar10"]).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD["cifar10"]).view(3, 1, 1)
    for x, _ in batches:
        v = ((x * std + mean) * 255).round().long()  # undo the normalisation
        # the centre pixel is inside the image for every offset: row = top - 4 + 16 (+1 coded)
        top = v[:, 0, 16, 16] - 13
        flip = (v[:, 1, 16, 17] < v[:, 1, 16, 16]).long()
        left = v[:, 1, 16, 16] - 13 + flip  # a flipped output column 16 is crop column 15
        assert ((0 <= top) & (top <= 8) & (0 <= left) & (left <= 8)).all()
        cells.append(((top * 9 + left) * 2 + flip).numpy())
    return np.concatenate(cells)


def test_augmentation_law_matches_the_per_sample_path():
    data = cifar_like(coordinates(1000))
    new = np.bincount(decode(data.train_batches(100, 0, 0, 300)), minlength=162)
    old = np.bincount(decode(per_sample_batches(data.train, 100, 0, 0, 150)), minlength=162)
    # offsets uniform on {0..8}^2, fair flips, all independent: 162 equally likely cells
    n = new.sum()
    assert stats.chisquare(new).pvalue > ALPHA
    flips = new[1::2].sum()
    assert abs(flips - n / 2) <= stats.norm.isf(ALPHA / 2) * np.sqrt(n) / 2
    # and the same law as torchvision's per-sample transforms (two-sample homogeneity)
    assert stats.chi2_contingency(np.stack([new, old])).pvalue > ALPHA
    assert stats.chisquare(old).pvalue > ALPHA


@pytest.mark.parametrize("make", [
    functools.partial(dataset, "synthetic", image_size=8, train_size=96, test_size=8,
                      calib_size=8),
    functools.partial(dataset, "digits", image_size=8, augment=False, calib_size=8),
])
def test_without_augmentation_both_paths_give_identical_batches(make):
    data = make()
    memory = list(data.train_batches(32, 2, 0, 7))
    loaded = list(per_sample_batches(data.train, 32, 2, 0, 7))
    for (x, y), (x0, y0) in zip(memory, loaded, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)  # same order, same images


def test_cifar_without_augmentation_both_paths_give_identical_batches(noise):
    data = cifar_like(noise, augment=False)
    memory = list(data.train_batches(50, 2, 3, 9))
    loaded = list(per_sample_batches(data.train, 50, 2, 3, 9))
    for (x, y), (x0, y0) in zip(memory, loaded, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_resume_and_shares_are_exact(noise):
    data = cifar_like(noise)
    full = list(data.train_batches(100, 9, 0, 8))
    for (x, y), (x0, y0) in zip(full[5:], data.train_batches(100, 9, 5, 8), strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    shares = [list(data.train_batches(100, 9, 0, 8, rank, 4)) for rank in range(4)]
    for step, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([s[step][0] for s in shares]), x)
        assert torch.equal(torch.cat([s[step][1] for s in shares]), y)
    assert not torch.equal(full[0][0], next(data.train_batches(100, 10, 0, 1))[0])


def test_training_uses_the_memory_path_and_file_datasets_the_loader(monkeypatch):
    data = dataset("synthetic", image_size=8, train_size=64, test_size=8, calib_size=8)
    calls = []

    def loader(*args, **kwargs):
        calls.append(args)
        yield from per_sample_batches(*args, **kwargs)

    monkeypatch.setattr(rdprune.data.splits, "per_sample_batches", loader)
    fit(resnet32(), data, steps=2, batch_size=16, progress=False,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    assert calls == []
    files = dataclasses.replace(data, train_memory=None)  # what ImageNet's Splits look like
    fit(resnet32(), files, steps=2, batch_size=16, progress=False,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    assert len(calls) == 1


def test_device_copies_are_made_once_and_not_pickled(noise):
    memory = cifar_like(noise).train_memory
    assert memory.to(None) is memory and memory.to("cpu") is memory
    meta = memory.to("meta")
    assert memory.to("meta") is meta
    x, y = meta.build(torch.arange(4), memory.draws(0, 0, 4))
    assert x.device.type == y.device.type == "meta" and x.shape == (4, 3, 32, 32)
    assert pickle.loads(pickle.dumps(memory))._copies == {}


def test_images_are_checked():
    with pytest.raises(ValueError, match="mean and std"):
        ImageBatches(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        ImageBatches(torch.zeros(2, 3, 4, 4), torch.zeros(3))
