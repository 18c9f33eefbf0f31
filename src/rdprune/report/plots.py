"""Figures of the report (PNG), drawn with matplotlib's object API (no pyplot, no global backend).

Each function takes the report's tidy frames and an output folder and returns the file names it
wrote. A per-group figure is named ``<base>.png`` when there is one group, else
``<base>_<group>.png``.
"""

from __future__ import annotations

from typing import Any

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rdprune.report.runs import method_rank, target_label

log = logging.getLogger(__name__)

DPI = 130


def _name(base: str, key: tuple, many: bool) -> str:
    return f"{base}_{'_'.join(str(k) for k in key)}.png" if many else f"{base}.png"


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    return name


def _series_label(label: str, schedule: str, finetune: str, several: bool) -> str:
    return f"{label} ({schedule}, {finetune})" if several else label


def _color(label: str) -> Any:
    """One colour per method in every figure (tab20, the registry's order); variants share
    their method's colour."""
    from rdprune.methods.registry import methods

    order = list(methods())
    base = str(label).split(" (")[0]
    return matplotlib.colormaps["tab20"](order.index(base) % 20) if base in order else None


def _ordered(g: pd.DataFrame, by: list[str]) -> list:
    """``g.groupby(by)`` with the label (first key) in the report's method order."""
    return sorted(g.groupby(by, sort=True), key=lambda kv: (method_rank(kv[0][0]), kv[0]))


