"""What one setting changes, method by method: each label's runs with a variant of it (e.g.
``dense inputs``: ``prune.sequential=false``; ``bfloat16``: ``model.dtype=bfloat16``) against the
same label without it, paired over runs sharing seed and dense model, with 95% t-intervals.

    python experiments/variant_effect.py logs/lm_compare logs/lm_protocol --variant "dense inputs" \
        --metric perplexity --out results/lm_protocol/README.md

Reads the run directories as the report does (:func:`rdprune.report.runs.collect`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from rdprune.report.runs import collect, complete, method_rank
from rdprune.report.stats import compare


def parts(label: str) -> tuple[str, list[str]]:
    """A label's method and its variant parts (``owl (wanda, dense inputs)``)."""
    base, _, rest = label.partition(" (")
    return base, [p for p in rest.rstrip(")").split(", ") if p]


def strip(label: str, variant: str) -> str:
    """The label without the parts of ``variant`` (comma-separated: ``owl (wanda, dense
    inputs)`` -> ``owl (wanda)``; ``ours (wanda, local, 1024 tokens)`` without ``local, 1024
    tokens`` -> ``ours (wanda)``)."""
    drop = set(variant.split(", "))
    base, rest = parts(label)
    kept = [p for p in rest if p not in drop]
    return f"{base} ({', '.join(kept)})" if kept else base


def has(label: str, variant: str) -> bool:
    """Whether the label carries every part of ``variant`` (and no part beyond the others')."""
    return set(variant.split(", ")) <= set(parts(label)[1])


def effect(runs: pd.DataFrame, variant: str, metric: str) -> pd.DataFrame:
    """One row per (model, label without the variant, target): both means and the paired
    difference variant - without."""
    rows = []
    runs = complete(runs)
    with_variant = runs[runs["label"].map(lambda lab: has(lab, variant))]
    for (model, label, target), g in with_variant.groupby(["model", "label", "target"]):
        base = strip(label, variant)
        if len(parts(label)[1]) - len(parts(base)[1]) != len(variant.split(", ")) or \
                not (runs["label"] == base).any():
            continue  # another comparison (it carries more variant parts), or no base runs
        column = runs[(runs["model"] == model) & (runs["target"] == target)
                      & runs["label"].isin([label, base])]
        iv = compare(column, label, base, metric)
        rows.append({"model": model, "label": base, "target": target,
                     metric: column[column.label == base][metric].mean(),
                     f"{metric} ({variant})": g[metric].mean(), "difference": iv.diff,
                     "low": iv.low, "high": iv.high, "pairs": iv.pairs})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["model", "label", "target"],
                           key=lambda c: c.map(method_rank) if c.name == "label" else c)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, numbers to two decimals, the difference with its interval."""
    lines = ["| model | method | target | without | with | with - without [95% CI] | pairs |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        d = r.difference
        ci = "" if pd.isna(r.low) else f" [{r.low:+.2f}, {r.high:+.2f}]"
        lines.append(f"| {r.model} | {r.label} | {r.target:g}% | {r[3]:.2f} | {r[4]:.2f} | "
                     f"{d:+.2f}{ci} | {r.pairs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--variant", required=True, help="the label part of the variant")
    p.add_argument("--metric", default="perplexity")
    p.add_argument("--out", default=None, help="write a Markdown file here")
    args = p.parse_args(argv)
    runs, _ = collect(args.dirs)
    table = effect(runs, args.variant, args.metric)
    text = markdown(table) if not table.empty else "(no runs)"
    command = "python experiments/variant_effect.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    doc = (f"# {args.variant}: what it changes\n\nMade by `{command}`. Each row: the label's "
           f"{args.metric} without and with `{args.variant}`, and the paired difference (with - "
           f"without) over runs sharing seed and dense model, 95% t-interval.\n\n{text}\n")
    print(doc)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
