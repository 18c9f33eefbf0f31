"""Benchmark: the DP at language-model scale (LLaMA-7B: 224 layers, LLaMA-70B: 560 layers).

Curves are random (the DP's time does not depend on their values): per layer a non-decreasing
distortion over ``--grid-points`` sparsities; costs are the kept weights of the real layer shapes
(LLaMA-7B: hidden 4096, intermediate 11008; LLaMA-2-70B: hidden 8192, intermediate 28672, 8 KV
heads), so the budget is 6.5e9 and 6.8e10 weights; target 70 %, default ``tol`` (1e-3: costs
binned to about L / tol units). Prints time, peak memory (tracemalloc) and the budget used.

    python experiments/bench_dp_llm.py          # -> results/bench_dp_llm.txt
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rdprune.methods.rd.dp import solve
from rdprune.pruning.masks import num_pruned

SHAPES = {  # per decoder block: q, k, v, o, gate, up, down
    "LLaMA-7B (32 blocks)": ([4096 * 4096] * 4 + [4096 * 11008] * 3, 32),
    "LLaMA-2-70B (80 blocks)": ([8192 * 8192, 8192 * 1024, 8192 * 1024, 8192 * 8192]
                                + [8192 * 28672] * 3, 80),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid-points", type=int, default=51)
    p.add_argument("--out", default="results/bench_dp_llm.txt")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, args.grid_points)
    lines = [f"# python experiments/bench_dp_llm.py {' '.join(sys.argv[1:])}",
             f"# python {platform.python_version()}, numpy {np.__version__}, "
             f"{args.grid_points} grid points, target 70 %, tol 1e-3", ""]
    for label, (block, blocks) in SHAPES.items():
        sizes = block * blocks
        cost = np.array([[n - num_pruned(n, s) for s in grid] for n in sizes], dtype=np.int64)
        dist = np.cumsum(rng.exponential(1.0, cost.shape), axis=1)
        dist[:, 0] = 0.0
        total = sum(sizes)
        budget = float(total - num_pruned(total, 0.7))
        tracemalloc.start()
        start = time.perf_counter()
        choice = solve(dist, cost, budget, tol=1e-3)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        used = cost[np.arange(len(sizes)), choice].sum() / budget
        lines.append(f"{label}: {len(sizes)} layers, {total:.3g} weights: {seconds:.1f} s, "
                     f"peak {peak / 2**20:.0f} MiB, budget used {used:.5f}")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
