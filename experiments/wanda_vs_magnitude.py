"""Why does Wanda help uniform, LAMP and ERK on the offline LM but not the RD allocation?

On each dense model (both offline LLaMAs, the ``lm_compare`` dense models of ``--replicates``,
calibration draw 0) at ``--target``, the RD allocation is computed from curves measured with
each criterion (magnitude or Wanda: the curves' criterion) and each allocation is then pruned by
each criterion (the pruning criterion), the sequential protocol as the runs: a 2 x 2 that
separates what the criterion does to the curves (and so to the allocation) from what it does to
the pruning. Beside them uniform with each criterion, and for each allocation: the largest layer
sparsity, the mean sparsity of the attention and MLP linears, and the measured joint output
distortion over the sum the curves predict (1 = additive). Then what Wanda's metric has to work
with, per dense model (one pass over the calibration set): the spread of each layer's input
feature norms ||X_j|| (max / median: LLMs' outlier features give 10-100x), the share of the
weights magnitude and Wanda both remove at the target (uniform over the layers), and the spread of
the per-output-row sparsity under magnitude (Wanda fixes every row to the layer's sparsity).

    python experiments/wanda_vs_magnitude.py --threads 2   # -> results/wanda_vs_magnitude/
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


def env(model: str, replicate: int, out: Path, threads: int | None):
    """The lm_compare dense model of ``model`` and ``replicate`` (trained or cached)."""
    from rdprune.run.pipeline import dense_stage
    from rdprune.run.setup import setup

    overrides = ["experiment=lm_compare", f"model={model}", f"replicate={replicate}", "seed=0",
                 "device=cpu"] + ([f"threads={threads}"] if threads else [])
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
    run = setup(cfg)
    dense_stage(run)
    return run


def study(run, target: float) -> list[dict]:
    from rdprune.methods.rd.distortion import joint
    from rdprune.methods.registry import method
    from rdprune.pruning.criteria import measure
    from rdprune.run.pipeline import problem as make_problem
    from rdprune.training.train import predict

    calib = run.data.calibration()
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    reference = predict(run.model, calib, 16, run.device)
    rd = method("ours", options={k: v for k, v in run.cfg.rd.items()
                                 if k not in ("shards", "shard")})
    allocs, curves = {}, {}
    for crit in ("magnitude", "wanda"):
        prob = make_problem(run, target, masks, measure(crit, run.model, run.layers, calib,
                                                        batch_size=16))
        prob.progress = False
        alloc = rd.allocate(prob)
        allocs[f"ours, {crit} curves"], curves[crit] = dict(alloc), alloc
    allocs["uniform"] = {k: target for k in run.layers}
    rows = []
    for label, sparsities in allocs.items():
        s = np.array(list(sparsities.values()))
        attn = np.mean([v for k, v in sparsities.items() if "self_attn" in k])
        mlp = np.mean([v for k, v in sparsities.items() if ".mlp." in k])
        for crit in ("magnitude", "wanda"):
            model = copy.deepcopy(run.model)
            layers = {k: model.get_submodule(k) for k in run.layers}
            run.task.prune(model, layers, sparsities, crit, calib, batch_size=16)
            measured = joint(reference, predict(model, calib, 16, run.device))["mean"]
            source = curves.get(crit)
            predicted = float(sum(np.interp(sparsities[k], source.grid, row) for k, row in
                                  zip(run.layers, source.curves))) if source is not None else \
                np.nan
            rows.append({"allocation": label, "pruning criterion": crit,
                         "perplexity": run.data.evaluate(model, run.device)["perplexity"],
                         "max layer sparsity": float(s.max()), "attention mean": attn,
                         "mlp mean": mlp, "measured / predicted distortion": measured / predicted
                         if source is not None and label.endswith(f"{crit} curves") else np.nan})
    return rows


def statistics(run, target: float) -> dict:
    """Medians over the layers of: max / median input norm, the share of magnitude's pruned
    weights Wanda prunes too, and the std of the per-row sparsity of magnitude's mask."""
    from rdprune.pruning.criteria import Criterion, measure

    wanda = measure("wanda", run.model, run.layers, run.data.calibration(), batch_size=16)
    spread, overlap, rows = [], [], []
    for name, module in run.layers.items():
        norms = wanda.norms[name].double()
        spread.append(float(norms.max() / norms.median().clamp(min=1e-30)))
        by_magnitude = ~Criterion().mask(name, module, target)
        by_wanda = ~wanda.mask(name, module, target)
        overlap.append(float((by_magnitude & by_wanda).sum() / by_magnitude.sum()))
        rows.append(float(by_magnitude.double().mean(dim=1).std()))
    return {"norm max / median": float(np.median(spread)),
            "worst layer's norm max / median": float(np.max(spread)),
            "pruned by both / by magnitude": float(np.median(overlap)),
            "std of row sparsity (magnitude)": float(np.median(rows))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "wanda_vs_magnitude"))
    p.add_argument("--target", type=float, default=0.7)
    p.add_argument("--replicates", default="0,1,2")
    p.add_argument("--models", default="hf_lm,hf_lm12")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--statistics-only", action="store_true",
                   help="keep the 2 x 2 of an earlier run (its runs.csv); redo the statistics")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    frames, stats = [], []
    for model in args.models.split(","):
        for r in (int(x) for x in args.replicates.split(",")):
            run = env(model, r, out, args.threads)
            stats.append({"model": model, "replicate": r, **statistics(run, args.target)})
            if not args.statistics_only:
                frames.append(pd.DataFrame(study(run, args.target)).assign(model=model,
                                                                            replicate=r))
    if args.statistics_only:
        df = pd.read_csv(out / "runs.csv")
    else:
        df = pd.concat(frames, ignore_index=True)
        df.to_csv(out / "runs.csv", index=False, float_format="%.5g")
    st = pd.DataFrame(stats)
    st.to_csv(out / "statistics.csv", index=False, float_format="%.5g")
    mean = df.groupby(["model", "allocation", "pruning criterion"], sort=False).mean(
        numeric_only=True).drop(columns="replicate").reset_index()
    command = "python experiments/wanda_vs_magnitude.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    lines = ["| model | allocation | pruning criterion | perplexity | max layer sparsity | "
             "attention mean | MLP mean | measured / predicted |", "|---|---|---|---|---|---|---|---|"]
    for r in mean.itertuples(index=False):
        ratio = "" if pd.isna(r[7]) else f"{r[7]:.2f}"
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:.3f} | "
                     f"{r[6]:.3f} | {ratio} |")
    cols = [c for c in st.columns if c not in ("model", "replicate")]
    per_model = st.groupby("model", sort=False)[cols].mean()
    lines += ["", "What Wanda's metric has to work with (medians over the layers, then the mean over "
              f"the dense models; `statistics.csv`), at {args.target:.0%} in every layer:", "",
              "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for model, r in per_model.iterrows():
        lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in r) + " |")
    (out / "README.md").write_text(
        f"# Wanda and magnitude, curves and pruning\n\nMade by `{command}` in "
        f"{time.perf_counter() - start:.0f} s"
        + (" (the 2 x 2 read from the `runs.csv` of an earlier run without the flag)"
           if args.statistics_only else "") + ". Mean over the dense models "
        f"(replicates {args.replicates}), target {args.target:.0%}, calibration draw 0, the "
        f"sequential protocol; `runs.csv` per dense model.\n\n" + "\n".join(lines) + "\n")
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