def top1_vs_sparsity(runs: pd.DataFrame, out: Path) -> list[str]:
    """Top-1 vs target sparsity per method (mean, std error bars), dense top-1 dashed; runs with
    a FLOPs target have no place on this axis and are left out."""
    files = []
    if "target_kind" in runs:
        runs = runs[runs["target_kind"] != "flops"]
    groups = list(runs.groupby(["model", "dataset"], sort=True))
    for key, g in groups:
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        several = g.groupby(["schedule", "finetune"]).ngroups > 1
        styles = {k: ls for k, ls in zip(sorted(set(zip(g.schedule, g.finetune))),
                                        ["-", "--", ":", "-."] * 4)}
        for (label, schedule, finetune), s in _ordered(g, ["label", "schedule", "finetune"]):
            stats = s.groupby("target")["top1"].agg(["mean", "std"]).sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                        capsize=3, color=_color(label), linestyle=styles[(schedule, finetune)],
                        label=_series_label(label, schedule, finetune, several))
        dense = g["dense_top1"].mean()
        if not np.isnan(dense):
            ax.axhline(dense, color="0.3", linestyle="--", linewidth=1,
                       label=f"dense ({dense:.2f})")
        ax.set_xlabel("target sparsity (% of prunable weights removed)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{key[0]} on {key[1]}: top-1 vs sparsity (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files.append(_save(fig, out, _name("top1_vs_sparsity", key, len(groups) > 1)))
    return files


def metric_vs_sparsity(runs: pd.DataFrame, out: Path, metric: str = "perplexity") -> list[str]:
    """``metric`` vs target sparsity per method (mean, std error bars; log scale), one panel per
    within-layer criterion, the dense model's value dashed: the language-model figure."""
    files = []
    runs = runs[(runs["target_kind"] == "sparsity") & runs[metric].notna()]
    groups = list(runs.groupby(["model", "dataset", "schedule", "finetune"], sort=True))
    for key, g in groups:
        criteria = sorted(g["criterion"].unique(), key=lambda c: c != "magnitude")
        fig = Figure(figsize=(5.2 * len(criteria), 4.4))
        axes = fig.subplots(1, len(criteria), sharey=True, squeeze=False)[0]
        for ax, crit in zip(axes, criteria):
            sub = g[g["criterion"] == crit]
            for (method,), s in sorted(sub.groupby(["method"]), key=lambda kv: method_rank(
                    kv[0][0])):
                stats = s.groupby("target")[metric].agg(["mean", "std"]).sort_index()
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0),
                            marker="o", markersize=4, capsize=3, color=_color(method),
                            linewidth=2.2 if method.startswith("ours") else 1.2, label=method)
            dense = sub[f"dense_{metric}"].mean() if f"dense_{metric}" in sub else np.nan
            if not np.isnan(dense):
                ax.axhline(dense, color="0.3", linestyle="--", linewidth=1,
                           label=f"dense ({dense:.2f})")
            ax.set_yscale("log")
            ax.set_xlabel("target sparsity (% of prunable weights removed)")
            ax.set_title(f"criterion: {crit}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel(f"{metric} (lower is better, log scale)")
        axes[-1].legend(fontsize=8)
        fig.suptitle(f"{key[0]} on {key[1]}: {metric} vs sparsity (mean ± std over seeds)")
        files.append(_save(fig, out, _name(f"{metric}_vs_sparsity", key, len(groups) > 1)))
    return files


def layer_sparsity(layers: pd.DataFrame, out: Path, max_panels: int = 6) -> list[str]:
    """Per-layer sparsity per method, one panel per target (the highest ``max_panels``)."""
    if layers.empty:
        return []
    files = []
    groups = list(layers.groupby(["model", "dataset", "schedule", "finetune"], sort=True))
    for key, g in groups:
        kinds = g["target_kind"] if "target_kind" in g else pd.Series("sparsity", g.index)
        targets = sorted(set(zip(kinds, g["target"])), key=lambda kt: (kt[0] != "flops", kt[1]))
        targets = targets[-max_panels:]  # sparsity targets last: the highest are kept
        n_layers = int(g["position"].max()) + 1
        fig = Figure(figsize=(max(6.4, 0.18 * n_layers + 2), 2.6 * len(targets) + 1.2))
        axes = fig.subplots(len(targets), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (kind, t) in zip(axes, targets):
            sub = g[(kinds == kind) & (g["target"] == t)]
            for (label,), s in _ordered(sub, ["label"]):
                mean = s.groupby(["position", "name"])["sparsity"].mean().reset_index()
                ax.plot(mean["position"], 100 * mean["sparsity"], marker="o", markersize=3,
                        linewidth=1, color=_color(label), label=label)
            ax.set_ylabel("sparsity (%)")
            ax.set_title(f"target {target_label(t, kind)}", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        names = g.drop_duplicates("position").sort_values("position")["name"].tolist()
        step = max(1, len(names) // 40)  # at most ~40 tick labels stay readable
        axes[-1].set_xticks(range(0, len(names), step))
        axes[-1].set_xticklabels(names[::step], rotation=90, fontsize=7)
        axes[-1].set_xlabel("layer (model order)")
        axes[0].legend(fontsize=8, ncol=3)
        fig.suptitle(f"Per-layer sparsity: {' / '.join(map(str, key))}")
        files.append(_save(fig, out, _name("layer_sparsity", key, len(groups) > 1)))
    return files


def rd_curves(runs: pd.DataFrame, out: Path) -> list[str]:
    """RD curves of one run per model/dataset (ours first, highest target, lowest seed)."""
    if "has_curves" not in runs:
        return []
    with_curves = runs[runs["has_curves"].astype(bool)]
    files = []
    groups = list(with_curves.groupby(["model", "dataset"], sort=True))
    for key, g in groups:
        r = g.assign(_ours=g["method"] != "ours").sort_values(
            ["_ours", "target", "seed"], ascending=[True, False, True]).iloc[0]
        try:
            with np.load(Path(r["run_dir"]) / "rd_curves.npz", allow_pickle=False) as z:
                curves, grid, chosen = z["curves"], z["grid"], z["chosen"]
        except (OSError, KeyError, ValueError) as e:  # a damaged file must not stop the report
            log.warning("skipping %s/rd_curves.npz: %s", r["run_dir"], e)
            continue
        fig = Figure(figsize=(6.8, 4.4))
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["viridis"]
        scale = 100 if grid.max() <= 1.0 + 1e-9 else 1  # grid and chosen as fractions -> %
        for i, curve in enumerate(curves):
            c = cmap(i / max(1, len(curves) - 1))
            y = np.where(curve > 0, curve, np.nan)
            ax.plot(scale * grid, y, color=c, linewidth=0.8)
            if i < len(chosen):
                yc = np.interp(chosen[i], grid, curve)
                if yc > 0:
                    ax.plot(scale * chosen[i], yc, marker="o", color=c, markeredgecolor="k",
                            markersize=4)
        ax.set_yscale("log")
        ax.set_xlabel("layer sparsity (%)")
        ax.set_ylabel("output distortion (log scale)")
        ax.set_title(f"RD curves: {key[0]} / {key[1]}, {r['label']} {r['schedule']} @ "
                     f"{target_label(r['target'], r.get('target_kind', 'sparsity'))} "
                     f"(seed {r['seed']}, last round); dots = chosen",
                     fontsize=9)
        sm = ScalarMappable(cmap=cmap, norm=Normalize(0, max(1, len(curves) - 1)))
        bar = fig.colorbar(sm, ax=ax, label="layer index (input → output)")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        ax.grid(alpha=0.3, which="both")
        files.append(_save(fig, out, _name("rd_curves", key, len(groups) > 1)))
    return files


def additivity(add: pd.DataFrame, out: Path) -> list[str]:
    """Joint distortion vs sum of single-layer distortions, log-log, y = x, colour = sparsity."""
    pos = add[(add["joint"] > 0) & (add["sum_single"] > 0)]
    if pos.empty:
        log.warning("additivity.csv has no positive distortions to plot on log axes")
        return []
    fig = Figure(figsize=(5.4, 5.0))
    ax = fig.add_subplot()
    markers = dict(zip(sorted(pos["kind"].astype(str).unique()), "osD^v<>"))
    for (s, kind), g in pos.groupby(["sparsity", pos["kind"].astype(str)]):
        label = f"sparsity {s:g}" + (f" ({kind})" if len(markers) > 1 else "")
        ax.scatter(g["sum_single"], g["joint"], s=14, alpha=0.75, label=label,
                   marker=markers.get(kind, "o"))
    lo = min(pos["joint"].min(), pos["sum_single"].min()) / 1.5
    hi = max(pos["joint"].max(), pos["sum_single"].max()) * 1.5
    ax.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("sum of single-layer distortions")
    ax.set_ylabel("joint distortion (layers pruned together)")
    ax.set_title("Additivity of layer-wise output distortion")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return [_save(fig, out, "additivity.png")]


def rounds(rounds: pd.DataFrame, out: Path) -> list[str]:
    """Iterative runs: top-1 vs cumulative sparsity, round by round, per method; dotted = right
    after pruning, solid = after the round's fine-tune (means over seeds)."""
    files = []
    kinds = rounds["target_kind"] if "target_kind" in rounds else "sparsity"
    groups = list(rounds.assign(_kind=kinds).groupby(
        ["model", "dataset", "schedule", "finetune", "target", "_kind"], sort=True))
    for key, g in groups:
        key = key[:-1] if key[-1] == "sparsity" else key  # file names as before FLOPs targets
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        for (label,), s in _ordered(g, ["label"]):
            stats = s.groupby("round")[["achieved_sparsity", "pruned_top1", "top1"]].mean()
            x = 100 * stats["achieved_sparsity"]
            ax.plot(x, stats["top1"], marker="o", color=_color(label), label=label)
            ax.plot(x, stats["pruned_top1"], marker=".", linestyle=":", color=_color(label))
        ax.set_xlabel("sparsity after the round (% of prunable weights removed)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{key[0]} on {key[1]}, {key[2]}: each round "
                     "(dotted: after pruning, solid: after fine-tune)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files.append(_save(fig, out, _name("rounds", key, len(groups) > 1)))
    return files
