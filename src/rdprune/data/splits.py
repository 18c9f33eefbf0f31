"""What every dataset factory returns: :class:`Splits`, with its in-memory and wrapped datasets,
the seed of a training step, and the normalisation constants of the image datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from rdprune.data.batches import Batch, ImageBatches, mix, per_sample_batches
from rdprune.errors import UserError

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
        task: the task its samples serve (:mod:`rdprune.tasks`).
        fingerprint: digest of data read from outside the config (a text corpus), else None.
    """

    task = "image_classification"

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
    fingerprint: str | None = None
    _calibration: torch.Tensor | None = field(default=None, init=False, repr=False)

    def calibration_indices(self) -> list[int]:
        """``calib_size`` evenly strided indices into the training split: the same for every
        method and run."""
        size, n = self.calib_size, len(self.train_eval)
        if not 0 < size <= n:
            raise UserError(
                f"calibration size {size} must be between 1 and the training split size {n}: "
                "set dataset.calib_size accordingly"
            )
        return [i * n // size for i in range(size)]

    def calibration(self) -> torch.Tensor:
        """The calibration inputs, stacked: ``[calib_size, *input_shape]`` (evaluation
        transforms). Loaded once and kept (the same tensor for every round and method of a run).
        """
        if self._calibration is None:
            idx = self.calibration_indices()
            loader = self.loader(torch.utils.data.Subset(self.train_eval, idx))
            self._calibration = torch.cat([x for x, _ in loader])
        return self._calibration

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy of the class logits."""
        return torch.nn.functional.cross_entropy(logits, y)

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


def require(key: str, value: object, allowed: tuple, why: str = "") -> None:
    """A factory's check of one ``dataset.<key>``: ``value`` is one of ``allowed``, else a
    one-line UserError naming the key and what is allowed (``why``: the reason, in parentheses).
    """
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        choices = " or ".join(str(a) for a in allowed)
        raise UserError(f"dataset.{key} must be {choices}{f' ({why})' if why else ''}, "
                        f"got {value!r}")


def positive(key: str, value: object) -> None:
    """``dataset.<key>`` is a positive integer, else a one-line UserError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"dataset.{key} must be a positive integer, got {value!r}")


def check_classes(name: str, num_classes: int, expected: int) -> None:
    """``dataset.num_classes`` is the dataset's class count, else a one-line UserError."""
    if num_classes != expected:
        raise UserError(f"dataset {name} has {expected} classes, config says {num_classes}")
