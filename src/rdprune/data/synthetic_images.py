"""Random tensors of any shape and class count: for tests and smoke runs."""

from __future__ import annotations

import torch

from rdprune.data.batches import ImageBatches
from rdprune.data.splits import Splits, TensorImages, positive, require


def synthetic(
    *,
    name: str,
    num_classes: int,
    channels: int,
    image_size: int,
    train_size: int,
    test_size: int,
    noise: float,
    calib_size: int,
    data_seed: int,
    num_workers: int,
    eval_batch_size: int,
) -> Splits:
    """Random tensors of any shape and class count: a class prototype plus Gaussian noise.

    Learnable (so training and pruning behave like on real data) and fully determined by
    ``data_seed``. Meant for tests and smoke runs of configs whose real data is absent. Every
    argument is a key of ``conf/dataset/synthetic.yaml`` (which holds the values).
    """
    require("name", name, ("synthetic",))
    for key, value in (("num_classes", num_classes), ("channels", channels),
                       ("image_size", image_size)):
        positive(key, value)
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
