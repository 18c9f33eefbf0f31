"""Tables and figures from run directories: ``python -m rdprune.report RUN_DIRS... --out DIR``.

Finds every run below the given directories (a directory with ``metrics.json``; a Hydra job
directory, ``.hydra/``, without one is a failed or incomplete job), loads them into one tidy
DataFrame (one row per run) and writes, as Markdown, LaTeX (booktabs) and CSV:

- ``paper_table``: the paper's layout, one row per (model, dataset, method, schedule, fine-tune,
  target), mean ± std over seeds, published numbers (:mod:`rdprune.published`) beside, the
  measured dense top-1 against the published one, and the protocol that produced the runs
  (:mod:`rdprune.protocol`: official, custom, none; unknown for runs older than the record);
- ``baselines`` / ``baselines_distortion[_mean]``: methods x target sparsities per (model,
  dataset, schedule, fine-tune) group, best per column in bold, absent cells "missing" (never 0);
- ``layer_sparsity``: per-layer sparsity (%) by method, per group and target sparsity;
- ``rounds`` (iterative runs only): top-1 after pruning and after fine-tuning, round by round;

plus ``runs.csv``, ``failed.md``, figures (:mod:`rdprune.plots`) and a ``README.md`` holding the
command. Statistics: mean over seeds, std with ddof=1, no ± for a single seed. If the same config
and seed appear twice (a re-run), only the newest run counts (``superseded`` in ``runs.csv``);
cells that average runs of different configs are named in README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rdprune.errors import UserError
from rdprune.published import DISPLAY, TOLERANCE_PP, dense_top1, match
from rdprune.runs import (  # noqa: F401 - re-exported for callers of the report API
    CELL,
    GROUP,
    collect,
    collect_additivity,
    complete,
    load_layers,
    load_rounds,
    method_rank,
    target_label,
)
from rdprune.tables import (  # noqa: F401 - re-exported for callers of the report API
    MISSING,
    NA,
    Table,
    pm,
    tex_escape,
    to_latex,
    to_markdown,
    write_tables,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# tables


def pct(target: float) -> str:
    """A target sparsity in percent as a column label: 90 -> '90%', 98.847 -> '98.85%'."""
    return f"{round(float(target), 2):g}%"


def _display(name: str) -> str:
    return DISPLAY.get(name, name)


def _num(x: Any, fmt: str) -> str:
    return NA if x is None or pd.isna(x) else format(x, fmt)


def _protocol_cell(g: pd.DataFrame) -> tuple[str, list[str]]:
    """The protocol of a cell's runs ("mixed: ..." when they differ) and the custom differences."""
    names = sorted(set(g["protocol"])) if "protocol" in g else ["unknown"]
    diffs = g.loc[g["protocol"] == "custom", "protocol_differences"].dropna() \
        if "protocol_differences" in g and "protocol" in g else pd.Series(dtype=object)
    text = names[0] if len(names) == 1 else "mixed: " + ", ".join(names)
    return text, sorted(set(diffs))


