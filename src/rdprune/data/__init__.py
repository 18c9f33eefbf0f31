"""Datasets: CIFAR-10/100, ImageNet folders, scikit-learn digits (offline), synthetic tensors.

Each factory returns :class:`Splits`: a training split with training augmentation, the same split
with *evaluation* transforms (the calibration set is drawn from it: no augmentation noise in the
curves), a test split, and loader settings. Factories are built by Hydra from ``conf/dataset/``
(``_target_: rdprune.data.<factory>``).

Training batches are a pure function of ``(seed, step)``, so an interrupted run resumed at step
``t`` sees exactly the batches an uninterrupted run would (see :mod:`rdprune.data.batches`). Datasets
that fit in memory (digits, synthetic, CIFAR) also hold their training split as one tensor
(``Splits.train_memory``), and training batches are then built by batched tensor ops; file
datasets (ImageNet) go through a DataLoader with per-sample transforms.

One module per dataset family, and :mod:`rdprune.data.splits` for what they share. To add one
(e.g. a text corpus):

- a module here whose factory takes keyword-only arguments, exactly the keys of its
  ``conf/dataset/<name>.yaml``, without defaults (the YAML holds the values) and without
  ``**kwargs``: a key the factory does not take is an up-front error
  (:func:`rdprune.run.checks.check_keys`); keys that model configs read by interpolation
  (``channels``, ``num_classes``, ``image_size``) are arguments the factory checks;
- the factory imported below, so that ``rdprune.data.<factory>`` is its Hydra target. A module
  is not named as its factory: the factory, imported here, would hide it
  (``import rdprune.data.<name> as m`` would give the function).
"""

from rdprune.data.image_folders import TRAIN_TRANSFORMS, imagenet
from rdprune.data.sklearn_digits import digits
from rdprune.data.splits import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Splits,
    TensorImages,
    TransformedDataset,
    step_seed,
)
from rdprune.data.synthetic_images import synthetic
from rdprune.data.text_corpus import TextSplits, text
from rdprune.data.torchvision_cifar import cifar, cifar_splits

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "TRAIN_TRANSFORMS", "Splits",
    "TensorImages", "TransformedDataset", "cifar", "cifar_splits", "digits", "imagenet",
    "step_seed", "synthetic", "TextSplits", "text",
]
