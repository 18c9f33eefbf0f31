"""The language-model fast path on a GPU: time per grid point against the naive scheme, grid
batching, memory, and agreement, on a LLaMA of TinyLlama's shape at random init.

    python experiments/gpu_lm_check.py --device cuda          # ~4 min on one H200
    python experiments/gpu_lm_check.py --device cpu --smoke  # seconds (tests the script)

The model: a LLaMA with TinyLlama-1.1B's shapes (22 blocks, hidden 2048, intermediate 5632, 32
heads, 4 KV heads, vocabulary 32,000), random init, float32; calibration: ``--n`` sequences of
``--seq`` random tokens. Block 0's 7 linears are profiled (the whole model downstream of them: the
most expensive layers) on ``--points`` grid points with grid batching 1 and 8, and the naive
scheme on its first 2 linears; the report gives seconds per (layer x grid point), the speed-up,
the largest relative curve difference, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rdprune.tasks import prunable_layers as find_prunable
from rdprune.models.lm import causal_lm
from rdprune.methods.rd.profiling import rd_curves_naive
from rdprune.methods.rd.profiling.lm import lm_curves

SHAPE = dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False)
SMOKE = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--out", default="results/gpu_lm_check.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape, vocab = (SMOKE, 97) if args.smoke else (SHAPE, 32000)
    n, seq = (4, 16) if args.smoke else (args.n, args.seq)
    torch.manual_seed(0)
    model = causal_lm(name=None, weights=None, config=shape, vocab_size=vocab,
                      prunable="blocks", seq_len=seq).to(device).eval()
    x = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(1)).to(device)
    layers = find_prunable(model, x[:1])
    block0 = {k: m for k, m in layers.items() if ".layers.0." in k}
    grid = np.linspace(0, 1, args.points)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else "cpu", "torch": torch.__version__, "calibration": f"{n} x {seq} tokens",
                    "prunable_weights": sum(m.weight.numel() for m in layers.values()),
                    "layers_profiled": len(block0), "grid_points": args.points}

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
        return out, time.perf_counter() - start, peak

    per = len(block0) * (args.points - 1)  # the s = 0 point needs no forward
    curves = {}
    for g in (1, 8):
        curves[g], t, peak = timed(lambda g=g: lm_curves(
            model, x, grid, "mean", layers=block0, batch_size=8 if not args.smoke else 2,
            progress=False, grid_batch=g))
        report[f"fast_grid_batch_{g}"] = {"seconds": t, "ms_per_point": 1e3 * t / per,
                                          "peak_gib": peak}
    two = dict(list(block0.items())[:2])
    naive, t, peak = timed(lambda: rd_curves_naive(
        model, x, grid, "mean", layers=two, batch_size=8 if not args.smoke else 2,
        progress=False))
    report["naive"] = {"seconds": t, "ms_per_point": 1e3 * t / (2 * (args.points - 1)),
                       "peak_gib": peak}
    fast = curves[8][:2]
    report["max_rel_diff_fast_vs_naive"] = float(np.abs(fast - naive).max()
                                                 / max(np.abs(naive).max(), 1e-300))
    report["max_rel_diff_grid_batch_8_vs_1"] = float(
        np.abs(curves[8] - curves[1]).max() / max(np.abs(curves[1]).max(), 1e-300))
    report["speedup_vs_naive"] = report["naive"]["ms_per_point"] / min(
        report["fast_grid_batch_1"]["ms_per_point"], report["fast_grid_batch_8"]["ms_per_point"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()
