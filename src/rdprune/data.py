"""Datasets: CIFAR-10/100, ImageNet folders, scikit-learn digits (offline), synthetic tensors.

Each factory returns :class:`Splits`: a training split with training augmentation, the same split
with *evaluation* transforms (the calibration set is drawn from it: no augmentation noise in the
curves), a test split, and loader settings. Factories are built by Hydra from ``conf/dataset/``.

Training batches are a pure function of ``(seed, step)``, so an interrupted run resumed at step
``t`` sees exactly the batches an uninterrupted run would (see :mod:`rdprune.batches`). Datasets
that fit in memory (digits, synthetic, CIFAR) also hold their training split as one tensor
(``Splits.train_memory``), and training batches are then built by batched tensor ops; file
datasets (ImageNet) go through a DataLoader with per-sample transforms.

The module is ~400 lines because the factories are Hydra targets (``rdprune.data.<name>``) and
share :class:`Splits` and its normalisation constants; how batches are built is in
:mod:`rdprune.batches`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from rdprune.batches import Batch, ImageBatches, mix, per_sample_batches
from rdprune.errors import UserError

log = logging.getLogger(__name__)

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.247, 0.243, 0.261), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Splits:
    """The data of one dataset.

    Attributes:
        name: dataset name.
        train: training split with training transforms (augmentation).
        train_eval: the same images with evaluation transforms (calibration is drawn from it).
        test: held-out split with evaluation transforms.
        num_classes: number of classes.
        input_shape: shape of one input, e.g. (3, 32, 32).
        calib_size: number of calibration images (evenly strided over ``train_eval``).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for evaluation and calibration forwards.
        train_memory: ``train`` held in memory as one tensor with the same augmentation, which
            then builds the training batches; None: ``train`` through a DataLoader.
    """

    name: str
    train: Dataset
    train_eval: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    calib_size: int
    num_workers: int = 0
    eval_batch_size: int = 256
    train_memory: ImageBatches | None = None
    _calibration: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def calibration_indices(self, size: int | None = None) -> list[int]:
        """Evenly strided indices into the training split: the same for every method and run."""
        size = self.calib_size if size is None else size
        n = len(self.train_eval)
        if not 0 < size <= n:
            raise UserError(
                f"calibration size {size} must be between 1 and the training split size {n}: "
                "set dataset.calib_size accordingly"
            )
        return [i * n // size for i in range(size)]

    def calibration(self, size: int | None = None) -> torch.Tensor:
        """The calibration inputs, stacked: ``[size, *input_shape]`` (evaluation transforms).

        Loaded once per size and kept (the same tensor for every round and method of a run).
        """
        idx = self.calibration_indices(size)
        if len(idx) not in self._calibration:
            loader = self.loader(torch.utils.data.Subset(self.train_eval, idx))
            self._calibration[len(idx)] = torch.cat([x for x, _ in loader])
        return self._calibration[len(idx)]

    def loader(self, dataset: Dataset, batch_size: int | None = None) -> DataLoader:
        """An ordered evaluation loader over ``dataset``."""
        return DataLoader(
            dataset,
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def train_batches(
        self, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1,
        device: torch.device | str | None = None,
    ) -> Iterator[Batch]:
        """Training batches for steps ``start .. stop-1`` (deterministic given ``seed``).

        With ``world`` data-parallel processes, process ``rank`` gets its contiguous equal share
        of every batch (and builds only those samples). With ``train_memory``, batches are built
        on ``device`` (the split is copied there once; None: the CPU), otherwise loaded on the
        CPU by ``num_workers`` DataLoader workers.
        """
        if len(self.train) < batch_size:
            raise UserError(
                f"batch size {batch_size} exceeds the training split ({len(self.train)} samples)"
            )
        if self.train_memory is not None:
            yield from self.train_memory.to(device).batches(
                batch_size, seed, start, stop, rank, world)
        else:
            yield from per_sample_batches(self.train, batch_size, seed, start, stop, rank, world,
                                          self.num_workers)


def step_seed(seed: int, step: int) -> int:
    """Seed of the model's own randomness (dropout, ...) at a training step."""
    return mix(seed, step, 1)