def paper_table(df: pd.DataFrame, failed: Iterable[dict[str, Any]] = ()) -> Table:
    """The paper's layout, one row per cell, with the published numbers beside where they exist,
    the measured dense top-1 against the published one, and the protocol of the cell's runs."""
    runs = complete(df)
    nfail = pd.Series([tuple(f.get(c) for c in CELL) for f in failed], dtype=object).value_counts()
    data, cells, custom = [], [], []
    for key, g in runs.groupby(CELL, sort=False):
        cell = dict(zip(CELL, key))
        top1 = g["top1"].dropna()
        n, mean, std = len(top1), top1.mean(), top1.std(ddof=1)
        dense = g["dense_top1"].mean()
        pub = match(cell["model"], cell["dataset"], cell["schedule"], cell["target"],
                    g["method"].iloc[0], g["variant"].iloc[0])
        pub_dense = dense_top1(cell["model"], cell["dataset"])
        protocol, diffs = _protocol_cell(g)
        k_fail = int(nfail.get(key, 0))
        row = {**cell, "method": g["method"].iloc[0], "variant": g["variant"].iloc[0],
               "sparsity": 100 * g["achieved_sparsity"].mean(),
               "flops_remaining": g["flops_remaining"].mean() if "flops_remaining" in g
               else np.nan, "top1_mean": mean,
               "top1_std": std, "seeds": n, "failed": k_fail, "dense_top1": dense,
               "diff": mean - dense}
        for f in ("sparsity", "flops", "top1", "top1_std", "dense", "diff"):
            row[f"paper_{f}"] = getattr(pub, f) if pub else None
        row.update(published_dense=pub_dense,
                   dense_gap=dense - pub_dense if pub_dense is not None else np.nan,
                   protocol=protocol, protocol_differences="; ".join(diffs))
        data.append(row)
        if diffs:
            custom.append(f"{_display(cell['model'])} / {_display(cell['dataset'])} / "
                          f"{cell['label']} @ {target_label(cell['target'], cell['target_kind'])}"
                          f": {'; '.join(diffs)}")
        cells.append({
            "Model": _display(cell["model"]), "Dataset": _display(cell["dataset"]),
            "Method": cell["label"], "Schedule": cell["schedule"], "Fine-tune": cell["finetune"],
            "Sparsity (%)": _num(row["sparsity"], ".2f"),
            "FLOPs remaining (%)": _num(row["flops_remaining"], ".2f"),
            "Top-1": pm(mean, std, n), "Dense": _num(dense, ".2f"),
            "diff": _num(row["diff"], "+.2f"),
            "Seeds": f"{n}" + (f" ({k_fail} failed)" if k_fail else ""),
            "Paper sparsity (%)": _num(row["paper_sparsity"], "g"),
            "Paper FLOPs (%)": _num(row["paper_flops"], "g"),
            "Paper Top-1": (pm(pub.top1, pub.top1_std or np.nan, 2 if pub.top1_std else 1)
                            if pub else NA),
            "Paper dense": _num(row["paper_dense"], ".2f"),
            "Paper diff": _num(row["paper_diff"], "+.2f"),
            "Dense: measured / paper": (f"{_num(dense, '.2f')} / {pub_dense:.2f} "
                                        f"({_num(row['dense_gap'], '+.2f')})"
                                        if pub_dense is not None else NA),
            "Protocol": protocol,
        })
    notes = [
        "Top-1: test accuracy (%) after the last round, mean ± std over seeds (std with ddof=1; "
        "a single seed shows no ±); Seeds = n. Sparsity: achieved, mean over seeds. "
        "diff = mean top-1 - mean dense top-1.",
        "Paper columns: official README of Xu et al. (ICCV 2023), method ours, matched by model, "
        f"dataset, schedule and target sparsity within {TOLERANCE_PP} pp; {NA} = none published.",
        "Dense: measured / paper: the mean measured dense top-1 against the published dense top-1 "
        "of the model and dataset (any method), gap in brackets.",
        "Protocol: official = the official code's recipe for the model and dataset "
        "(results/protocol.md), deliberate bug fixes aside; custom = some setting differs; "
        "none = no official recipe; unknown = run recorded before protocols were.",
    ]
    notes += [f"Custom protocol, {c}." for c in custom]
    return Table("Top-1 after pruning (paper layout)", pd.DataFrame(cells), pd.DataFrame(data),
                 notes=notes, left=5, key="paper_table")


#: metric -> (description, higher is better, mean formatter, with ± std)
METRICS = {
    "top1": ("Top-1 (%) on the test set after the last round", True, "{:.2f}", True),
    "pruned_top1": ("Top-1 (%) right after pruning, before fine-tuning", True, "{:.2f}", True),
    "joint_distortion_worst": ("Joint output distortion of the last pruning round on the "
                               "calibration set (worst case: max per-sample MSE of the logits, "
                               "before fine-tuning), mean over seeds", False, "{:.3g}", False),
    "joint_distortion_mean": ("Joint output distortion of the last pruning round on the "
                              "calibration set (mean MSE of the logits, before fine-tuning), "
                              "mean over seeds", False, "{:.3g}", False),
}


