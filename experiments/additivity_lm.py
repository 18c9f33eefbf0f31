"""Additivity on a language model: the paper's Figure 1 on the offline LLaMA, per layer and per
block, and whether the additive model's errors matter for the DP's choices.

EvoPress (Sieberling et al., ICML 2025) argues that on LLMs the end-to-end error of pruning several
layers does not follow the sum of the per-layer errors. Here, on the dense LM of
``experiment=lm_text_oneshot`` (trained once, then loaded from the cache; seed 0's calibration draw,
32 x 128 tokens):

1. **Additivity** (as ``experiments/additivity.py`` on the digits ResNet-32): prune the same
   sparsity s in a set of units and compare the joint output distortion with the sum of the
   single-unit distortions. Units: the linear layers (consecutive pairs, ``--subsets`` random
   subsets of 3, 7 and 14 layers, all of them) and the decoder blocks (pairs, triples, all; at most
   100 of each); s in {0.3, 0.7} (low, high); criterion magnitude and Wanda.
2. **Does it matter for the DP?** At each target 50/60/70/80 %: the RD curves (21 points, mean
   distortion), then allocations: ours (the DP), uniform, global magnitude, LAMP, ERK, OWL, DLP,
   AlphaPruning, ATP (beta on the validation split), EvoPress (its search on the calibration KL),
   and ``--perturbations`` random perturbations of ours with the same number of weights
   removed. For each: the distortion the additive model predicts (the curves interpolated
   at its sparsities, summed), the measured joint distortion and the validation perplexity.
   Reported per target: Spearman's rank correlation of predicted and measured, and the rank of the
   DP's allocation among them by measured distortion and by perplexity.

Distortion ``mean`` (mean squared logit error over sequences, tokens and vocabulary) is primary;
``worst`` is in the CSV files.

    python experiments/additivity_lm.py --threads 1     # the 4-block LM (dense LM cached)
    python experiments/additivity_lm.py --threads 1 --experiment lm_compare \
        --override model=hf_lm12 --out results/additivity_lm12   # the 12-block LM
    -> results/additivity_lm/{additivity.csv, summary.csv, dp_check.csv, dp_summary.csv,
       additivity_lm.png, README.md}
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on a busy CPU

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from rdprune.pruning.statistics import input_norms
from rdprune.methods.rd.additivity import measure, random_subsets
from rdprune.api import make_method, prune
from rdprune.methods.rd.distortion import joint
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import num_pruned
from rdprune.methods.problem import Problem
from rdprune.tasks import task_of
from rdprune.models.lm import block_index
from rdprune.training.train import predict

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.3, 0.7)
TARGETS = (0.5, 0.6, 0.7, 0.8)
#: EvoPress's generations (None: its scaled rule, 400 x layers / 224)
EVOPRESS_GENERATIONS: int | None = None
#: every other allocation the DP's is measured against (EvoPress: its scaled search)
BASELINES = ("uniform", "global_magnitude", "lamp", "erk", "owl", "dlp", "alpha_pruning", "atp",
             "evopress")


def digits_study():
    """experiments/additivity.py (the digits study): its dense_env, summarize and table."""
    spec = importlib.util.spec_from_file_location("additivity", ROOT / "experiments" /
                                                  "additivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=None, help="stage cache (default: the config's)")
    p.add_argument("--out", default=str(ROOT / "results" / "additivity_lm"))
    p.add_argument("--subsets", type=int, default=10, help="random layer subsets per size")
    p.add_argument("--perturbations", type=int, default=8, help="random variants of ours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--experiment", default="lm_text_oneshot",
                   help="the experiment whose dense LM is studied (trained once, cached)")
    p.add_argument("--evopress-generations", type=int, default=None,
                   help="EvoPress's generations (default: its scaled rule)")
    p.add_argument("--override", action="append", default=[],
                   help="config overrides of that experiment (repeatable), e.g. model=hf_lm12")
    return p.parse_args(argv)


def curve_at(curves: np.ndarray, grid: np.ndarray, sparsities: list[float]) -> float:
    """The additive model's prediction: each layer's curve interpolated at its sparsity."""
    return float(sum(np.interp(s, grid, row) for row, s in zip(curves, sparsities)))


def perturbed(base: list[float], sizes: list[int], rng: np.random.Generator) -> list[float]:
    """``base`` with weights moved between random pairs of layers (as many removed in all)."""
    removed = [num_pruned(n, s) for n, s in zip(sizes, base)]
    for _ in range(6):
        i, j = rng.choice(len(sizes), 2, replace=False)
        room = min(removed[i], sizes[j] - removed[j])
        move = int(rng.uniform(0.2, 1.0) * min(room, 0.15 * min(sizes[i], sizes[j])))
        removed[i] -= move
        removed[j] += move
    return [r / n for r, n in zip(removed, sizes)]


def dp_check(env, crit: Criterion, inputs, reference, rng, perturbations: int) -> list[dict]:
    """Predicted vs measured distortion and validation perplexity of allocations per target."""
    model, layers, data = env.model, env.layers, env.data
    names, sizes = list(layers), [m.weight.numel() for m in layers.values()]
    rows = []
    for target in TARGETS:
        problem = Problem(model=model, layers=layers, target=target, budget="params",
                          pruned=[0] * len(layers), macs=None, calibration=inputs, task=task_of(model),
                          cache_dir=env.cache_dir, device=env.device, progress=False,
                          criterion=crit)
        problem.validate = validation_loss(env, crit)  # ATP's beta, on the validation split
        ours = make_method("ours", grid_points=21, reduction="mean", batch_size=16)
        alloc = ours.allocate(problem)
        candidates = {"ours": list(alloc.values())}
        for name in BASELINES:
            options = {"generations": EVOPRESS_GENERATIONS} if name == "evopress" else {}
            candidates[name] = list(make_method(name, **options).allocate(problem).values())
        for k in range(perturbations):
            candidates[f"ours, perturbed {k}"] = perturbed(candidates["ours"], sizes, rng)
        for label, sparsities in candidates.items():
            pruned_model = copy.deepcopy(model)
            # the statistics of the model as given, as the curves were measured
            prune(pruned_model, dict(zip(names, sparsities)), criterion=crit, sequential=False)
            measured = joint(reference, predict(pruned_model, inputs, 16, env.device))
            ppl = data.evaluate(pruned_model, env.device, split="validation")["perplexity"]
            rows.append({"criterion": crit.name, "target": target, "allocation": label,
                         "predicted": curve_at(alloc.curves, alloc.grid, sparsities),
                         "measured": measured["mean"], "measured_worst": measured["worst"],
                         "validation_perplexity": ppl})
    return rows


def validation_loss(env, crit: Criterion):
    """``{layer: sparsity} -> validation NLL`` of a copy of the dense model pruned so."""
    def loss(sparsities: dict[str, float]) -> float:
        model = copy.deepcopy(env.model)
        prune(model, sparsities, criterion=crit, sequential=False)
        return env.data.evaluate(model, env.device, split="validation")["nll"]

    return loss


def dp_summary(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (crit, target), g in df.groupby(["criterion", "target"]):
        rho = spearmanr(g["predicted"], g["measured"]).statistic
        rho_ppl = spearmanr(g["predicted"], g["validation_perplexity"]).statistic
        rank = g["measured"].rank().loc[g["allocation"] == "ours"].iloc[0]
        rank_ppl = g["validation_perplexity"].rank().loc[g["allocation"] == "ours"].iloc[0]
        best = g.loc[g["validation_perplexity"].idxmin(), "allocation"]
        ours = g.loc[g["allocation"] == "ours"].iloc[0]
        out.append({"criterion": crit, "target": target, "allocations": len(g),
                    "spearman_predicted_measured": rho, "spearman_predicted_ppl": rho_ppl,
                    "ours_rank_measured": int(rank), "ours_rank_ppl": int(rank_ppl),
                    "best_ppl": best, "ours_measured_over_predicted":
                    ours["measured"] / ours["predicted"]})
    return pd.DataFrame(out)


def plot(add: pd.DataFrame, dp: pd.DataFrame, path: Path, calibration: str, blocks: int,
         layers: int) -> None:
    fig = Figure(figsize=(16, 5.4))
    axes = fig.subplots(1, 3)
    colors = {0.3: "C0", 0.7: "C3"}
    markers = {"magnitude": "o", "wanda": "^"}
    for ax, unit in zip(axes[:2], ["layer", "block"]):
        sub = add[add.unit == unit]
        for (crit, s), g in sub.groupby(["criterion", "sparsity"]):
            ax.scatter(g.sum_single, g.joint, s=18, alpha=0.7, c=colors[s],
                       marker=markers[crit], linewidths=0, label=f"{crit}, s = {s:g}")
        lo = min(sub.sum_single.min(), sub.joint.min()) / 2
        hi = max(sub.sum_single.max(), sub.joint.max()) * 2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
               xlabel=f"sum of single-{unit} distortions (mean)", ylabel="joint distortion")
        ax.set_title(f"per {unit}: joint vs sum", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for (crit, target), g in dp[dp.criterion == "wanda"].groupby(["criterion", "target"]):
        other = g[g.allocation != "ours"]
        ax.scatter(other.predicted, other.measured, s=16, alpha=0.6, label=f"{target:.0%}")
        o = g[g.allocation == "ours"]
        ax.scatter(o.predicted, o.measured, s=90, marker="*", c="k")
    ax.set(xscale="log", yscale="log", xlabel="predicted (sum of curves at the allocation)",
           ylabel="measured joint distortion")
    ax.set_title("allocations at 50-80% (Wanda): predicted vs measured\n(* = the DP's, ours)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="target", fontsize=8)
    fig.suptitle(f"Additivity on the offline LLaMA ({blocks} blocks, {layers} linears), "
                 f"{calibration} calibration tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> None:
    global EVOPRESS_GENERATIONS
    args = parse_args(argv)
    EVOPRESS_GENERATIONS = args.evopress_generations
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    study = digits_study()
    env, dense = study.dense_env(args.cache_dir, out, args.threads, args.experiment,
                                 ("seed=0", *args.override))
    summarize, table = study.summarize, study.table
    names = list(env.layers)
    n = len(names)
    blocks = sorted({block_index(k) for k in names})
    block_units = [[i for i, k in enumerate(names) if block_index(k) == b] for b in blocks]
    layer_subsets = [("pair", (i, i + 1)) for i in range(n - 1)]
    layer_subsets += [("subset", s) for s in random_subsets(n, [3, 7, 14, n], args.subsets,
                                                            args.seed)]
    block_subsets = [("subset", s) for s in random_subsets(len(blocks), [2, 3, len(blocks)],
                                                           100, args.seed)]
    inputs = env.data.calibration()
    norms = input_norms(env.model, env.layers, inputs, device=env.device)
    frames = []
    for crit in (Criterion(), Criterion("wanda", norms)):
        for unit, units, subsets in (("layer", None, layer_subsets),
                                     ("block", block_units, block_subsets)):
            rows = measure(env.model, env.layers, inputs, subsets, SPARSITIES, batch_size=16,
                           device=env.device, cache_dir=env.cache_dir, units=units,
                           criterion=crit, progress=False)
            frames.append(pd.DataFrame(rows).assign(unit=unit, criterion=crit.name))
    add = pd.concat(frames, ignore_index=True)
    summary = pd.concat([summarize(g).assign(unit=u, criterion=c)
                         for (u, c), g in add.groupby(["unit", "criterion"])], ignore_index=True)
    reference = predict(env.model, inputs, 16, env.device)
    rng = np.random.default_rng(args.seed)
    dp = pd.DataFrame([r for crit in (Criterion(), Criterion("wanda", norms))
                       for r in dp_check(env, crit, inputs, reference, rng,
                                         args.perturbations)])
    dps = dp_summary(dp)
    add.to_csv(out / "additivity.csv", index=False, float_format="%.6g")
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    dp.to_csv(out / "dp_check.csv", index=False, float_format="%.6g")
    dps.to_csv(out / "dp_summary.csv", index=False, float_format="%.4f")
    plot(add, dp, out / "additivity_lm.png", " x ".join(map(str, inputs.shape)), len(blocks), n)
    seconds = time.perf_counter() - wall
    command = " ".join(["python experiments/additivity_lm.py",
                        *(argv if argv is not None else sys.argv[1:])])
    tables = "\n\n".join(
        f"{unit} / {crit}:\n```\n{table(g)}\n```"
        for (unit, crit), g in summary.groupby(["unit", "criterion"]))
    (out / "README.md").write_text(
        "# Additivity on the offline language model\n\n"
        f"Made by `{command}` in {seconds:.0f} s ({torch.get_num_threads()} threads; the dense "
        f"LM loaded from the cache, its test perplexity {dense['perplexity']:.2f}).\n\n"
        f"{n} linear layers in {len(blocks)} blocks; sparsities {SPARSITIES}; ratio = joint / sum "
        "of single-unit distortions (mean distortion):\n\n"
        f"{tables}\n\nDoes it matter for the DP's choices (`dp_summary.csv`):\n\n"
        f"```\n{dps.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n```\n")
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
