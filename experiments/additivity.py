"""Additivity of pruning distortions on the digits ResNet-32 (the paper's Figure 1).

On the trained dense model of ``experiment=digits_oneshot`` (obtained exactly as the pipeline does:
trained once, then loaded from ``--cache-dir``), prune the same magnitude sparsity s in a set of
layers and compare the joint output distortion with the sum of the single-layer distortions:

- every pair of consecutive prunable layers (l, l+1), in the project's layer order;
- ``--subsets`` random subsets (seeded, the same for every s) of 3, 5 and 10 layers, and all layers;

for s in {0.1, 0.2, 0.5, 0.8}. Inputs: the fixed calibration set (256 training digits, evaluation
transforms); reference: the dense model's logits. Distortion ``mean`` = mean over samples and
logits of the squared logit error (primary), ``worst`` = max over samples of the per-sample MSE.

Writes to ``--out``: ``additivity.csv`` (one row per subset and sparsity), ``summary.csv`` (Pearson
r of joint vs sum on log and linear scale, median and 10/90th percentile of joint/sum, per kind,
subset size and sparsity), ``layers.csv`` (layer index -> name), ``additivity.png``, ``README.md``.

    python experiments/additivity.py                 # ~1 min once the dense model is cached
    python experiments/additivity.py --cache-dir /path/to/.cache --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on a busy CPU

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rdprune.methods.rd.additivity import agreement, measure, num_forwards, random_subsets
from rdprune.methods.rd.distortion import joint
from rdprune.run.pipeline import dense_stage, setup
from rdprune.training.train import predict

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.1, 0.2, 0.5, 0.8)
SIZES = (3, 5, 10, 0)  # 0 = all layers
MARKERS = {2: "o", 3: "^", 5: "s", 10: "D"}  # by subset size; all layers: "*"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=None,
                   help="stage cache (default: the config's paths.cache_dir, .cache)")
    p.add_argument("--out", default=str(ROOT / "results" / "additivity"), help="output folder")
    p.add_argument("--subsets", type=int, default=20, help="random subsets per size")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def dense_env(cache_dir: str | None, out: Path, threads: int | None,
              experiment: str = "digits_oneshot", extra: tuple[str, ...] = ()):
    """An experiment's config (default digits_oneshot), its env, and the dense model trained or
    loaded from cache."""
    overrides = [f"experiment={experiment}", "device=cpu", f"paths.output_dir={out}", *extra]
    if cache_dir is not None:
        overrides.append(f"paths.cache_dir={Path(cache_dir).resolve()}")
    if threads:
        overrides.append(f"threads={threads}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    run = setup(cfg)
    return run, dense_stage(run)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Agreement stats per metric, kind (pair / subset / all), subset size and sparsity."""
    rows = []
    for metric, (x, y) in {"mean": ("sum_single", "joint"),
                           "worst": ("sum_single_worst", "joint_worst")}.items():
        groups = [("pair", "any", df[df.kind == "pair"]),
                  ("subset", "any", df[df.kind == "subset"]),
                  *[("subset", str(n), g) for n, g in df[df.kind == "subset"].groupby("size")],
                  ("all", "any", df)]
        for kind, size, g in groups:
            for s in [*sorted(g.sparsity.unique()), "all"]:
                h = g if s == "all" else g[g.sparsity == s]
                rows.append({"metric": metric, "kind": kind, "size": size, "sparsity": s,
                             **agreement(h[x].to_numpy(), h[y].to_numpy())})
    return pd.DataFrame(rows)


def table(summary: pd.DataFrame, metric: str = "mean") -> str:
    """The summary of one metric as fixed-width text."""
    cols = ["kind", "size", "sparsity", "n", "pearson_log", "pearson_lin", "median_ratio",
            "p10_ratio", "p90_ratio"]
    return summary[summary.metric == metric][cols].to_string(
        index=False, float_format=lambda v: f"{v:.3f}")