def baseline_table(df: pd.DataFrame, metric: str = "top1",
                   failed: Iterable[dict[str, Any]] = ()) -> dict[str, Table]:
    """Methods x targets, one table per (model, dataset, schedule, fine-tune) group.

    A cell no completed run fills (the method lacks that target, or its jobs failed) reads
    ``missing``; the best value per column (of at least two) is bold. Columns are target
    sparsities, then FLOPs targets ("FLOPs kept x%").

    Returns:
        ``{group slug: Table}``, e.g. ``{"resnet32_digits_oneshot_adamw": ...}``.
    """
    what, higher, fmt, with_std = METRICS.get(metric, (metric, True, "{:.4g}", True))
    runs = complete(df)
    failed = [f for f in failed if all(f.get(c) is not None and not pd.isna(f.get(c))
                                       for c in CELL)]
    keys = pd.DataFrame([{c: f[c] for c in CELL} for f in failed], columns=CELL)
    if not runs.empty:
        keys = pd.concat([runs[CELL], keys], ignore_index=True)
    out = {}
    for gkey, g in keys.groupby(GROUP, sort=True):
        slug = "_".join(str(k) for k in gkey)
        sel = runs[(runs[GROUP] == pd.Series(gkey, index=GROUP)).all(axis=1)] if len(runs) else runs
        agg = ["mean", "std", "count"]
        stats = (sel.groupby(["label", "target", "target_kind"])[metric].agg(agg) if len(sel)
                 else pd.DataFrame(columns=agg))
        labels = sorted(g["label"].unique(), key=method_rank)
        # one column per target, sparsity targets first; a FLOPs target reads "FLOPs kept x%"
        targets = sorted(set(zip(g["target"], g["target_kind"])),
                         key=lambda tk: (tk[1] != "sparsity", tk[0]))
        heads = {tk: target_label(*tk) for tk in targets}
        data, cells, bold, seeds, missing, failures = [], [], set(), {}, [], []
        for lab in labels:
            cells.append({"Method": lab})
            for t, kind in targets:
                head = heads[(t, kind)]
                m, s, n = (stats.loc[(lab, t, kind)] if (lab, t, kind) in stats.index
                           else (np.nan, np.nan, 0))
                n = int(n)
                k_fail = sum(1 for f in failed
                             if tuple(f[c] for c in CELL) == (*gkey, lab, t, kind))
                data.append({**dict(zip(GROUP, gkey)), "method": lab,
                             "target_sparsity": t if kind == "sparsity" else np.nan,
                             "target_flops_kept": t if kind == "flops" else np.nan,
                             "column": head, "metric": metric, "mean": m, "std": s, "seeds": n,
                             "failed": k_fail})
                if k_fail:
                    failures.append(f"{lab} @ {head} ({k_fail})")
                if n == 0:
                    cells[-1][head] = MISSING
                    missing.append(f"{lab} @ {head}")
                else:
                    cells[-1][head] = (pm(m, s, n, 2) if with_std else fmt.format(m))
                    seeds[(lab, head)] = n
        table = pd.DataFrame(cells, columns=["Method", *heads.values()])
        data = pd.DataFrame(data)
        for head in heads.values():
            col = data[(data.column == head) & (data.seeds > 0)]
            if len(col) >= 2:
                shown = col["mean"].map(lambda v: float(fmt.format(v)))
                best = shown.max() if higher else shown.min()
                for lab in col.loc[shown == best, "method"]:
                    bold.add((labels.index(lab), head))
        data["best"] = [(labels.index(r.method), r.column) in bold for r in data.itertuples()]
        counts = sorted(set(seeds.values()))
        common = max(counts, key=list(seeds.values()).count) if counts else 0
        notes = [f"{what}" + (", mean ± std over seeds (ddof=1; one seed: no ±)" if with_std
                              else "") + f"; {'higher' if higher else 'lower'} is better, "
                 "best per column in bold.",
                 f"Seeds per cell: n={common}" + "".join(
                     f"; {lab} @ {head}: n={n}" for (lab, head), n in seeds.items()
                     if n != common) + "."]
        if missing:
            notes.append(f"{MISSING}: no completed run for " + ", ".join(missing) + ".")
        if failures:
            notes.append("Failed or incomplete jobs (see failed.md): " + ", ".join(failures) + ".")
        title = " / ".join(str(k) for k in gkey)
        out[slug] = Table(title, table, data, bold, notes, left=1, key=slug)
    return out


def _slug(group: tuple, target: float, kind: str) -> str:
    """A table key: the group, then ``_s<target>`` (sparsity) or ``_f<target>`` (FLOPs kept)."""
    return "_".join(map(str, group)) + f"_{'f' if kind == 'flops' else 's'}{target:g}"


def _target_columns(target: float, kind: str) -> dict[str, float]:
    return {"target_sparsity" if kind == "sparsity" else "target_flops_kept": target}


