"""Training batches: which samples each step trains on, and the two ways of building them.

The batch of step ``t`` is a pure function of ``(seed, t)`` (and the batch size), so a run resumed
at step ``t`` sees exactly the batches an uninterrupted run would:

- order: drop-last epochs over a permutation seeded by ``(seed, epoch)``;
- augmentation: drawn for the whole global batch from a generator seeded by ``(seed, step)``.

With ``world`` data-parallel processes, rank ``r`` builds only its contiguous ``1 / world`` share
of every global batch (same samples, same draws).

Two builders, chosen by :meth:`rdprune.data.Splits.train_batches`:

- :class:`ImageBatches` (datasets held in memory: digits, synthetic, CIFAR): the split is one
  tensor (uint8 for CIFAR, 150 MB), on the training device if asked; each step's batch is
  gathered, randomly cropped with zero padding, flipped and normalised by a few batched tensor
  ops. No per-sample Python work: ~36x the per-sample path on one CPU core
  (``results/bench_batches.txt``).
- :func:`per_sample_batches` (file datasets: ImageNet): a DataLoader applies the dataset's
  per-sample transforms, each sample under its own generator seed ``(seed, step, position)``.

The two draw the same augmentation law (uniform crop offsets, fair flips; tested), not the same
samples of it: a run's batches depend on which builder its dataset uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

Batch = tuple[torch.Tensor, torch.Tensor]


def mix(*ints: int) -> int:
    """A 63-bit seed mixing several integers (SplitMix-style), stable across runs."""
    x = 0x9E3779B97F4A7C15
    for i in ints:
        x = (x ^ (int(i) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def step_indices(
    n: int, batch_size: int, seed: int, start: int, stop: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(step, sample indices of its global batch)`` for steps ``start .. stop-1``.

    Drop-last epochs of ``n // batch_size`` steps, each over a permutation seeded by
    ``(seed, epoch)``.
    """
    per_epoch = n // batch_size
    perm, epoch = None, -1
    for step in range(start, stop):
        e, b = divmod(step, per_epoch)
        if e != epoch:
            g = torch.Generator().manual_seed(mix(seed, e, 0))
            perm, epoch = torch.randperm(n, generator=g), e
        yield step, perm[b * batch_size : (b + 1) * batch_size]


