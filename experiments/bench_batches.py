"""Training batches on one CPU core: the in-memory path against the per-sample path.

Usage:
    python experiments/bench_batches.py                       # ~1 minute; results/bench_batches.txt
    python experiments/bench_batches.py --smoke --out /tmp/b.txt   # seconds, no figures to keep

Data: CIFAR-shaped, generated (50,000 x 32 x 32 x 3 uint8 and labels, as torchvision's CIFAR10
holds them), through :func:`rdprune.data.cifar_splits`, i.e. the production CIFAR augmentation
(random crop 32 with padding 4, horizontal flip, normalisation), batch 100. In one process with
``torch.set_num_threads(1)``:

- per-sample path: :func:`rdprune.data.batches.per_sample_batches` (a DataLoader without workers,
  torchvision's PIL CIFAR items and v2 transforms, one generator reseed per sample);
- in-memory path: :meth:`rdprune.data.Splits.train_batches` (batched tensor ops);
- what training consumes: ResNet-32 steps (batch 100, 32x32, forward + backward + AdamW).

Rates are the best of ``--repeats`` interleaved rounds (the machine may be shared). Targets: the
in-memory path >= 20x the per-sample path, and > 10x the images/s of a ResNet-32 step.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from rdprune.data.batches import per_sample_batches
from rdprune.data import Splits, cifar_splits
from rdprune.models import resnet32

BATCH = 100
TARGET_RATIO, TARGET_CONSUMPTION = 20.0, 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="training images")
    p.add_argument("--per-sample-steps", type=int, default=40, help="batches per round")
    p.add_argument("--memory-steps", type=int, default=500, help="batches per round")
    p.add_argument("--train-steps", type=int, default=5, help="ResNet-32 steps per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best is kept)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--out", default="results/bench_batches.txt", help="report file")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.per_sample_steps, args.memory_steps = 1000, 2, 5
        args.train_steps, args.repeats = 1, 1
    return args


def generated_cifar(n: int, seed: int = 0) -> Splits:
    """The production CIFAR-10 splits over generated images (torchvision's CIFAR10 items)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)

    def dataset(k: int) -> CIFAR10:
        ds = CIFAR10.__new__(CIFAR10)  # its own __getitem__ (PIL images), no files to read
        ds.data, ds.targets = images[:k], labels[:k].tolist()
        ds.transform = ds.target_transform = None
        return ds

    return cifar_splits("cifar10", dataset(n), dataset(min(n, 1000)), num_classes=10,
                        calib_size=16, augment=True, num_workers=0, eval_batch_size=500)


def images_per_second(batches, steps: int) -> float:
    """Rate of consuming ``steps`` batches of ``BATCH`` from an iterator (first one untimed)."""
    next(batches)  # DataLoader start-up, first epoch permutation
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * BATCH / (time.perf_counter() - start)


def training_rate(data: Splits, steps: int) -> float:
    """Images per second of ResNet-32 training steps (forward, backward, AdamW) at batch 100."""
    torch.manual_seed(0)
    model = resnet32(num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = next(data.train_batches(BATCH, 0, 0, 1))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()  # allocator and kernel warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = generated_cifar(args.n)
    rates: dict[str, list[float]] = {"per_sample": [], "memory": [], "resnet32": []}
    for r in range(args.repeats):
        total = args.per_sample_steps + 1
        rates["per_sample"].append(images_per_second(
            per_sample_batches(data.train, BATCH, r, 0, total), args.per_sample_steps))
        rates["memory"].append(images_per_second(
            data.train_batches(BATCH, r, 0, args.memory_steps + 1), args.memory_steps))
        rates["resnet32"].append(training_rate(data, args.train_steps))
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["memory"] / best["per_sample"]
    consumption = best["memory"] / best["resnet32"]

    lines = [
        f"$ python experiments/bench_batches.py{' --smoke' if args.smoke else ''}",
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (1 thread used), load average {os.getloadavg()[0]:.1f}",
        f"# data: {args.n:,} x 3 x 32 x 32 uint8 (generated), batch {BATCH}, RandomCrop(32, "
        "padding=4) + RandomHorizontalFlip + normalise; best of "
        f"{args.repeats} interleaved rounds",
        "",
        f"{'':46}{'images/s':>12}",
        f"{'per-sample path (DataLoader, no workers)':46}{best['per_sample']:12,.0f}",
        f"{'in-memory path (batched tensor ops)':46}{best['memory']:12,.0f}",
        f"{'ResNet-32 training step (fwd+bwd+AdamW)':46}{best['resnet32']:12,.0f}",
        "",
        f"in-memory / per-sample: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})",
        f"in-memory / ResNet-32 step consumption: {consumption:.1f}x (target > "
        f"{TARGET_CONSUMPTION:.0f}x: {'met' if consumption > TARGET_CONSUMPTION else 'NOT met'})",
    ]
    if args.smoke:
        lines.append("(smoke run: tiny sizes, the figures mean nothing)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"wrote {out}", file=sys.stderr)
    return {**best, "ratio": ratio, "consumption": consumption}


if __name__ == "__main__":
    main()