def layer_table(df: pd.DataFrame, layers: pd.DataFrame | None = None) -> dict[str, Table]:
    """Per-layer sparsity (%) by method: rows = layers in model order, columns = methods.

    One table per (model, dataset, schedule, fine-tune, target sparsity); values are means over
    seeds; the last row is the whole model.
    """
    layers = load_layers(df) if layers is None else layers
    out: dict[str, Table] = {}
    if layers.empty:
        return out
    for key, g in layers.groupby(GROUP + ["target_kind", "target"], sort=True):
        group, kind, target = key[:-2], key[-2], key[-1]
        first = g[g.run_dir == g.run_dir.iloc[0]].sort_values("position")
        labels = sorted(g["label"].unique(), key=method_rank)
        mean = g.groupby(["name", "label"])["sparsity"].mean().unstack("label") * 100
        per_run = g.groupby(["label", "run_dir"])[["kept", "weights"]].sum()
        total = (100 * (1 - per_run.kept / per_run.weights)).groupby("label").mean()
        cells = first[["name", "type", "shape", "weights"]].rename(columns=str.title)
        cells = cells.rename(columns={"Name": "Layer"}).astype(str).reset_index(drop=True)
        for lab in labels:
            cells[lab] = [_num(mean.loc[n, lab], ".2f") for n in first["name"]]
        cells.loc[len(cells)] = ["all layers", "", "", str(int(first["weights"].sum())),
                                 *[_num(total[lab], ".2f") for lab in labels]]
        data = g.groupby(["position", "name", "type", "shape", "weights", "label"])["sparsity"] \
            .agg(["mean", "count"]).reset_index().rename(columns={"mean": "sparsity",
                                                                  "count": "seeds"})
        data = data.assign(**dict(zip(GROUP, group)), **_target_columns(target, kind))
        slug = _slug(group, target, kind)
        title = " / ".join(group) + f" @ {target_label(target, kind)}"
        out[slug] = Table(title, cells, data, notes=[
            "Sparsity (%) of each prunable layer (weights removed), mean over seeds; "
            "last row: all prunable weights."], left=3, key=slug)
    return out


def rounds_table(rounds: pd.DataFrame) -> dict[str, Table]:
    """Iterative runs round by round: rows = methods, one column per round (its target).

    A cell reads ``after prune → after fine-tune`` (top-1 %, mean over seeds; ± on the final
    one). One table per (model, dataset, schedule, fine-tune, final target sparsity).
    """
    out: dict[str, Table] = {}
    if rounds.empty:
        return out
    for key, g in rounds.groupby(GROUP + ["target_kind", "target"], sort=True):
        group, kind, target = key[:-2], key[-2], key[-1]
        g = g.assign(**{c: g.get(c, np.nan) for c in ("target_sparsity", "target_flops_kept")})
        stats = g.groupby(["label", "round"]).agg(
            target_sparsity=("target_sparsity", "mean"),
            target_flops_kept=("target_flops_kept", "mean"), achieved_sparsity=(
                "achieved_sparsity", "mean"), pruned_top1=("pruned_top1", "mean"),
            top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("top1", "count"),
        ).reset_index()
        labels = sorted(stats["label"].unique(), key=method_rank)
        first = stats.groupby("round")[["target_sparsity", "target_flops_kept"]].first()
        if kind == "flops":  # older FLOPs runs wrote the MACs removed as the round's sparsity
            kept = first["target_flops_kept"].fillna(1 - first["target_sparsity"])
            cols = {r: f"r{r} ({target_label(100 * v, kind)})" for r, v in kept.items()}
        else:
            cols = {r: f"r{r} ({pct(100 * t)})" for r, t in first["target_sparsity"].items()}
        cells = []
        for lab in labels:
            row = {"Method": lab}
            for _, s in stats[stats.label == lab].iterrows():
                row[cols[s["round"]]] = (f"{s['pruned_top1']:.2f} → "
                                         f"{pm(s['top1'], s['top1_std'], int(s['seeds']), 2)}")
            cells.append(row)
        table = pd.DataFrame(cells, columns=["Method", *cols.values()]).fillna(MISSING)
        data = stats.assign(**dict(zip(GROUP, group)), final_target=target, target_kind=kind)
        slug = _slug(group, target, kind)
        title = " / ".join(group) + f" to {target_label(target, kind)}"
        out[slug] = Table(title, table, data, notes=[
            "Each round: top-1 (%) right after pruning → after that round's fine-tune, mean over "
            "seeds (± std of the latter, ddof=1); column = round and its cumulative target."],
            left=1, key=slug)
    return out


# --------------------------------------------------------------------------------------------
# the report