def plot(df: pd.DataFrame, summary: pd.DataFrame, path: Path, n_layers: int,
         zero_level: dict[str, float]) -> None:
    """Joint vs sum of single-layer distortions (log-log, one panel per metric), and joint/sum
    against the number of pruned layers. ``zero_level``: each metric's distortion when the pruned
    logits are all zero (how large a collapsed output's distortion is)."""
    fig = Figure(figsize=(16, 5.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.9]})
    sparsities = sorted(df.sparsity.unique())
    colors = {s: f"C{i}" for i, s in enumerate(sparsities)}
    for ax, (metric, x, y) in zip(axes, [("mean", "sum_single", "joint"),
                                         ("worst", "sum_single_worst", "joint_worst")]):
        for (s, size), g in df.groupby(["sparsity", "size"]):
            ax.scatter(g[x], g[y], s=90 if size == n_layers else 22, alpha=0.75,
                       c=colors[s], marker=MARKERS.get(size, "*"), linewidths=0)
        lo = min(df[x].min(), df[y].min()) / 2
        hi = max(df[x].max(), df[y].max()) * 2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.axhline(zero_level[metric], color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
               xlabel=f"sum of single-layer distortions ({metric})",
               ylabel=f"joint distortion ({metric})")
        ax.grid(True, which="major", alpha=0.3)
        sel = summary[(summary.metric == metric) & (summary.kind == "all")]
        overall = sel[sel.sparsity == "all"].iloc[0]
        per_s = sel[sel.sparsity != "all"]
        ax.set_title(
            f"{metric}: all points r(log) = {overall.pearson_log:.3f}, "
            f"median joint/sum = {overall.median_ratio:.2f}\n"
            f"per s = {', '.join(f'{float(v):g}' for v in per_s.sparsity)}: "
            f"r(log) = {', '.join(f'{v:.2f}' for v in per_s.pearson_log)}\n"
            f"median joint/sum = {', '.join(f'{v:.2f}' for v in per_s.median_ratio)}",
            fontsize=9.5)
    # ratio vs number of pruned layers: median and 10-90th percentile per (sparsity, size)
    ax = axes[2]
    sizes = sorted(df["size"].unique())
    span = [np.inf, 0.0]
    for k, s in enumerate(sparsities):
        g = df[df.sparsity == s].assign(ratio=lambda d: d.joint / d.sum_single)
        q = g.groupby("size").ratio.quantile([0.1, 0.5, 0.9]).unstack()
        xs = np.array(q.index, float) * (1 + 0.04 * (k - 1.5))  # small offsets: no overlap
        span = [min(span[0], q[0.1].min()), max(span[1], q[0.9].max())]
        ax.errorbar(xs, q[0.5], yerr=[q[0.5] - q[0.1], q[0.9] - q[0.5]], color=colors[s],
                    marker="o", ms=4, capsize=2, lw=1.2)
    ax.axhline(1, color="k", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="layers pruned at once",
           ylabel="joint / sum of single-layer distortions")
    ax.set_xticks(sizes, [str(v) for v in sizes])
    ticks = [0.25, 0.35, 0.5, 0.7, 1, 1.4, 2, 3, 4, 6]
    ax.set_ylim(span[0] / 1.15, span[1] * 1.15)
    ticks = [v for v in ticks if span[0] / 1.15 <= v <= span[1] * 1.15]
    ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    ax.set_title("mean distortion: joint / sum of singles,\nmedian and 10-90th percentile per "
                 "sparsity and subset size", fontsize=9.5)
    handles = [Line2D([], [], ls="", marker="o", color=colors[s], label=f"s = {s:g}")
               for s in sparsities]
    handles += [Line2D([], [], ls="", marker=m, color="grey",
                       label="consecutive pair" if n == 2 else f"random {n} layers")
                for n, m in MARKERS.items()]
    handles += [Line2D([], [], ls="", marker="*", color="grey", ms=10,
                       label=f"all {n_layers} layers"),
                Line2D([], [], ls="--", color="k", label="joint = sum"),
                Line2D([], [], ls=":", color="grey", label="pruned logits all 0")]
    fig.legend(handles=handles, loc="lower center", ncol=6, frameon=False, fontsize=9)
    fig.suptitle("Additivity of pruning distortion: ResNet-32 on digits (16x16), the same "
                 "magnitude sparsity s in every pruned layer, 256 calibration images")
    fig.tight_layout(rect=(0, 0.09, 1, 0.96))
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    env, dense = dense_env(args.cache_dir, out, args.threads)
    dense_wall = time.perf_counter() - wall
    print(f"dense model ready in {dense_wall:.0f} s (training took {dense['seconds']:.0f} s, "
          f"maybe in an earlier run), test top-1 {dense['top1']:.2f} %", flush=True)

    names = list(env.layers)
    n = len(names)
    subsets = [("pair", (i, i + 1)) for i in range(n - 1)]
    subsets += [("subset", s) for s in random_subsets(
        n, [k or n for k in SIZES], args.subsets, args.seed)]
    inputs = env.data.calibration()
    forwards = num_forwards([s for _, s in subsets], SPARSITIES)
    print(f"{n} prunable layers, {len(subsets)} subsets x {len(SPARSITIES)} sparsities: "
          f"{forwards} forward passes of {len(inputs)} calibration images", flush=True)

    start = time.perf_counter()
    rows = measure(env.model, env.layers, inputs, subsets, SPARSITIES,  # resumable per item
                   batch_size=env.data.eval_batch_size, device=env.device,
                   cache_dir=env.cache_dir)
    seconds = time.perf_counter() - start
    df = pd.DataFrame(rows)
    summary = summarize(df)
    df.to_csv(out / "additivity.csv", index=False, float_format="%.6g")
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    pd.DataFrame({"index": range(n), "name": names,
                  "weights": [m.weight.numel() for m in env.layers.values()]}
                 ).to_csv(out / "layers.csv", index=False)
    reference = predict(env.model, inputs, env.data.eval_batch_size, env.device)
    zero = joint(reference, torch.zeros_like(reference))
    plot(df, summary, out / "additivity.png", n, zero)

    text = table(summary)
    timing = (f"{forwards} forwards in {seconds:.1f} s ({seconds / forwards:.3f} s each); "
              f"total {time.perf_counter() - wall:.1f} s, of which {dense_wall:.1f} s getting the "
              f"dense model (training it took {dense['seconds']:.0f} s once, then cached); "
              f"{torch.get_num_threads()} threads\n"
              f"distortion of all-zero logits (collapsed output): mean {zero['mean']:.3g}, "
              f"worst {zero['worst']:.3g}")
    print(text, timing, sep="\n")
    command = " ".join(["python experiments/additivity.py", *(argv if argv is not None
                                                               else sys.argv[1:])])
    (out / "README.md").write_text(
        "# Additivity of pruning distortions (paper Figure 1), digits ResNet-32\n\n"
        f"Made by `{command}`.\n\n"
        f"Dense model: experiment=digits_oneshot, test top-1 {dense['top1']:.2f} %. "
        f"{n} prunable layers; {len(subsets)} subsets ({n - 1} consecutive pairs, random subsets "
        f"of {', '.join(str(k or n) for k in SIZES)} layers, seed {args.seed}) x sparsities "
        f"{', '.join(map(str, SPARSITIES))}.\n\n{timing}.\n\n"
        "Mean distortion (mean over samples and logits of squared logit error); ratio = "
        "joint / sum of single-layer distortions:\n\n"
        f"```\n{text}\n```\n\nThe same for `worst` and more in `summary.csv`.\n")


if __name__ == "__main__":
    main()
