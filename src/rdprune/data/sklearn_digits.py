"""scikit-learn's bundled handwritten digits: offline, for the quickstart and tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from rdprune.data.batches import ImageBatches
from rdprune.data.splits import Splits, TensorImages, check_classes, positive, require


def digits(
    *,
    name: str,
    image_size: int,
    channels: int,
    num_classes: int,
    calib_size: int,
    test_fraction: float,
    augment: bool,
    split_seed: int,
    num_workers: int,
    eval_batch_size: int,
) -> Splits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images; works offline).

    Images are scaled to [0, 1], resized (bilinear) to ``image_size``, repeated to ``channels``,
    and normalised with the training split's mean and std. The train/test split is stratified
    and fixed by ``split_seed``. Training augmentation: random shifts (crop with padding).
    Every argument is a key of ``conf/dataset/digits.yaml`` (which holds the values).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    require("name", name, ("digits",))
    positive("image_size", image_size)
    positive("channels", channels)
    check_classes("digits", num_classes, 10)
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