def rel(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when below it (portable committed reports)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def write_failed(out: Path, failed: list[dict[str, Any]]) -> None:
    """failed.md: each failed or incomplete job with its overrides and error message."""
    lines = ["# Failed and incomplete jobs", ""]
    if not failed:
        lines.append("None: every job found has a metrics.json.")
    for f in failed:
        ov = " ".join(f.get("overrides") or []) or "(no overrides)"
        lines.append(f"- **{f['status']}** `{rel(f['path'])}`  \n  overrides: `{ov}`  \n"
                     f"  message: {f['message']}")
    (out / "failed.md").write_text("\n".join(lines) + "\n")


def log_wandb(out: Path, runs: pd.DataFrame, tables: dict[str, pd.DataFrame],
              images: list[Path], project: str, group: str | None, command: str) -> None:
    """Log the tables (and figures) into one W&B run, job_type "report", in the sweep's group.

    The mode follows ``WANDB_MODE``; unset and without credentials it is offline.
    """
    import wandb

    from rdprune.loggers import wandb_has_credentials

    mode = os.environ.get("WANDB_MODE") or (None if wandb_has_credentials() else "offline")
    if group is None and "experiment" in runs:
        group = "+".join(sorted(runs["experiment"].dropna().astype(str).unique())) or None
    run = wandb.init(project=project, group=group, job_type="report", dir=str(out), mode=mode,
                     config={"command": command, "runs": len(runs)}, reinit="finish_previous")
    try:
        logged: dict[str, Any] = {}
        for name, t in tables.items():
            nested = [c for c in t.columns if t[c].map(lambda v: isinstance(v, (list, dict))).any()]
            t = t.drop(columns=nested)
            t = t.astype(object).where(t.notna(), None)
            logged[name] = wandb.Table(columns=[str(c) for c in t.columns], data=t.values.tolist())
        logged.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in images})
        run.log(logged)  # one step: every table and figure side by side
    finally:
        run.finish()


