"""ImageNet loading: images per second ONE DataLoader worker decodes with the official transform.

Usage:
    python experiments/bench_decode.py                      # ~1 minute; results/bench_decode.txt
    python experiments/bench_decode.py --smoke --out /tmp/d.txt

Generates ``--count`` JPEGs of ImageNet-like size (500x375, quality 90, smooth colour fields
with grain, ~110 kB: the mean size of ImageNet training JPEGs) as class folders in a temporary
directory, builds the production splits with :func:`rdprune.data.imagenet`
(``train_transform=official``: resize the shorter side to 256 bicubic, centre crop 224,
normalise) and reads every training item in this process with ``torch.set_num_threads(1)``, as
one DataLoader worker does (workers run one thread).
Also timed: decoding alone, and decoding + resize. Rates are the best of ``--repeats`` passes
(the first pass also warms the page cache).

Workers a GPU needs = its training rate / one worker's rate. The training rate is an ASSUMPTION
(``--gpu-rate``, default 3000 img/s: ResNet-50 bf16 training on one H200) until
``experiments/gpu_check.py`` measures it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from rdprune.data import imagenet

#: assumed images/s of ResNet-50 bf16 training on one H200 (to be measured by gpu_check.py)
ASSUMED_GPU_RATE = 3000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=300, help="JPEG files")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--repeats", type=int, default=3, help="passes over the files (best is kept)")
    p.add_argument("--gpu-rate", type=float, default=ASSUMED_GPU_RATE,
                   help="training images/s of the GPU (assumed)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--out", default="results/bench_decode.txt", help="report file")
    args = p.parse_args(argv)
    if args.smoke:
        args.count, args.repeats = 6, 1
    return args


def write_jpegs(root: Path, count: int, size: tuple[int, int], quality: int) -> float:
    """``count`` JPEGs in ``root/{train,val}/class{0,1}``; returns their mean size in kB."""
    rng = np.random.default_rng(0)
    w, h = size
    total = 0
    for i in range(count):
        folder = root / ("train" if i % 5 else "val") / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        # a coarse random colour field (objects, sky) smoothed up to size, plus sensor grain
        coarse = Image.fromarray(rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2)),
                           dtype=np.float32)
        image += rng.normal(0, 24, image.shape)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=quality)
        total += path.stat().st_size
    return total / count / 1000


def rate(fn, items: int, repeats: int) -> float:
    """Best items per second of ``fn()`` (which handles ``items`` items) over ``repeats`` runs."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rdprune-decode-") as tmp:
        root = Path(tmp)
        kb = write_jpegs(root, args.count, (args.width, args.height), args.quality)
        splits = imagenet(name="imagenet", root=str(root), image_size=224, resize=256,
                          interpolation="bicubic", train_transform="official", channels=3,
                          num_classes=2, calib_size=256, num_workers=0, eval_batch_size=250)
        train = splits.train  # TransformedDataset(ImageFolder, the official transform)
        files = [path for path, _ in train.base.samples]
        n = len(files)
        resize = train.transform.transforms[0]

        def decode() -> None:
            for f in files:
                with Image.open(f) as im:
                    im.convert("RGB")

        def decode_resize() -> None:
            for f in files:
                with Image.open(f) as im:
                    resize(im.convert("RGB"))

        def official() -> None:
            for i in range(n):
                train[i]

        rates = {"decode": rate(decode, n, args.repeats),
                 "decode_resize": rate(decode_resize, n, args.repeats),
                 "official": rate(official, n, args.repeats)}
    workers = math.ceil(args.gpu_rate / rates["official"])
    lines = [
        f"$ python experiments/bench_decode.py{' --smoke' if args.smoke else ''}",
        f"# torch {torch.__version__}, Pillow {Image.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (1 thread), "
        f"load average {os.getloadavg()[0]:.1f}",
        f"# {n} training JPEGs {args.width}x{args.height}, quality {args.quality}, mean "
        f"{kb:.0f} kB (generated); best of {args.repeats} passes, one process = one worker",
        "",
        f"{'one worker':52}{'images/s':>10}",
        f"{'decode (PIL open + RGB)':52}{rates['decode']:10.0f}",
        f"{'decode + resize shorter side 256 bicubic':52}{rates['decode_resize']:10.0f}",
        f"{'official transform (+ centre crop 224, normalise)':52}{rates['official']:10.0f}",
        "",
        f"ASSUMED GPU training rate {args.gpu_rate:.0f} img/s (ResNet-50 bf16, one H200; "
        "measure with experiments/gpu_check.py)",
        f"-> DataLoader workers per GPU: ceil({args.gpu_rate:.0f} / {rates['official']:.0f}) = "
        f"{workers} (dataset.num_workers), each on its own core",
    ]
    if args.smoke:
        lines.append("(smoke run: tiny sizes, the figures mean nothing)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"wrote {out}", file=sys.stderr)
    return {**rates, "workers": workers, "kb": kb}


if __name__ == "__main__":
    main()