def share(size: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``size`` (``world`` equal shares)."""
    part = size // world
    return slice(rank * part, (rank + 1) * part)


# --------------------------------------------------------------------------------------------
# in memory


class ImageBatches:
    """A training split held as one tensor, augmented batch-wise.

    The augmentation is torchvision's ``RandomCrop(size, padding=pad)`` (crop the image's own
    size out of the zero-padded image, offsets uniform in ``[0, 2 * pad]``), then, with
    ``flip``, ``RandomHorizontalFlip()`` (probability 1/2); uint8 images are then scaled to
    [0, 1] and normalised by ``mean``/``std`` with torchvision's own kernels, so a batch equals
    the per-sample transforms applied with the same draws, pixel for pixel.

    Args:
        x: images ``[N, C, H, W]``: uint8 (padding is black, before normalisation) or float
            (already normalised, used as they are; padding is 0).
        y: integer labels ``[N]``.
        pad: zero padding of the random crop (0: no crop).
        flip: random horizontal flips.
        mean: per-channel mean of the normalisation of uint8 images.
        std: per-channel std of the normalisation of uint8 images.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        pad: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"images must be [N, C, H, W] with N labels, got {tuple(x.shape)} "
                             f"and {len(y)} labels")
        if (x.dtype == torch.uint8) != (mean is not None and std is not None):
            raise ValueError("uint8 images need mean and std (float images are used as they are)")
        self.x, self.y = x.contiguous(), y.long()
        self.pad, self.flip = int(pad), bool(flip)
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self._copies: dict[torch.device, ImageBatches] = {}

    def __len__(self) -> int:
        return len(self.y)

    def __getstate__(self) -> dict:
        # device copies stay behind (DDP workers receive the data pickled, and place their own)
        return {**self.__dict__, "_copies": {}}

    def to(self, device: torch.device | str | None) -> ImageBatches:
        """The same split on ``device`` (kept, so the copy is made once); None: this one."""
        if device is None or torch.device(device) == self.x.device:
            return self
        device = torch.device(device)
        if device not in self._copies:
            copy = ImageBatches.__new__(ImageBatches)
            copy.__dict__.update(self.__getstate__())
            copy.x, copy.y = self.x.to(device), self.y.to(device)
            self._copies[device] = copy
        return self._copies[device]

    def draws(self, seed: int, step: int, size: int) -> torch.Tensor:
        """The augmentation of step ``step``'s global batch: ``[size, 3]`` int64 on the CPU.

        Columns: crop top and left offsets into the padded image (0 .. 2 * pad), flip (0/1).
        Always drawn on the CPU, so batches are the same on every device.
        """
        if not (self.pad or self.flip):
            return torch.zeros(size, 3, dtype=torch.long)
        g = torch.Generator().manual_seed(mix(seed, step, 3))
        offsets = torch.randint(0, 2 * self.pad + 1, (size, 2), generator=g)
        flips = (torch.rand(size, generator=g) < 0.5) if self.flip else torch.zeros(size)
        return torch.cat([offsets, flips.long()[:, None]], dim=1)

    def build(self, index: torch.Tensor, draws: torch.Tensor) -> Batch:
        """The batch of samples ``index`` under ``draws`` (see :meth:`draws`), on this device."""
        # one small host-to-device copy per step for the indices and the draws together
        packed = torch.cat([index[:, None], draws], dim=1).to(self.x.device)
        index, top, left, flip = packed.unbind(1)
        x = self.x.index_select(0, index)
        if self.pad or self.flip:
            x = crop_flip(x, top, left, flip.bool(), self.pad)
        if self.mean is not None:
            x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)
        return x, self.y.index_select(0, index)

    def batches(
        self, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        """Rank ``rank``'s share of the batches of steps ``start .. stop-1``."""
        mine = share(batch_size, rank, world)
        for step, index in step_indices(len(self), batch_size, seed, start, stop):
            yield self.build(index[mine], self.draws(seed, step, batch_size)[mine])


def crop_flip(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Per-image crop of ``x``'s own size from the zero-padded images, then horizontal flips.

    Args:
        x: images ``[B, C, H, W]``.
        top: row offset of each crop in the padded image, ``[B]`` in ``0 .. 2 * pad``.
        left: column offset of each crop in the padded image, ``[B]`` in ``0 .. 2 * pad``.
        flip: ``[B]`` bool, flip the crop left-right.
        pad: zero padding on every side.

    Returns:
        ``[B, C, H, W]``, as ``RandomCrop(padding=pad)`` then ``RandomHorizontalFlip`` would give.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).contiguous()
    hp, wp = h + 2 * pad, w + 2 * pad
    # a flipped crop is the crop at the mirrored column offset of the flipped padded image
    source = torch.cat([padded, padded.flip(-1)])
    image = torch.arange(b, device=x.device) + b * flip
    left = torch.where(flip, 2 * pad - left, left)
    # Every output row is w consecutive elements of the flat source. A (read-only) view whose
    # row k starts at flat element k turns the whole crop into one index_select of B*C*H rows:
    # block copies instead of per-pixel indexing (~4x faster on a CPU).
    flat = source.view(-1)
    rows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
    within = (torch.arange(c, device=x.device)[:, None] * hp * wp
              + torch.arange(h, device=x.device)[None, :] * wp)
    starts = (image * c * hp * wp + top * wp + left)[:, None, None] + within
    return rows.index_select(0, starts.view(-1)).view(b, c, h, w)


# --------------------------------------------------------------------------------------------
# per sample


class StepBatchSampler(Sampler):
    """Yields, for each step, the batch ``[(index, item_seed), ...]`` (see :func:`step_indices`)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, index in step_indices(self.n, self.batch_size, self.seed, self.start, self.stop):
            yield [(i, mix(self.seed, step, pos, 2)) for pos, i in enumerate(index.tolist())]


class RankShare(Sampler):
    """Rank ``rank``'s contiguous share of every batch of ``batches`` (``world`` equal shares)."""

    def __init__(self, batches: Sampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches:
            yield batch[share(len(batch), self.rank, self.world)]


class SeededItems(Dataset):
    """Wraps a dataset: item ``(index, seed)`` applies its random transform under ``seed``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        # the CPU generator only: torch.manual_seed also seeds CUDA, ~100x slower per sample
        torch.random.default_generator.manual_seed(seed)
        return self.base[index]


def per_sample_batches(
    dataset: Dataset, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
    world: int = 1, num_workers: int = 0,
) -> Iterator[Batch]:
    """Rank ``rank``'s share of the batches of steps ``start .. stop-1`` through a DataLoader.

    Each sample is transformed by ``dataset`` (in ``num_workers`` worker processes) under its
    own seed; rank ``rank`` loads only its share of the samples.
    """
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start, stop)
    yield from DataLoader(
        SeededItems(dataset),
        batch_sampler=sampler if world == 1 else RankShare(sampler, rank, world),
        num_workers=num_workers,
        persistent_workers=False,
    )
