"""Benchmark the allocation DP on a ResNet-50-shaped instance, against a naive exact DP.

The instance: torchvision ResNet-50's 54 Conv2d/Linear weights (25,502,912), 101 grid sparsities
``linspace(0, 1, 101)``, cost = kept weights ``n_l - num_pruned(n_l, s)``, and synthetic but
realistic rate-distortion curves (seeded): ``a_l * (exp(b_l * s) - 1)`` with per-layer random
scales and 2% multiplicative noise. No weights or data are needed.

Compared, in one process:
- ``rdprune.methods.rd.dp.solve`` (binned to ``tol`` = 0.1% of the budget) at 50% and 90% sparsity;
- a naive exact DP laid out like the official code (a float64 value and an int32 choice per layer
  and per budget unit: 12 x L x B bytes), at 90% only: at 50% it is skipped with an estimate;
- ``solve`` forced exact (one bin per weight), for the exact optimum with small back-pointers.

Times (wall clock and this process's CPU time, which is what matters on a shared machine) are
the best of ``--repeats`` runs (one run for the exact DPs); peak memory is tracemalloc's
peak over one run (numpy buffers included); RSS is the process high-water mark during that run
(reset before it), next to the RSS before it (the process has torch imported).

    python experiments/bench_dp.py    # ~1-2 minutes on 2 cores; writes results/bench_dp.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rdprune.methods.rd.dp import solve, total
from rdprune.pruning.masks import num_pruned


def resnet50_sizes() -> list[int]:
    """Weight counts of torchvision ResNet-50's Conv2d/Linear layers, in model order."""
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    return [
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]


