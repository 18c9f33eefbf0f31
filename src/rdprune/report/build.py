"""Tables and figures from run directories: ``python -m rdprune.report RUN_DIRS... --out DIR``.

Finds every run below the given directories (a directory with ``metrics.json``; a Hydra job
directory, ``.hydra/``, without one is a failed or incomplete job), loads them into one tidy
DataFrame (one row per run) and writes, as Markdown, LaTeX (booktabs) and CSV:

- ``paper_table``: the paper's layout, one row per (model, dataset, method, schedule, fine-tune,
  target), mean ± std over seeds, published numbers (:mod:`rdprune.report.published`) beside, the
  measured dense top-1 against the published one, and the protocol that produced the runs
  (:mod:`rdprune.report.protocol`: official, custom, none; unknown for runs older than the record);
- ``baselines`` / ``baselines_distortion[_mean]``: methods x targets per (model, dataset,
  schedule, fine-tune) group, absent cells "missing" (never 0), bold = best under the paired
  tie rule of :mod:`rdprune.report.stats` (≈: tied with the column's leader);
- ``paired``: each method's top-1 minus a reference's (``--reference``; default the best
  baseline of each column) over runs sharing seed and dense model, with 95% intervals;
- ``layer_sparsity``: per-layer sparsity (%) by method, per group and target;
- ``rounds`` (iterative runs only): top-1 after pruning and after fine-tuning, round by round;

plus ``runs.csv``, ``failed.md``, figures (:mod:`rdprune.report.plots`) and a ``README.md`` holding the
command. Statistics: mean over seeds, std with ddof=1, no ± for a single seed. If the same config
and seed appear twice (a re-run), only the newest run counts (``superseded`` in ``runs.csv``);
cells that average runs of different configs are named in README.md.

About 390 lines: the paper table (with its published, dense and protocol columns) and the
command that writes everything; the other tables are in :mod:`rdprune.report.tables`.
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

from rdprune.tasks import metric_directions
from rdprune.errors import UserError
from rdprune.report.published import DISPLAY, TOLERANCE_PP, dense_top1, match
from rdprune.report.runs import (  # noqa: F401 - re-exported for callers of the report API
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
from rdprune.report.tables import (  # noqa: F401 - re-exported for callers of the report API
    clipping_table,
    MISSING,
    NA,
    Table,
    additivity_table,
    baseline_table,
    layer_table,
    num,
    paired_table,
    pct,
    pm,
    rounds_table,
    tex_escape,
    to_latex,
    to_markdown,
    write_tables,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# the paper table (the other tables: rdprune.report.tables)


def _display(name: str) -> str:
    return DISPLAY.get(name, name)


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
                    g["method"].iloc[0]) if cell["label"] == g["method"].iloc[0] else None
        pub_dense = dense_top1(cell["model"], cell["dataset"])
        protocol, diffs = _protocol_cell(g)
        k_fail = int(nfail.get(key, 0))
        row = {**cell, "method": g["method"].iloc[0],
               "sparsity": 100 * g["achieved_sparsity"].mean(),
               "flops_kept": 100 * g["flops_kept"].mean(), "top1_mean": mean,
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
            "Sparsity (%)": num(row["sparsity"], ".2f"),
            "FLOPs remaining (%)": num(row["flops_kept"], ".2f"),
            "Top-1": pm(mean, std, n), "Dense": num(dense, ".2f"),
            "diff": num(row["diff"], "+.2f"),
            "Seeds": f"{n}" + (f" ({k_fail} failed)" if k_fail else ""),
            "Paper sparsity (%)": num(row["paper_sparsity"], "g"),
            "Paper FLOPs (%)": num(row["paper_flops"], "g"),
            "Paper Top-1": (pm(pub.top1, pub.top1_std or np.nan, 2 if pub.top1_std else 1)
                            if pub else NA),
            "Paper dense": num(row["paper_dense"], ".2f"),
            "Paper diff": num(row["paper_diff"], "+.2f"),
            "Dense: measured / paper": (f"{num(dense, '.2f')} / {pub_dense:.2f} "
                                        f"({num(row['dense_gap'], '+.2f')})"
                                        if pub_dense is not None else NA),
            "Protocol": protocol,
        })
    notes = [
        "Top-1: test accuracy (%) after the last round, mean ± std over seeds (std with ddof=1; "
        "a single seed shows no ±); Seeds = n. Sparsity: achieved, mean over seeds. "
        "diff = mean top-1 - mean dense top-1.",
        "Paper columns: official README of Xu et al. (ICCV 2023), methods ours and ours_zerodata "
        "in their default setting, matched by model, dataset, schedule and target sparsity "
        f"within {TOLERANCE_PP} pp; {NA} = none published.",
        "Dense: measured / paper: the mean measured dense top-1 against the published dense top-1 "
        "of the model and dataset (any method), gap in brackets.",
        "Protocol: official = the official code's recipe for the model and dataset "
        "(results/protocol.md), deliberate bug fixes aside; custom = some setting differs; "
        "none = no official recipe.",
    ]
    notes += [f"Custom protocol, {c}." for c in custom]
    return Table("Top-1 after pruning (paper layout)", pd.DataFrame(cells), pd.DataFrame(data),
                 notes=notes, left=5, key="paper_table")


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
    """failed.md: each failed or incomplete job with its cell (from run.json) and message."""
    lines = ["# Failed and incomplete jobs", ""]
    if not failed:
        lines.append("None: every job found has a metrics.json.")
    for f in failed:
        what = " / ".join(str(f[k]) for k in ("model", "dataset", "schedule", "finetune", "label")
                          if f.get(k) is not None)
        if f.get("target") is not None and not pd.isna(f["target"]):
            what += f" @ {target_label(f['target'], f['target_kind'])}, seed {f.get('seed')}"
        lines.append(f"- **{f['status']}** `{rel(f['path'])}`  \n  run: {what or 'unknown'}  \n"
                     f"  message: {f['message']}")
    (out / "failed.md").write_text("\n".join(lines) + "\n")


def log_wandb(out: Path, runs: pd.DataFrame, tables: dict[str, pd.DataFrame],
              images: list[Path], project: str, group: str | None, command: str) -> None:
    """Log the tables (and figures) into one W&B run, job_type "report", in the sweep's group.

    The mode follows ``WANDB_MODE``; unset and without credentials it is offline.
    """
    import wandb

    from rdprune.run.loggers import wandb_has_credentials

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
                 command: str | None = None, reference: str | None = None,
                 by: str | None = None) -> dict[str, Any]:
    """Collect the runs below ``dirs`` and write every table, figure and README.md into ``out``.

    ``reference``: the method label the paired table compares against in every column; None:
    each column's best baseline.

    Returns:
        ``{"runs", "failed", "files"}``: the runs DataFrame, the failed jobs, the file names.
    """
    from rdprune.report import plots

    dirs = [str(d) for d in dirs]
    runs, failed = collect(dirs)
    additivity = collect_additivity(dirs)
    if runs.empty and not failed and additivity.empty:
        raise UserError(f"no run directories (metrics.json or .hydra/) found under {dirs}")
    labels = sorted(set(runs["label"]), key=method_rank) if not runs.empty else []
    if reference not in (None, "best") and reference not in labels:  # a typo: fail first
        raise UserError(f"--reference {reference!r} is no method label of the runs (labels: "
                        f"{', '.join(labels) or 'none'})")
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
        # a task's own metrics beside top-1 (a language model: perplexity, lower is better)
        own = {m: runs[runs[m].notna()] for m in metric_directions()
               if m != "top1" and m in runs and runs[m].notna().any()}
        for m, sub in own.items():
            base[m], names[m] = baseline_table(sub, m, failed), f"baselines_{m}"
        for m, tabs in base.items():
            files += write_tables(out, names[m], list(tabs.values()), f"Baselines: {m}")
        paired = paired_table(runs, "top1", reference, by)
        files += write_tables(out, "paired", list(paired.values()),
                              "Paired differences against a reference: top1")
        paired_own = {m: paired_table(sub, m, reference, by) for m, sub in own.items()}
        for m, sub in own.items():
            files += write_tables(out, f"paired_{m}", list(paired_own[m].values()),
                                  f"Paired differences against a reference: {m}")
            files += plots.metric_vs_sparsity(complete(sub), out, m)
        clipped = clipping_table(runs)
        if clipped is not None:
            files += write_tables(out, "clipping", [clipped], "Layers clipped to 0% or 100%")
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
        command = ("python -c 'from rdprune.report.build import write_report; "
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
            if paired:
                tables["paired"] = pd.concat([t.data for t in paired.values()])
            for m, tabs in paired_own.items():
                if tabs:
                    tables[f"paired_{m}"] = pd.concat([t.data for t in tabs.values()])
            tables.update(paper_table=paper.data, layer_sparsity=layers,
                          **{names[m]: pd.concat([t.data for t in tabs.values()])
                             for m, tabs in base.items() if tabs})
        if failed:
            tables["failed"] = pd.DataFrame(failed)
        if not additivity.empty:
            tables["additivity"] = additivity
        log_wandb(out, runs, tables, [out / f for f in files if f.endswith(".png")],
                  project, group, command)
    print(f"report: {summary} -> {rel(out)}", flush=True)
    return {"runs": runs, "failed": failed, "files": files}


DESCRIPTIONS = {
    "runs": "one row per run (metrics.json fields, run_dir, overrides, superseded)",
    "clipping": "cells whose method left layers at 0% or 100% sparsity (clipped bands)",
    "paper_table": "the paper's layout, mean ± std over seeds, published numbers beside, "
                   "measured vs published dense top-1, the protocol of the runs",
    "baselines": "top-1 per method x target sparsity, per model/dataset/schedule/fine-tune",
    "baselines_distortion": "the same with the joint distortion (worst case), lower is better",
    "baselines_distortion_mean": "the same with the joint distortion (mean MSE)",
    "baselines_perplexity": "language models: test perplexity per method x target sparsity, "
                            "lower is better",
    "paired_perplexity": "language models: perplexity of each method minus a reference's, "
                         "95% intervals",
    "perplexity_vs_sparsity": "language models: perplexity vs target sparsity per method, one "
                              "panel per criterion",
    "paired": "top-1 of each method minus a reference's (best baseline per column or "
              "--reference) over runs sharing seed and dense model, 95% intervals, tie rule",
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
    p.add_argument("--by", default=None, metavar="FIELD",
                   help="split the paired tables by a record field (criterion: comparisons "
                        "within each criterion)")
    p.add_argument("--reference", default=None, metavar="LABEL",
                   help="method label the paired table compares against (default: the best "
                        "baseline of each column; best: each column's best label)")
    args = p.parse_args(argv)
    command = "python -m rdprune.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        write_report(args.dirs, args.out, wandb=args.wandb, project=args.wandb_project,
                     group=args.group, command=command, reference=args.reference, by=args.by)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
