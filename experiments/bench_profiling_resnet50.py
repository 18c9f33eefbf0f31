"""GPU check: rate-distortion curves of ResNet-50 at 224x224 (54 layers x 101 points x 256 images).

Usage:
    python experiments/bench_profiling_resnet50.py --device cuda            # the check (H200: <= 60 s)
    python experiments/bench_profiling_resnet50.py --device cpu --n 2 --image-size 32 \\
        --grid-points 3 --naive-layers 1 --out /tmp/r50.txt                  # smoke run on a CPU

Times, in one process: ``rd_curves`` in float32 (its defaults: upstream reuse, BN folded,
channels-last), the same under bf16 autocast, and the naive scheme (one full forward per layer and
grid point, as the official code) on ``--naive-layers`` evenly spaced layers, scaled to all 54 by
the share of naive forwards those layers make. The bf16 curves must stay within 1% of float32:
per layer, max_k |bf16 - fp32| / max_k |fp32|.

Model: torchvision ResNet-50 at random init with BN running statistics from a few train-mode
passes (``--weights IMAGENET1K_V1``: the paper's dense model, from the torch hub cache);
calibration: N(0, 1) inputs in normalised space (the same as ``method=ours_zerodata``), so no
dataset is needed. ``experiments/gpu_check.py`` runs the same steps through the functions below.
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
from torch import nn

from rdprune.pruning.layers import find_prunable
from rdprune.models import torchvision_model
from rdprune.methods.rd.profiling import gaussian_inputs, rd_curves, rd_curves_naive, warm_batchnorm

TARGET_SECONDS = 60.0
TOLERANCE = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:i] (the check) or cpu (smoke run)")
    p.add_argument("--n", type=int, default=256, help="calibration images")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--grid-points", type=int, default=101, help="grid linspace(0, 1, points)")
    p.add_argument("--reduction", default="worst", choices=["mean", "worst"])
    p.add_argument("--batch-size", type=int, default=256, help="images per forward")
    p.add_argument("--naive-layers", type=int, default=6, help="layers timed naively (0: skip)")
    p.add_argument("--weights", default=None,
                   help="torchvision weights name, e.g. IMAGENET1K_V1 (default: random init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="report file (default results/bench_profiling_resnet50_<device>.txt)")
    return p.parse_args(argv)


def build_model(weights: str | None, size: int, seed: int, device: torch.device) -> nn.Module:
    """ResNet-50 in eval mode; at random init, BN running statistics from train-mode passes.

    Args:
        weights: a torchvision weights name (``"IMAGENET1K_V1"``), or None: random init.
        size: input side of the BN warm-up passes.
        seed: seeds the initialisation and the warm-up inputs.
        device: where the model lives.
    """
    torch.manual_seed(seed)
    model = torchvision_model("resnet50", weights=weights).to(device)
    if weights:
        return model.eval()
    return warm_batchnorm(model, (gaussian_inputs(16, (3, size, size), seed + 100 + i,
                                                  device=device) for i in range(2)))


def timed(device: torch.device, fn):
    """``(fn(), seconds)``, synchronising a CUDA device before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t


