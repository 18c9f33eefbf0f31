"""CIFAR-10 / CIFAR-100 through torchvision, held in memory for the training batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rdprune.data.batches import ImageBatches
from rdprune.data.splits import (
    CIFAR_MEAN,
    CIFAR_STD,
    Splits,
    TransformedDataset,
    check_classes,
    require,
)
from rdprune.errors import UserError, UserFileNotFoundError


def cifar(
    *,
    name: str,
    root: str,
    download: bool,
    image_size: int,
    channels: int,
    num_classes: int,
    calib_size: int,
    augment: bool,
    num_workers: int,
    eval_batch_size: int,
) -> Splits:
    """CIFAR-10 / CIFAR-100 through torchvision (random crop 32 pad 4 + flip for training).

    Every argument is a key of ``conf/dataset/cifar10.yaml`` / ``cifar100.yaml`` (which hold the
    values); ``image_size`` and ``channels`` (read by the model configs) must be CIFAR's 32 and 3.
    """
    from torchvision import datasets

    require("name", name, ("cifar10", "cifar100"))
    require("image_size", image_size, (32,), "CIFAR images are not resized")
    require("channels", channels, (3,), "CIFAR images are RGB")
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    check_classes(name, num_classes, 10 if name == "cifar10" else 100)
    root_path = Path(root).expanduser()
    folder = root_path / cls.base_folder
    if not download and not folder.is_dir():
        raise UserFileNotFoundError(
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