def instance(sizes: list[int], grid: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic RD curves (increasing, convex-ish, 0 at s = 0) and kept-weight costs."""
    rng = np.random.default_rng(seed)
    n_layers = len(sizes)
    scale = 10.0 ** rng.uniform(-3, 0, (n_layers, 1))  # per-layer sensitivity
    sharp = rng.uniform(2, 8, (n_layers, 1))  # how late the curve takes off
    noise = 1 + 0.02 * np.clip(rng.standard_normal((n_layers, len(grid))), -3, 3)
    distortion = scale * (np.exp(sharp * grid) - 1) * noise
    cost = np.array([[n - num_pruned(n, float(s)) for s in grid] for n in sizes], dtype=np.int64)
    return distortion, cost


def naive_exact(distortion: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Exact DP indexed by every budget unit, with the official code's full tables.

    ``value[l, b]`` = least distortion of layers ``< l`` with cost at most ``b`` (float64), and
    ``pick[l, b]`` its option (int32), for every ``b`` in ``0..budget``. Vectorised over ``b``.
    """
    n_layers, n_options = distortion.shape
    top = int(budget)
    value = np.empty((n_layers + 1, top + 1))
    value[0] = 0.0
    pick = np.empty((n_layers, top + 1), dtype=np.int32)
    cand = np.empty(top + 1)
    better = np.empty(top + 1, dtype=bool)
    mark = np.empty(top + 1, dtype=np.int32)
    for layer in range(n_layers):
        row, prev = value[layer + 1], value[layer]
        row.fill(np.inf)
        pick[layer].fill(0)
        for k in range(n_options):
            c = int(cost[layer, k])
            if c > top:
                continue
            n = top + 1 - c
            np.add(prev[:n], distortion[layer, k], out=cand[:n])
            np.less(cand[:n], row[c:], out=better[:n])
            np.minimum(row[c:], cand[:n], out=row[c:])
            np.multiply(better[:n], np.int32(k), out=mark[:n])  # same SIMD step as solve
            np.maximum(pick[layer, c:], mark[:n], out=pick[layer, c:])
    choice = np.empty(n_layers, dtype=np.int64)
    b = top
    for layer in reversed(range(n_layers)):
        choice[layer] = pick[layer, b]
        b -= int(cost[layer, choice[layer]])
    return choice


def _rss_mb() -> tuple[float, float]:
    """(current RSS, high-water RSS) of this process in MB (Linux)."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed: VmHWM then covers the whole process
        pass


def measure(fn, repeats: int) -> dict:
    """Best-of-``repeats`` wall and CPU times, then one run under tracemalloc with the RSS peak.

    With ``repeats=0`` the times are those of the traced run.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    rss_before, _ = _rss_mb()
    _reset_peak_rss()
    tracemalloc.start()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    if repeats == 0:
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _, rss_peak = _rss_mb()
    return {"choice": result, "seconds": wall, "cpu_seconds": cpu, "peak_mb": peak / 2**20,
            "rss_before_mb": rss_before, "rss_peak_mb": rss_peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic RD curves")
    parser.add_argument("--tol", type=float, default=1e-3, help="solve's budget resolution")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of solve (best kept)")
    parser.add_argument("--naive-max-gb", type=float, default=4.0,
                        help="skip the naive exact DP where its tables would exceed this")
    parser.add_argument("--no-exact-solve", action="store_true",
                        help="skip solve forced exact (saves ~20 s)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_dp.txt"))
    args = parser.parse_args(argv)

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    grid = np.linspace(0.0, 1.0, 101)
    sizes = resnet50_sizes()
    distortion, cost = instance(sizes, grid, args.seed)
    n_layers, n_weights = len(sizes), sum(sizes)
    say(f"$ python {' '.join(sys.argv)}")
    say(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, load average "
        f"{os.getloadavg()[0]:.1f} (time_s is wall clock, cpu_s this process's CPU time)")
    say(f"instance: ResNet-50 shapes, {n_layers} layers, {n_weights:,} weights, "
        f"{len(grid)} grid sparsities, synthetic curves seed {args.seed}")
    say()
    header = (f"{'solver':<24} {'target':>6} {'budget':>11} {'time_s':>8} {'cpu_s':>7} "
              f"{'peak_MB':>8} {'RSS_MB':>13} {'distortion':>11} {'cost':>11} {'gap':>9}")
    say(header)
    say("-" * len(header))

    rows: dict[tuple[str, float], dict] = {}

    def report(name: str, target: float, budget: float, run: dict) -> None:
        dist, used = total(distortion, cost, run["choice"])
        run.update(distortion=dist, cost=used)
        rows[name, target] = run
        rss = f"{run['rss_before_mb']:.0f}->{run['rss_peak_mb']:.0f}"
        say(f"{name:<24} {target:>6.0%} {budget:>11,.0f} {run['seconds']:>8.3f} "
            f"{run['cpu_seconds']:>7.3f} {run['peak_mb']:>8.1f} {rss:>13} {dist:>11.4f} "
            f"{used:>11,.0f} {(budget - used) / budget:>9.2e}")
        assert used <= budget, "over budget"

    budgets = {t: float(n_weights - num_pruned(n_weights, t)) for t in (0.5, 0.9)}
    for target, budget in budgets.items():
        run = measure(lambda b=budget: solve(distortion, cost, b, tol=args.tol), args.repeats)
        report(f"solve (tol={args.tol:g})", target, budget, run)

    naive_cpu = None
    for target in (0.9, 0.5):
        budget = budgets[target]
        need_gb = 12 * n_layers * (budget + 1) / 1e9  # float64 value + int32 choice per cell
        if need_gb > args.naive_max_gb:
            guess = ("" if naive_cpu is None else
                     f", ~{naive_cpu * budget / budgets[0.9]:.0f} s CPU by linear scaling")
            say(f"{'naive exact DP':<24} {target:>6.0%} {budget:>11,.0f}   skipped: tables "
                f"need {need_gb:.1f} GB (> --naive-max-gb {args.naive_max_gb:g}){guess}")
            continue
        run = measure(lambda b=budget: naive_exact(distortion, cost, b), 0)
        report("naive exact DP", target, budget, run)
        naive_cpu = run["cpu_seconds"]
    if not args.no_exact_solve:
        budget = budgets[0.9]
        run = measure(lambda: solve(distortion, cost, budget, max_table=1 << 40), 0)
        report("solve (exact)", 0.9, budget, run)

    say()
    binned = rows[f"solve (tol={args.tol:g})", 0.9]
    exact = rows.get(("naive exact DP", 0.9)) or rows.get(("solve (exact)", 0.9))
    if exact is not None:
        say("at 90% sparsity, binned solve vs exact optimum:")
        for name in ("naive exact DP", "solve (exact)"):
            if (name, 0.9) in rows:
                other = rows[name, 0.9]
                say(f"  vs {name:<15} time x{other['seconds'] / binned['seconds']:,.0f} "
                    f"(CPU x{other['cpu_seconds'] / binned['cpu_seconds']:,.0f}), "
                    f"peak memory x{other['peak_mb'] / binned['peak_mb']:,.0f} "
                    f"({other['peak_mb']:,.0f} MB vs {binned['peak_mb']:.1f} MB)")
        rel = (binned["distortion"] - exact["distortion"]) / exact["distortion"]
        say(f"  relative distortion difference (binned - exact) / exact: {rel:+.2e}")
    for target, budget in budgets.items():
        run = rows[f"solve (tol={args.tol:g})", target]
        fast = run["seconds"] <= 0.5 and run["peak_mb"] <= 200 and run["rss_peak_mb"] - run[
            "rss_before_mb"] <= 200
        say(f"target {target:.0%}: cost {(budget - run['cost']) / budget:.3%} under the budget "
            f"(tol {args.tol:.1%}), never over; {run['seconds']:.2f} s wall, "
            f"{run['peak_mb']:.1f} MB traced peak: {'meets' if fast else 'MISSES'} "
            "the 0.5 s / 200 MB target")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
