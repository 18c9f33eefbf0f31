"""Profiling cost and curve error of every RD-curve estimator against the exact fast path.

For one trained model of the pipeline (default: the offline language model of ``model=hf_lm
dataset=text``, trained once and cached like any run's) this measures, in one run and on the same
calibration set: the FLOPs of profiling (``torch.utils.flop_counter``: every matmul, the Gram
pass and the closed forms included) and its wall time, per estimator, and the ratio to the exact
fast path; and each estimator's curves against the exact ones: per layer, the Spearman rank
correlation of the curve over the grid and its median relative error (over grid points 5-95%).

    python experiments/bench_estimators.py                          # offline LM, magnitude
    python experiments/bench_estimators.py prune.criterion=wanda
    python experiments/bench_estimators.py experiment=quickstart    # digits ResNet-32

Arguments are config overrides, as ``run.py`` takes them. The report goes to stdout and, with
``--out``, to a file (``results/bench_estimators*.txt``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from scipy.stats import spearmanr
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]

#: estimator label -> rd.* settings (tokens as a fraction of the calibration set's)
ESTIMATORS = {
    "exact": {},
    "exact, 1/2 tokens": {"tokens": 0.5},
    "exact, 1/4 tokens": {"tokens": 0.25},
    "exact, 1/8 tokens": {"tokens": 0.125},
    "exact, 1/16 tokens": {"tokens": 0.0625},
    "exact, 17 points": {"points": 17},
    "exact, 9 points": {"points": 9},
    "exact, 5 points": {"points": 5},
    "exact, 3 points": {"points": 3},
    "exact, bfloat16": {"precision": "bfloat16"},
    "local, 1 anchor": {"estimator": "local", "points": 1},
    "local, 2 anchors": {"estimator": "local"},
    "local, 3 anchors": {"estimator": "local", "points": 3},
    "local, 4 anchors": {"estimator": "local", "points": 4},
    "local, 2 anchors, 1/4 tokens": {"estimator": "local", "tokens": 0.25},
    "local, 2 anchors, 1/8 tokens": {"estimator": "local", "tokens": 0.125},
    "local, 3 anchors, 1/4 tokens": {"estimator": "local", "points": 3, "tokens": 0.25},
    "local, 3 anchors, 1/8 tokens (LM default)": {"estimator": "local", "points": 3,
                                                  "tokens": 0.125},
    "local, 2 anchors, 1/4 tokens, bfloat16": {"estimator": "local", "tokens": 0.25,
                                               "precision": "bfloat16"},
}


def setup(overrides: list[str]):
    """The run's model (dense, trained or loaded from the cache), layers and problem."""
    from rdprune.run.pipeline import dense_stage, problem
    from rdprune.run.setup import setup as run_setup

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        # the offline LM unless an experiment (e.g. quickstart) names its own model and data
        base = [] if any(o.startswith("experiment=") for o in overrides) else \
            ["model=hf_lm", "dataset=text"]
        cfg = compose("config", overrides=[*base, "device=cpu", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "logs" / "bench_estimators")
    run = run_setup(cfg)
    dense_stage(run)
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    return cfg, run, problem(run, run.spec.targets[0], masks)


def measure(cfg, prob, settings: dict) -> tuple[np.ndarray, float, float]:
    """Curves, FLOPs and seconds of one estimator (no cache: every curve measured here)."""
    from rdprune.methods.registry import method

    options = {k: v for k, v in cfg.rd.items() if k not in ("shards", "shard")}
    # every row starts from the exact reference, whatever estimator the config defaults to
    options.update(estimator="exact", points=None, tokens=None, precision=None)
    settings = dict(settings)
    if isinstance(settings.get("tokens"), float):  # a fraction of the calibration tokens
        calib = prob.calibration  # (token ids [N, T]; images [N, C, H, W]: samples)
        total = len(calib) if calib.is_floating_point() else calib.numel()
        settings["tokens"] = max(1, int(settings["tokens"] * total))
    rd = method(cfg.method.name if cfg.method.name.startswith("ours") else "ours",
                options={**options, **settings})
    grid = np.linspace(0.0, 1.0, rd.grid_points)
    prob.progress = False
    with FlopCounterMode(display=False) as counter:
        start = time.perf_counter()
        curves = rd.measure(prob, grid, rd.inputs(prob))
        seconds = time.perf_counter() - start
    return curves, float(counter.get_total_flops()), seconds


def compare(curves: np.ndarray, exact: np.ndarray, grid: np.ndarray) -> tuple[float, float, float]:
    """Median over layers of the Spearman correlation with the exact curve and of the median
    relative error over grid points 5-95%; and the worst layer's relative error."""
    inner = (grid >= 0.05) & (grid <= 0.95)
    rho, rel = [], []
    for c, e in zip(curves, exact):
        rho.append(spearmanr(c[inner], e[inner]).statistic)
        rel.append(float(np.median(np.abs(c[inner] - e[inner]) / np.maximum(e[inner], 1e-30))))
    return float(np.median(rho)), float(np.median(rel)), float(np.max(rel))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides (as run.py takes them)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, run, prob = setup(args.overrides)
    lines = [f"# python experiments/bench_estimators.py {' '.join(args.overrides)}".rstrip(),
             f"# {cfg.model_name} on {cfg.dataset.name}: {len(run.layers)} prunable layers, "
             f"calibration {tuple(prob.calibration.shape)}, criterion {cfg.prune.criterion}, "
             f"grid {cfg.rd.grid_points} points, {torch.get_num_threads()} threads",
             f"{'estimator':<44}{'GFLOP':>10}{'x fewer':>9}{'seconds':>9}{'x faster':>9}"
             f"{'Spearman':>10}{'rel.err':>9}{'worst':>8}"]
    grid = np.linspace(0.0, 1.0, int(cfg.rd.grid_points))
    exact = None
    for label, settings in ESTIMATORS.items():
        curves, flops, seconds = measure(cfg, prob, settings)
        if exact is None:
            exact, base_flops, base_seconds = curves, flops, seconds
        rho, rel, worst = compare(curves, exact, grid)
        lines.append(f"{label:<44}{flops / 1e9:>10.2f}{base_flops / flops:>9.1f}"
                     f"{seconds:>9.2f}{base_seconds / seconds:>9.1f}{rho:>10.3f}{rel:>9.3f}"
                     f"{worst:>8.3f}")
        print(lines[-1], flush=True)
    load = os.getloadavg()
    lines.append(f"# FLOPs: torch.utils.flop_counter over profiling (the Gram pass and closed forms "
                 f"included); seconds: wall time on this machine, load average at end "
                 f"{load[0]:.2f}; curve errors against exact over grid points 5-95%")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
