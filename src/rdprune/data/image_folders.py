"""ImageNet as class folders, decoded per sample by DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2

from rdprune.data.splits import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Splits,
    TransformedDataset,
    check_classes,
    positive,
    require,
)
from rdprune.errors import UserError, UserFileNotFoundError

#: ImageNet training transforms of ``dataset.train_transform``
TRAIN_TRANSFORMS = ("official", "standard")


def imagenet(
    *,
    name: str,
    root: str,
    image_size: int,
    resize: int,
    interpolation: str,
    train_transform: str,
    channels: int,
    num_classes: int,
    calib_size: int,
    num_workers: int,
    eval_batch_size: int,
) -> Splits:
    """ImageNet as ``root/train`` and ``root/val`` class folders.

    Evaluation and calibration: resize the shorter side to ``resize`` + centre crop
    ``image_size``. Training: ``"official"`` is that same deterministic transform (the official
    pipeline fine-tunes on it; only the order of the images is shuffled), ``"standard"`` is
    RandomResizedCrop ``image_size`` + horizontal flip. ``interpolation`` ("bicubic", as the
    official pipeline, or "bilinear") applies to every resize. Every argument is a key of
    ``conf/dataset/imagenet.yaml`` (which holds the values); ``channels`` must be 3.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import InterpolationMode

    require("name", name, ("imagenet",))
    require("channels", channels, (3,), "ImageNet images are RGB")
    positive("image_size", image_size)
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
            raise UserFileNotFoundError(
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
    check_classes("imagenet", num_classes, len(train_raw.classes))
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