def relative_diff(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per layer: max over the grid of ``|curves - reference|`` / max of ``|reference|``."""
    return (np.abs(curves - reference).max(axis=1)
            / np.maximum(np.abs(reference).max(axis=1), 1e-300))


def time_curves(model: nn.Module, x: torch.Tensor, names: list[str], grid: np.ndarray,
                reduction: str, batch_size: int, dtype: torch.dtype | None = None):
    """``(curves [layers, points], seconds)`` of ``rd_curves`` (its defaults) under ``dtype``
    autocast (None: float32)."""
    device = x.device
    return timed(device, lambda: rd_curves(model, x, grid, reduction, layers=names,
                                           batch_size=batch_size, progress=False,
                                           autocast_dtype=dtype))


def time_naive(model: nn.Module, x: torch.Tensor, names: list[str], count: int, grid: np.ndarray,
               reduction: str, batch_size: int):
    """The naive scheme on ``count`` evenly spaced layers of ``names``.

    Returns:
        ``(picked layer names, their curves, seconds, seconds scaled to all layers)``: every
        naive (layer, point) costs one full forward, so time scales with the layer count.
    """
    picked = [names[i] for i in np.linspace(0, len(names) - 1, count).astype(int)]
    curves, seconds = timed(x.device, lambda: rd_curves_naive(
        model, x, grid, reduction, layers=picked, batch_size=batch_size, progress=False))
    return picked, curves, seconds, seconds * len(names) / len(picked)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    lines: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    model = build_model(args.weights, args.image_size, args.seed, device)
    x = gaussian_inputs(args.n, (3, args.image_size, args.image_size), args.seed + 1,
                        device=device)
    names = list(find_prunable(model, x[:1]))
    grid = np.linspace(0.0, 1.0, args.grid_points)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    say(f"# {' '.join(['python', *sys.argv])}")
    say(f"# torch {torch.__version__}, device {device} ({gpu}), threads {torch.get_num_threads()}")
    say(f"# ResNet-50 ({args.weights or 'random init'}), {len(names)} "
        f"prunable layers, {args.n} N(0, 1) images 3x{args.image_size}x{args.image_size}, grid "
        f"linspace(0, 1, {args.grid_points}), reduction {args.reduction}")

    with torch.inference_mode():  # how far bf16 moves the unpruned logits, for reference
        ref = model(x[: args.batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x[: args.batch_size]).float()
    say(f"# bf16 autocast vs float32 logits of the unpruned model: max |diff| / max |logit| "
        f"{float((low - ref).abs().max() / ref.abs().max()):.2e}")

    # warm-up (cuDNN autotuning, tracing) on one layer, not timed
    time_curves(model, x, names[:1], grid[:3], args.reduction, args.batch_size)
    fp32, t32 = time_curves(model, x, names, grid, args.reduction, args.batch_size)
    bf16, t16 = time_curves(model, x, names, grid, args.reduction, args.batch_size,
                            torch.bfloat16)
    rel = relative_diff(bf16, fp32)
    worst = names[int(rel.argmax())]
    say("")
    say(f"rd_curves float32          {t32:8.1f} s")
    say(f"rd_curves bf16 autocast    {t16:8.1f} s   max per-layer rel diff vs float32 "
        f"{rel.max():.2e} ({worst}); within {TOLERANCE:.0%}: {bool(rel.max() <= TOLERANCE)}")
    result = {"fp32_seconds": t32, "bf16_seconds": t16, "bf16_rel_diff": float(rel.max())}

    if args.naive_layers > 0:
        picked, naive, tn, est = time_naive(model, x, names, args.naive_layers, grid,
                                            args.reduction, args.batch_size)
        reln = relative_diff(fp32[[names.index(n) for n in picked]], naive).max()
        say(f"naive float32, {len(picked)} layers {tn:8.1f} s -> all {len(names)} layers "
            f"~{est:.1f} s; float32 fast vs naive on them: {est / t32:.2f}x, rel diff {reln:.1e}")
        result.update(naive_seconds_estimate=est, naive_rel_diff=float(reln))
    best = min(t32, t16 if rel.max() <= TOLERANCE else float("inf"))
    check = (device.type == "cuda" and (args.n, args.image_size, args.grid_points)
             == (256, 224, 101))
    say("")
    say(f"best admissible time {best:.1f} s; target <= {TARGET_SECONDS:.0f} s on one H200 at "
        "256 images, 224x224, 101 points: " + (("met" if best <= TARGET_SECONDS else "NOT met")
                                              if check else "not checked by this run"))
    out = Path(args.out or f"results/bench_profiling_resnet50_{device.type}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} (load average {os.getloadavg()})", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