def write_report(dirs: Iterable[str | os.PathLike], out: str | os.PathLike, wandb: bool = False,
                 project: str = "rdprune", group: str | None = None,
                 command: str | None = None) -> dict[str, Any]:
    """Collect the runs below ``dirs`` and write every table, figure and README.md into ``out``.

    Returns:
        ``{"runs", "failed", "files"}``: the runs DataFrame, the failed jobs, the file names.
    """
    from rdprune import plots

    dirs = [str(d) for d in dirs]
    runs, failed = collect(dirs)
    additivity = collect_additivity(dirs)
    if runs.empty and not failed and additivity.empty:
        raise UserError(f"no run directories (metrics.json or .hydra/) found under {dirs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if not runs.empty:
        runs.to_csv(out / "runs.csv", index=False)
        files.append("runs.csv")
        paper = paper_table(runs, failed)
        files += write_tables(out, "paper_table", [paper], "Reproduced vs published")
        base = {m: baseline_table(runs, m, failed) for m in
                ("top1", "joint_distortion_worst", "joint_distortion_mean")}
        names = {"top1": "baselines", "joint_distortion_worst": "baselines_distortion",
                 "joint_distortion_mean": "baselines_distortion_mean"}
        for m, tabs in base.items():
            files += write_tables(out, names[m], list(tabs.values()), f"Baselines: {m}")
        layers = load_layers(runs)
        files += write_tables(out, "layer_sparsity", list(layer_table(runs, layers).values()),
                              "Per-layer sparsity (%) by method")
        rounds = load_rounds(runs)
        if not rounds.empty:
            files += write_tables(out, "rounds", list(rounds_table(rounds).values()),
                                  "Iterative pruning round by round")
            files += plots.rounds(rounds, out)
        files += plots.top1_vs_sparsity(complete(runs), out)
        files += plots.layer_sparsity(layers, out)
        files += plots.rd_curves(complete(runs), out)
    if not additivity.empty:
        add = additivity_table(additivity)
        files += write_tables(out, "additivity", [add], "Additivity of layer distortions")
        files += plots.additivity(additivity, out)
    write_failed(out, failed)
    files.append("failed.md")
    if command is None:
        command = ("python -c 'from rdprune.report import write_report; "
                   f"write_report({dirs!r}, {str(out)!r})'")
    n_sup = int(runs["superseded"].sum()) if not runs.empty else 0
    summary = (f"{len(runs) - n_sup} runs, {len(failed)} failed "
               f"({sum(f['status'] == 'incomplete' for f in failed)} of them incomplete)"
               + (f", {n_sup} superseded duplicates ignored" if n_sup else ""))
    mixed = []
    if not runs.empty and "config_id" in runs:
        ids = complete(runs).groupby(CELL)["config_id"].nunique()
        mixed = [" / ".join(map(str, k)) for k, v in ids.items() if v > 1]
        if mixed:
            log.warning("cells mixing different configs (see README.md): %s", "; ".join(mixed))
    write_readme(out, command, dirs, summary, files, mixed)
    if wandb:
        tables = {"runs": runs}
        if not runs.empty:
            if not rounds.empty:
                tables["rounds"] = rounds
            tables.update(paper_table=paper.data, layer_sparsity=layers,
                          **{names[m]: pd.concat([t.data for t in tabs.values()])
                             for m, tabs in base.items() if tabs})
        if failed:
            tables["failed"] = pd.DataFrame(failed).assign(
                overrides=[" ".join(f.get("overrides") or []) for f in failed])
        if not additivity.empty:
            tables["additivity"] = additivity
        log_wandb(out, runs, tables, [out / f for f in files if f.endswith(".png")],
                  project, group, command)
    print(f"report: {summary} -> {rel(out)}", flush=True)
    return {"runs": runs, "failed": failed, "files": files}


def additivity_table(add: pd.DataFrame) -> Table:
    """Per kind and sparsity: subsets measured and the joint / sum-of-singles ratio."""
    add = add.assign(ratio=add["joint"] / add["sum_single"])
    data = add.groupby(["kind", "sparsity"])["ratio"].agg(
        subsets="count", median="median", min="min", max="max").reset_index()
    cells = pd.DataFrame({"Kind": data["kind"].astype(str),
                          "Sparsity": data["sparsity"].map(lambda s: f"{s:g}"),
                          "Subsets": data["subsets"].astype(str),
                          "Median joint / sum": data["median"].map(lambda v: f"{v:.3f}"),
                          "Range": [f"{a:.3f}–{b:.3f}" for a, b in zip(data["min"], data["max"])]})
    return Table("Joint distortion vs sum of single-layer distortions", cells, data, notes=[
        "Ratio 1 = exactly additive. Sparsity as written in additivity.csv."], left=2,
        key="additivity")


DESCRIPTIONS = {
    "runs": "one row per run (metrics.json fields, run_dir, overrides, superseded)",
    "paper_table": "the paper's layout, mean ± std over seeds, published numbers beside, "
                   "measured vs published dense top-1, the protocol of the runs",
    "baselines": "top-1 per method x target sparsity, per model/dataset/schedule/fine-tune",
    "baselines_distortion": "the same with the joint distortion (worst case), lower is better",
    "baselines_distortion_mean": "the same with the joint distortion (mean MSE)",
    "layer_sparsity": "per-layer sparsity (%) by method",
    "rounds": "iterative runs round by round: top-1 after pruning and after fine-tuning",
    "additivity": "joint vs summed single-layer distortions",
    "top1_vs_sparsity": "top-1 vs target sparsity per method, dense as a dashed line",
    "rd_curves": "per-layer rate-distortion curves, chosen sparsities marked",
    "failed": "failed and incomplete jobs with overrides and messages",
}


def write_readme(out: Path, command: str, dirs: list[str], summary: str, files: list[str],
                 mixed: list[str]) -> None:
    """README.md: how the folder was made and what each file holds."""
    lines = [f"# Report: {out.name}", "", "Made by:", "", f"    {command}", "",
             f"Input: {', '.join(rel(d) for d in dirs)}: {summary}.", "",
             "| File | Contents |", "|---|---|"]
    for f in files + ["README.md"]:
        stem = Path(f).stem
        desc = next((d for k, d in sorted(DESCRIPTIONS.items(), key=lambda kv: -len(kv[0]))
                     if stem == k or stem.startswith(k + "_")), "this file")
        lines.append(f"| `{f}` | {desc} |")
    if mixed:
        lines += ["", "Warning: these cells average runs whose configs differ beyond the seed "
                  "(see config_id in runs.csv): " + "; ".join(mixed)]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rdprune.report RUN_DIRS... --out DIR [--wandb]``."""
    p = argparse.ArgumentParser(prog="python -m rdprune.report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run, sweep or log directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--wandb", action="store_true", help="also log the tables to W&B")
    p.add_argument("--wandb-project", default="rdprune", help="W&B project")
    p.add_argument("--group", default=None, help="W&B group (default: the runs' experiment)")
    args = p.parse_args(argv)
    command = "python -m rdprune.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        write_report(args.dirs, args.out, wandb=args.wandb, project=args.wandb_project,
                     group=args.group, command=command)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