class TensorImages(Dataset):
    """In-memory images ``[N, C, H, W]`` with labels and an optional per-sample transform."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None
    ) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        return (self.transform(x) if self.transform else x), int(self.y[i])


class TransformedDataset(Dataset):
    """Applies ``transform`` to the images of a dataset that returns untransformed images."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return self.transform(x), y


def _check_classes(name: str, num_classes: int, expected: int) -> None:
    if num_classes != expected:
        raise UserError(f"dataset {name} has {expected} classes, config says {num_classes}")


def digits(
    *,
    image_size: int = 16,
    channels: int = 3,
    num_classes: int = 10,
    calib_size: int = 256,
    test_fraction: float = 0.2,
    augment: bool = True,
    split_seed: int = 0,
    num_workers: int = 0,
    eval_batch_size: int = 512,
    **_: object,
) -> Splits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images; works offline).

    Images are scaled to [0, 1], resized (bilinear) to ``image_size``, repeated to ``channels``,
    and normalised with the training split's mean and std. The train/test split is stratified
    and fixed by ``split_seed``. Training augmentation: random shifts (crop with padding).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_classes("digits", num_classes, 10)
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y.numpy(), random_state=split_seed
    )
    idx_train, idx_test = torch.as_tensor(np.sort(idx_train)), torch.as_tensor(np.sort(idx_test))
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    pad = max(1, image_size // 8)
    train_tf = v2.RandomCrop(image_size, padding=pad) if augment else None
    xt, yt = x[idx_train], y[idx_train]
    return Splits(
        name="digits",
        train=TensorImages(xt, yt, train_tf),
        train_eval=TensorImages(xt, yt),
        test=TensorImages(x[idx_test], y[idx_test]),
        num_classes=10,
        input_shape=(channels, image_size, image_size),
        calib_size=calib_size,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        train_memory=ImageBatches(xt, yt, pad=pad if augment else 0),
    )


def synthetic(
    *,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    train_size: int = 512,
    test_size: int = 256,
    noise: float = 1.0,
    calib_size: int = 128,
    data_seed: int = 0,
    num_workers: int = 0,
    eval_batch_size: int = 256,
    **_: object,
) -> Splits:
    """Random tensors of any shape and class count: a class prototype plus Gaussian noise.

    Learnable (so training and pruning behave like on real data) and fully determined by
    ``data_seed``. Meant for tests and smoke runs of configs whose real data is absent.
    """
    g = torch.Generator().manual_seed(data_seed)
    shape = (channels, image_size, image_size)
    protos = torch.randn(num_classes, *shape, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        return protos[y] + noise * torch.randn(n, *shape, generator=g), y

    xt, yt = make(train_size)
    xs, ys = make(test_size)
    return Splits(
        name="synthetic",
        train=TensorImages(xt, yt),
        train_eval=TensorImages(xt, yt),
        test=TensorImages(xs, ys),
        num_classes=num_classes,
        input_shape=shape,
        calib_size=calib_size,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        train_memory=ImageBatches(xt, yt),
    )


def cifar(
    *,
    name: str = "cifar10",
    root: str,
    download: bool = False,
    num_classes: int = 10,
    calib_size: int = 1024,
    augment: bool = True,
    num_workers: int = 4,
    eval_batch_size: int = 500,
    **_: object,
) -> Splits:
    """CIFAR-10 / CIFAR-100 through torchvision (random crop 32 pad 4 + flip for training)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    _check_classes(name, num_classes, 10 if name == "cifar10" else 100)
    root_path = Path(root).expanduser()
    folder = root_path / cls.base_folder
    if not download and not folder.is_dir():
        raise UserError(
            f"{name} not found at {folder}: set dataset.download=true to fetch it, or point "
            "RDPRUNE_DATA_DIR (paths.data_dir) at a directory that holds it"
        )
    try:
        train_raw = cls(str(root_path), train=True, download=download)
        test_raw = cls(str(root_path), train=False, download=download)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise UserError(
            f"could not load {name} from {root_path} ({type(e).__name__}: {e}); download it on a "
            "machine with internet into that directory, or fix RDPRUNE_DATA_DIR"
        ) from e
    return cifar_splits(name, train_raw, test_raw, num_classes=num_classes, calib_size=calib_size,
                        augment=augment, num_workers=num_workers, eval_batch_size=eval_batch_size)


def cifar_splits(
    name: str,
    train_raw: Dataset,
    test_raw: Dataset,
    *,
    num_classes: int,
    calib_size: int,
    augment: bool,
    num_workers: int,
    eval_batch_size: int,
) -> Splits:
    """:class:`Splits` of loaded torchvision CIFAR datasets (what :func:`cifar` returns).

    The training images are also held as one uint8 tensor (``train_raw.data``, 50,000 x 3 x 32
    x 32: 150 MB), from which training batches are built with the same augmentation.

    Args:
        name: "cifar10" or "cifar100" (selects the normalisation).
        train_raw: the training split: ``(PIL image, label)`` items, ``.data`` (uint8 ``[N, 32,
            32, 3]``) and ``.targets``, as torchvision's CIFAR10/CIFAR100.
        test_raw: the test split, likewise.
        num_classes: number of classes.
        calib_size: number of calibration images.
        augment: random crop 32 with padding 4 + horizontal flip for training.
        num_workers: DataLoader workers (evaluation, calibration).
        eval_batch_size: batch size of evaluation forwards.
    """
    mean, std = CIFAR_MEAN[name], CIFAR_STD[name]
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    eval_tf = v2.Compose(normalize)
    train_tf = v2.Compose(
        ([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []) + normalize
    )
    images = torch.from_numpy(np.asarray(train_raw.data)).permute(0, 3, 1, 2)
    memory = ImageBatches(images, torch.as_tensor(train_raw.targets), pad=4 if augment else 0,
                          flip=augment, mean=mean, std=std)
    return Splits(
        name=name,
        train=TransformedDataset(train_raw, train_tf),
        train_eval=TransformedDataset(train_raw, eval_tf),
        test=TransformedDataset(test_raw, eval_tf),
        num_classes=num_classes,
        input_shape=(3, 32, 32),
        calib_size=calib_size,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        train_memory=memory,
    )


#: ImageNet training transforms of ``dataset.train_transform``
TRAIN_TRANSFORMS = ("official", "standard")


def imagenet(
    *,
    root: str,
    num_classes: int = 1000,
    image_size: int = 224,
    resize: int = 256,
    interpolation: str = "bicubic",
    train_transform: str = "official",
    calib_size: int = 256,
    num_workers: int = 8,
    eval_batch_size: int = 250,
    **_: object,
) -> Splits:
    """ImageNet as ``root/train`` and ``root/val`` class folders.

    Evaluation and calibration: resize the shorter side to ``resize`` + centre crop
    ``image_size``. Training: ``"official"`` is that same deterministic transform (the official
    pipeline fine-tunes on it; only the order of the images is shuffled), ``"standard"`` is
    RandomResizedCrop ``image_size`` + horizontal flip. ``interpolation`` ("bicubic", as the
    official pipeline, or "bilinear") applies to every resize.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import InterpolationMode

    if train_transform not in TRAIN_TRANSFORMS:
        raise UserError(f"dataset.train_transform must be one of {', '.join(TRAIN_TRANSFORMS)}, "
                        f"got {train_transform!r}")
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    if interpolation not in modes:
        raise UserError(f"dataset.interpolation must be bicubic or bilinear, got {interpolation!r}")
    mode = modes[interpolation]
    root_path = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root_path / split).is_dir():
            raise UserError(
                f"ImageNet {split} folder not found at {root_path / split}: point "
                "RDPRUNE_DATA_DIR (paths.data_dir) or dataset.root at a directory with "
                "train/ and val/ class folders"
            )
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                 v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_tf = v2.Compose([v2.Resize(resize, interpolation=mode), v2.CenterCrop(image_size),
                          *normalize])
    train_tf = eval_tf if train_transform == "official" else v2.Compose(
        [v2.RandomResizedCrop(image_size, interpolation=mode), v2.RandomHorizontalFlip(),
         *normalize])
    train_raw = ImageFolder(str(root_path / "train"))
    test_raw = ImageFolder(str(root_path / "val"))
    _check_classes("imagenet", num_classes, len(train_raw.classes))
    return Splits(
        name="imagenet",
        train=TransformedDataset(train_raw, train_tf),
        train_eval=TransformedDataset(train_raw, eval_tf),
        test=TransformedDataset(test_raw, eval_tf),
        num_classes=num_classes,
        input_shape=(3, image_size, image_size),
        calib_size=calib_size,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
    )
