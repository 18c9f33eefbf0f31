"""Benchmark: naive vs traced rate-distortion curves (CIFAR-shaped inputs, 101-point grid).

Usage:
    python experiments/bench_profiling.py                      # defaults below, CPU
    python experiments/bench_profiling.py --n 32 --threads 2
    python experiments/bench_profiling.py --model vit --n 32   # -> results/bench_profiling_vit.txt
    python experiments/bench_profiling.py --model lm --n 16 --batch-size 16 --grid-points 21 \
        --threads 2 --groups 2                                 # -> results/bench_profiling_lm.txt
    python experiments/bench_profiling.py --device cuda --n 1024 --batch-size 256

Models (``--model``), at random init:

* ``resnet32``: ``rdprune.models.resnet32``, BN running statistics set by a few train-mode passes
  on random inputs (so folding BN is not a no-op);
* ``vit``: timm ``vit_tiny_patch16_224`` built for 32x32 inputs with 8x8 patches (16 patches and a
  class token), depth 4, 10 classes (LayerNorm: nothing to fold);
* ``lm``: the offline language model of ``model=hf_lm`` (a LLaMA with 4 blocks, hidden 128, 4
  heads, vocabulary 2,048; 28 prunable linears), random init, on sequences of 128 random token
  ids; the fast path is :func:`rdprune.methods.rd.profiling.lm.lm_curves` (the pruned layer's block and the
  blocks after it run per grid point).

Calibration: i.i.d. N(0, 1) inputs (``lm``: uniform token ids).

Timing is interleaved: the layers are split into ``--groups`` groups, and for each group every
variant computes that group's curves in turn (rotating which goes first), so load changes on a
shared machine do not favour one variant; totals are sums over groups. Each call pays the fast
path's fixed costs (tracing, the unpruned reference pass) once.

Variants: ``naive`` (one full forward per layer per grid point, as the official code), ``fast``
(rd_curves' defaults: upstream reuse, in-place ReLU/add, BN folded into convs, channels-last) and
``fast, exact`` (reuse and in-place only: bitwise equal to naive).

Reported relative difference per layer: max_k |fast - naive| / max_k |naive| (float32; an
element-wise ratio is meaningless where distortions are at float32 noise level, e.g. s = 0.01).

The ablation (every 10th point of the official grid without s = 0; one call for all layers per
variant, best of rotated rounds) prices each ingredient per (layer, grid point).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from rdprune.tasks import prunable_layers as find_prunable
from rdprune.models import resnet32
from rdprune.methods.rd.profiling import gaussian_inputs, rd_curves, rd_curves_naive, warm_batchnorm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS))
    p.add_argument("--n", type=int, default=16, help="calibration samples")
    p.add_argument("--grid-points", type=int, default=101, help="grid linspace(0, 1, points)")
    p.add_argument("--reductions", nargs="+", default=["mean", "worst"], choices=["mean", "worst"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per forward, both paths")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--ablation-every", type=int, default=10,
                   help="ablation grid: every k-th official grid point without s = 0 (0: skip)")
    p.add_argument("--ablation-rounds", type=int, default=2, help="ablation repeats (best of)")
    p.add_argument("--groups", type=int, default=4, help="layer groups for interleaved timing")
    p.add_argument("--store-only", action="store_true",
                   help="only price the per-layer writes of resumable profiling")
    p.add_argument("--out", default=None,
                   help="report file (default results/bench_profiling.txt, *_vit.txt for vit)")
    return p.parse_args(argv)  # fmt: skip


def build_resnet32(seed: int, device: torch.device) -> nn.Module:
    """ResNet-32, random init, BN running stats from a few train-mode passes on random data."""
    torch.manual_seed(seed)
    model = resnet32().to(device)
    return warm_batchnorm(model, (gaussian_inputs(64, (3, 32, 32), seed + 100 + i, device=device)
                                  for i in range(4)))


def build_vit(seed: int, device: torch.device) -> nn.Module:
    """timm ViT-Tiny for 32x32 inputs: 8x8 patches, depth 4, random init."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=4, num_classes=10)
    return model.to(device).eval()


def build_lm(seed: int, device: torch.device) -> nn.Module:
    """The offline LM's architecture (conf/model/hf_lm.yaml), random init."""
    from omegaconf import OmegaConf

    from rdprune.models.lm import causal_lm

    spec = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "hf_lm.yaml")
    torch.manual_seed(seed)
    model = causal_lm(name=None, weights=None, config=dict(spec.model.config), vocab_size=2048,
                      prunable="blocks", seq_len=128)
    return model.to(device).eval()


