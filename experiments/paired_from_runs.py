"""Paired differences with 95% intervals from a committed ``results/<experiment>/runs.csv``.

For experiments whose run directories are gone (``logs/`` is not committed) but whose
``runs.csv`` (one row per run, written by ``python -m rdprune.report``) is: the same tie rule
and Student-t intervals as the report (:mod:`rdprune.report.stats`), over the seeds. ``runs.csv`` of
older reports has no ``dense_key``; within one of these experiments the dense model depends on
the seed only (its config does not name the method or the fine-tune), so runs pair by seed, and
the script checks that the paired runs report the same dense top-1.

    python experiments/paired_from_runs.py results/digits_iterative/runs.csv --by method
    python experiments/paired_from_runs.py results/admm_lenet5/runs.csv --by finetune

prints, per target (and schedule and fine-tune, unless they are the arms), each arm's mean top-1, the leader's paired difference to it with its 95%
interval, and best / tied (``--out`` also writes the Markdown).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from rdprune.report.stats import TIE_RULE, tie_rule


def column(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The runs with ``label`` (the ``by`` columns joined) and ``dense_key`` (per seed, checked:
    every arm of a seed reports the same dense top-1)."""
    runs = runs.copy()
    runs["label"] = runs[by].astype(str).agg("+".join, axis=1)
    spread = runs.groupby("seed")["dense_top1"].nunique()
    if (spread > 1).any():
        raise SystemExit(f"error: seeds {list(spread[spread > 1].index)} have runs with different "
                         "dense models (dense_top1 differs): they cannot be paired by seed")
    runs["dense_key"] = "seed-" + runs["seed"].astype(str)
    return runs


def table(runs: pd.DataFrame, by: list[str], metric: str = "top1") -> str:
    """Markdown: one block per target (and schedule and fine-tune), one row per arm."""
    lines = []
    within = ["target", *(c for c in ("schedule", "finetune") if c in runs and c not in by)]
    for values, cell in column(runs, by).groupby(within):
        t = tie_rule(cell, metric)
        name = ", ".join(f"{c} {v:g}%" if c == "target" else f"{c} {v}"
                         for c, v in zip(within, values))
        lines += [f"### {name} ({len(cell.seed.unique())} seeds)", "",
                  f"| {' + '.join(by)} | mean {metric} | leader minus this [95% interval] "
                  "| pairs | status |", "|---|---|---|---|---|"]
        for label, row in t.iterrows():
            diff = ("(leader)" if label == row["leader"] else
                    f"{row['diff']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]")
            pairs = "" if label == row["leader"] else f"{int(row['pairs'])}"
            lines.append(f"| {label} | {row['mean']:.2f} | {diff} | {pairs} | "
                         f"{row['status'] or 'separated'} |")
        lines.append("")
    return "\n".join([*lines, TIE_RULE, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a report's runs.csv")
    parser.add_argument("--by", nargs="+", default=["method"],
                        help="columns whose values are the compared arms (default: method)")
    parser.add_argument("--metric", default="top1")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    runs = pd.read_csv(args.runs)
    runs = runs[~runs.get("superseded", False).astype(bool)] if "superseded" in runs else runs
    text = table(runs, args.by, args.metric)
    print(text)
    if args.out:
        args.out.write_text(f"Made by: python experiments/paired_from_runs.py {args.runs} --by "
                            f"{' '.join(args.by)}\n\n{text}")


if __name__ == "__main__":
    main()