# --model -> (builder, description, report file)
MODELS = {
    "resnet32": (build_resnet32, "ResNet-32", "results/bench_profiling.txt"),
    "vit": (build_vit, "timm ViT-Tiny (32x32, patch 8, depth 4)",
            "results/bench_profiling_vit.txt"),
    "lm": (build_lm, "offline LLaMA (model=hf_lm: 4 blocks, hidden 128, vocabulary 2,048)",
           "results/bench_profiling_lm.txt"),
}


def calibration(model_name: str, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """N(0, 1) images, or token ids for the language model."""
    if model_name == "lm":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 2048, (n, 128), generator=g).to(device)
    return gaussian_inputs(n, (3, 32, 32), seed, device=device)


def store_overhead(curves_fn: Callable, names: list[str], say, rounds: int = 2) -> None:
    """Profiling with each row written to a cache as it is measured vs without: interleaved
    best-of-``rounds`` times, and the time spent in the writes (``CurveStore.put``) itself."""
    import tempfile

    from rdprune.methods.rd.profiling import store as store_module

    put = store_module.CurveStore.put
    spent = [0.0]

    def timed_put(self, li, row, seconds):
        t = time.perf_counter()
        put(self, li, row, seconds)
        spent[0] += time.perf_counter() - t

    best = {"without the store": float("inf"), "with the store": float("inf")}
    writes = float("inf")
    for r in range(rounds):
        for v in list(best)[r % 2:] + list(best)[:r % 2]:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                if v == "with the store":
                    spent[0] = 0.0
                    store_module.CurveStore.put = timed_put
                    try:
                        store = store_module.CurveStore(Path(tmp), "bench", len(names))
                        store_module.profile(store, lambda sink: curves_fn(names, sink))
                    finally:
                        store_module.CurveStore.put = put
                    writes = min(writes, spent[0])
                else:
                    curves_fn(names, None)
                best[v] = min(best[v], time.perf_counter() - t)
    plain = best["without the store"]
    say("")
    say(f"Resumable profiling ({len(names)} rows written one by one, best of {rounds}):")
    for v, t in best.items():
        say(f"  {v:20s} {t:8.1f} s")
    say(f"  => writes: {writes * 1e3:.0f} ms in all, {100 * writes / plain:.2f}% of profiling "
        f"time; with - without: {100 * (best['with the store'] - plain) / plain:+.1f}% "
        "(includes timing noise)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    groups: list[list[str]], variants: dict[str, Callable[[list[str]], np.ndarray]],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Round-robin timing over layer groups: total seconds and stacked curves per variant."""
    times = {v: 0.0 for v in variants}
    rows: dict[str, list[np.ndarray]] = {v: [] for v in variants}
    keys = list(variants)
    start = time.perf_counter()
    for gi, group in enumerate(groups):
        shift = gi % len(keys)
        for v in keys[shift:] + keys[:shift]:
            sync(device)
            t = time.perf_counter()
            rows[v].append(variants[v](group))
            sync(device)
            times[v] += time.perf_counter() - t
            print(f"  group {gi + 1}/{len(groups)} {v:24s} elapsed "
                  f"{time.perf_counter() - start:7.1f}s", file=sys.stderr, flush=True)
    return times, {v: np.concatenate(rs) for v, rs in rows.items()}


def rel_diff(fast: np.ndarray, naive: np.ndarray) -> np.ndarray:
    """Per-layer max |fast - naive| / max |naive|."""
    return np.abs(fast - naive).max(axis=1) / np.maximum(np.abs(naive).max(axis=1), 1e-300)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    build, label, default_out = MODELS[args.model]
    model = build(args.seed, device)
    x = calibration(args.model, args.n, args.seed + 1, device)
    modules = find_prunable(model, x[:1])
    names = list(modules)
    grid = np.linspace(0.0, 1.0, args.grid_points)
    bs = args.batch_size
    common = dict(batch_size=bs, progress=False)

    say(f"# {' '.join(['python', *sys.argv])}")
    say(
        f"# torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"threads {torch.get_num_threads()}, load average at start {os.getloadavg()}"
    )
    say(
        f"# {label} ({len(names)} prunable layers), N = {args.n} "
        f"{'sequences of 128 random tokens' if args.model == 'lm' else 'Gaussian inputs 3x32x32'}"
        f", grid linspace(0, 1, {args.grid_points}), batch size {bs} for both paths"
    )

    # Estimate before committing: the naive scheme is layers x grid points full passes.
    with torch.inference_mode():
        for xb in x[:bs].split(bs):
            model(xb)
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            for xb in x.split(bs):
                model(xb)
        sync(device)
        one = (time.perf_counter() - t) / 3
    est = one * len(names) * len(grid) * len(args.reductions)
    say(
        f"one full pass over the calibration set: {one * 1e3:.1f} ms -> naive scheme estimate "
        f"{est / 60:.1f} min for {len(args.reductions)} reduction(s)"
    )

    def naive_fn(red: str, g: np.ndarray, **kw) -> Callable[[list[str]], np.ndarray]:
        return lambda group: rd_curves_naive(model, x, g, red, layers=group, **common, **kw)

    def fast_fn(red: str, g: np.ndarray, **kw) -> Callable[[list[str]], np.ndarray]:
        if args.model == "lm":
            from rdprune.methods.rd.profiling.lm import lm_curves

            return lambda group, sink=None: lm_curves(
                model, x, g, red, layers={n: modules[n] for n in group}, sink=sink, **common)
        return lambda group, sink=None: rd_curves(model, x, g, red, layers=group, sink=sink,
                                                  **common, **kw)

    groups = [list(g) for g in np.array_split(np.array(names), args.groups)]
    if args.store_only:
        args.reductions, args.ablation_every = args.reductions[-1:], 0
        groups = []
    say("")
    say(
        f"{'reduction':9s} {'variant':24s} {'time (s)':>9s} {'speedup':>8s} "
        f"{'max per-layer rel diff':>23s}  (worst layer)"
    )
    for red in args.reductions if groups else []:
        variants = {"naive": naive_fn(red, grid), "fast (default)": fast_fn(red, grid)}
        if args.model != "lm":  # (nothing to fold or reorder in a language model)
            variants["fast, exact (bitwise)"] = fast_fn(red, grid, fold_bn=False,
                                                        channels_last=False)
        print(f"[{red}] interleaved over {len(groups)} layer groups: {', '.join(variants)}",
              file=sys.stderr)
        times, curves = interleaved(groups, variants, device)
        for v in variants:
            speed = times["naive"] / times[v]
            if v == "naive":
                say(f"{red:9s} {v:24s} {times[v]:9.1f} {speed:7.2f}x")
                continue
            rel = rel_diff(curves[v], curves["naive"])
            worst = names[int(rel.argmax())]
            say(f"{red:9s} {v:24s} {times[v]:9.1f} {speed:7.2f}x {rel.max():23.2e}  ({worst})")
        zero_cols = all((c[:, 0] == 0).all() for c in curves.values())
        say(f"{'':9s} s = 0 column exactly 0 in every variant: {zero_cols}")

    store_overhead(fast_fn(args.reductions[-1], grid), names, say)
    if args.ablation_every > 0 and args.model != "lm":
        sub = np.linspace(0.0, 1.0, 101)[1 :: args.ablation_every]
        red = args.reductions[-1]
        say("")
        say(
            f"Ablation ({red}, {len(sub)} grid points {sub[0]:.2f}..{sub[-1]:.2f}, no s = 0): one "
            f"call for all layers per variant, best of {args.ablation_rounds} rotated rounds; "
            "ms per (layer x grid point)"
        )
        exact = {"fold_bn": False, "channels_last": False}
        variants = {
            "naive (eager)": {"naive": True},
            "traced, full recompute": {"reuse": False, **exact},
            "traced, reuse (exact)": exact,
            "traced, reuse + fold_bn": {"channels_last": False},
            "traced, reuse + channels_last": {"fold_bn": False},
            "traced, reuse + both (default)": {},
        }
        best = {v: float("inf") for v in variants}
        curves = {}
        keys = list(variants)
        for r in range(args.ablation_rounds):
            for v in keys[r % len(keys) :] + keys[: r % len(keys)]:
                kw = dict(variants[v])
                fn = rd_curves_naive if kw.pop("naive", False) else rd_curves
                sync(device)
                t = time.perf_counter()
                curves[v] = fn(model, x, sub, red, **common, **kw)
                sync(device)
                best[v] = min(best[v], time.perf_counter() - t)
                print(f"  ablation round {r + 1}: {v} {best[v]:.1f}s", file=sys.stderr, flush=True)
        base = best["naive (eager)"]
        per = len(names) * len(sub)
        for v, t in best.items():
            rel = rel_diff(curves[v], curves["naive (eager)"]).max()
            say(f"  {v:34s} {t / per * 1e3:8.1f} ms  {base / t:5.2f}x  rel diff {rel:.1e}")
        full = best["traced, full recompute"]
        reuse = best["traced, reuse (exact)"]
        say(
            f"  => exact engineering (interpreter, in-place ReLU/add): {base / full:.2f}x; "
            f"algorithmic (upstream reuse): {full / reuse:.2f}x; "
            f"fold_bn: {reuse / best['traced, reuse + fold_bn']:.2f}x; "
            f"channels_last: {reuse / best['traced, reuse + channels_last']:.2f}x; "
            f"both: {reuse / best['traced, reuse + both (default)']:.2f}x "
            f"(these two change float32 rounding); s = 0 skip: {len(grid)}/{len(grid) - 1}"
        )
    say("")
    say(f"# load average at end {os.getloadavg()}")
    out = Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
