"""The report's tables: built from the runs frame (:mod:`rdprune.report.runs`), rendered as Markdown,
LaTeX and CSV (display strings with bold cells and notes).

Builders here: methods x targets (:func:`baseline_table`), each method against a reference
over paired runs (:func:`paired_table`, statistics in :mod:`rdprune.report.stats`), per-layer sparsities
(:func:`layer_table`), iterative rounds (:func:`rounds_table`) and additivity; the paper-layout
table, which sets runs beside the published numbers, is :func:`rdprune.report.build.paper_table`.

(Over 300 lines: every report table shares the cell format, the tie rule and the rendering to
Markdown, LaTeX and CSV; one module keeps them alike.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rdprune.report.runs import CELL, GROUP, METRICS, complete, load_layers, method_rank, target_label
from rdprune.report.stats import (
    LEVEL,
    TIE_RULE,
    Interval,
    compare,
    interval_note,
    reference_for,
    tie_rule,
)

MISSING, NA = "missing", "–"
TIED = "≈"  # marks a cell tied with its column's leader under the tie rule (rdprune.report.stats)


@dataclass
class Table:
    """A rendered table: display strings, the numbers behind them (the CSV) and notes."""

    title: str
    cells: pd.DataFrame  # display strings; the first ``left`` columns are text (left-aligned)
    data: pd.DataFrame  # tidy numbers, written as CSV
    bold: set[tuple[int, str]] = field(default_factory=set)  # (row position, column)
    notes: list[str] = field(default_factory=list)
    left: int = 1
    key: str = ""


def pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``mean ± std`` (std shown only for n >= 2); ``missing`` when there is no value."""
    if n == 0 or pd.isna(mean):
        return MISSING
    if n >= 2 and not pd.isna(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "–": "--", "≥": r"$\geq$", "×": r"$\times$",
        "→": r"$\rightarrow$", "≈": r"$\approx$", "Δ": r"$\Delta$", "−": "$-$"}


def tex_escape(text: Any) -> str:
    """LaTeX-safe text: special characters escaped, ± as $\\pm$."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_markdown(t: Table, level: int = 2) -> str:
    """A Markdown section: heading, pipe table (bold as **x**), notes."""
    esc = lambda s: str(s).replace("|", r"\|")  # noqa: E731
    cols = list(t.cells.columns)
    lines = [f"{'#' * level} {t.title}", "", "| " + " | ".join(map(esc, cols)) + " |",
             "|" + "|".join("---" if j < t.left else "---:" for j in range(len(cols))) + "|"]
    for i, row in enumerate(t.cells.itertuples(index=False)):
        vals = [f"**{esc(v)}**" if (i, c) in t.bold else esc(v) for c, v in zip(cols, row)]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines + [""] + [f"{n}  " for n in t.notes]).rstrip() + "\n"


def to_latex(t: Table) -> str:
    """A booktabs table environment (bold as \\textbf{}), notes below the tabular."""
    cols = list(t.cells.columns)
    spec = "l" * t.left + "r" * (len(cols) - t.left)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(t.title)}}}", rf"\label{{tab:{t.key}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for i, row in enumerate(t.cells.itertuples(index=False)):
        vals = [rf"\textbf{{{tex_escape(v)}}}" if (i, c) in t.bold else tex_escape(v)
                for c, v in zip(cols, row)]
        lines.append(" & ".join(vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip{\footnotesize " + tex_escape(n) + "}" for n in t.notes]
    return "\n".join(lines + [r"\end{table}", ""])


def write_tables(out: Path, name: str, tables: list[Table], heading: str) -> list[str]:
    """``name``.md/.tex/.csv holding ``tables`` (one section each); returns the file names."""
    if not tables:
        return []
    md = f"# {heading}\n\n" + "\n".join(to_markdown(t) for t in tables)
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.tex").write_text("\n".join(to_latex(t) for t in tables))
    pd.concat([t.data for t in tables], ignore_index=True).to_csv(out / f"{name}.csv",
                                                                 index=False)
    return [f"{name}.md", f"{name}.tex", f"{name}.csv"]


def pct(target: float) -> str:
    """A target sparsity in percent as a column label: 90 -> '90%', 98.847 -> '98.85%'."""
    return f"{round(float(target), 2):g}%"


def num(x: Any, fmt: str) -> str:
    """``x`` formatted, or the not-applicable mark when there is none."""
    return NA if x is None or pd.isna(x) else format(x, fmt)




def _targets(g: pd.DataFrame) -> tuple[list[tuple[float, str]], dict[tuple[float, str], str]]:
    """The (target, kind) columns of a group's runs, sparsity targets first, and their heads
    (a FLOPs target reads "FLOPs kept x%")."""
    targets = sorted(set(zip(g["target"], g["target_kind"])),
                     key=lambda tk: (tk[1] != "sparsity", tk[0]))
    return targets, {tk: target_label(*tk) for tk in targets}


def _not_compared(verdicts: pd.DataFrame | None) -> list[str]:
    """A note naming the cells the tie rule could not compare with their column's leader."""
    cells = ([] if verdicts is None else [f"{r.label} @ {r.column}" for r in
                                          verdicts.itertuples() if r.status == "not compared"])
    return ["Not compared with the column's leader (no run sharing its seed and dense model): "
            + ", ".join(cells) + "."] if cells else []


def baseline_table(df: pd.DataFrame, metric: str = "top1",
                   failed: Iterable[dict[str, Any]] = ()) -> dict[str, Table]:
    """Methods x targets, one table per (model, dataset, schedule, fine-tune) group.

    A cell no completed run fills (the method lacks that target, or its jobs failed) reads
    ``missing``. Bold: the column's best under the paired tie rule (:func:`rdprune.report.stats.
    tie_rule`); ``≈``: tied with the column's leader. Columns are target sparsities, then FLOPs
    targets ("FLOPs kept x%").

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
        targets, heads = _targets(g)
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
        # bold = best under the paired tie rule, not merely the best mean: seeds and dense
        # models vary more than methods differ, so a best mean alone is not evidence
        verdicts = pd.concat([tie_rule(sel[(sel.target == t) & (sel.target_kind == kind)],
                                       metric).assign(column=heads[(t, kind)])
                              for t, kind in targets]).reset_index() if len(sel) else None
        status = ({} if verdicts is None else
                  {(r.label, r.column): r.status for r in verdicts.itertuples()})
        data["status"] = [status.get((r.method, r.column), "") for r in data.itertuples()]
        for r in data.itertuples():
            i = labels.index(r.method)
            if r.status == "best":
                bold.add((i, r.column))
            elif r.status == "tied":
                table.loc[i, r.column] = f"{TIED} {table.loc[i, r.column]}"
        data["best"] = data["status"] == "best"
        counts = sorted(set(seeds.values()))
        common = max(counts, key=list(seeds.values()).count) if counts else 0
        notes = [f"{what}" + (", mean ± std over seeds (ddof=1; one seed: no ±)" if with_std
                              else "") + f"; {'higher' if higher else 'lower'} is better.",
                 TIE_RULE.replace("best (bold)", "in bold"),
                 "Intervals: none (no runs)." if verdicts is None else interval_note(verdicts),
                 f"Seeds per cell: n={common}" + "".join(
                     f"; {lab} @ {head}: n={n}" for (lab, head), n in seeds.items()
                     if n != common) + ".", *_not_compared(verdicts)]
        if missing:
            notes.append(f"{MISSING}: no completed run for " + ", ".join(missing) + ".")
        if failures:
            notes.append("Failed or incomplete jobs (see failed.md): " + ", ".join(failures) + ".")
        title = " / ".join(str(k) for k in gkey)
        out[slug] = Table(title, table, data, bold, notes, left=1, key=slug)
    return out


def signed(x: float, spec: str = ".2f") -> str:
    """``x`` with its sign and a true minus: ``+0.42``, ``−0.10``."""
    return format(x, "+" + spec).replace("-", "−")


def _paired_cell(iv: Interval, spec: str) -> str:
    """``Δ +0.42 [−0.10, +0.94] (n=10)``; a bootstrap says so, a pair without interval too."""
    if iv.pairs == 0:
        return "not paired"
    bounds = ("" if iv.interval == "none" else
              f" [{signed(iv.low, spec)}, {signed(iv.high, spec)}]")
    how = {"t": "", "bootstrap": ", bootstrap", "none": ", no interval"}[iv.interval]
    return f"Δ {signed(iv.diff, spec)}{bounds} (n={iv.pairs}{how})"


def paired_table(df: pd.DataFrame, metric: str = "top1",
                 reference: str | None = None, by: str | None = None) -> dict[str, Table]:
    """Each method against a reference: methods x targets, one table per group.

    A cell reads ``Δ +0.42 [−0.10, +0.94] (n=10)``: the mean paired difference method minus
    reference over n pairs (runs sharing seed and dense model) with its 95% interval
    (:func:`rdprune.report.stats.compare`); the reference's own cell reads ``reference: <mean>``. Bold
    and ``≈``: the tie rule among all methods of the column, as in :func:`baseline_table`.

    Args:
        df: the runs (:func:`rdprune.report.runs.collect`).
        metric: the metric compared.
        reference: the reference label in every column; None: each column's best baseline;
            ``best``: each column's best label (any method).
        by: one more record field that splits the groups (``criterion``: the comparisons
            within each criterion).

    Returns:
        ``{group slug: Table}``.
    """
    what, _, fmt, _ = METRICS.get(metric, (metric, True, "{:.4g}", True))
    spec = fmt[2:-1]  # "{:.2f}" -> ".2f"
    runs = complete(df)
    out: dict[str, Table] = {}
    if runs.empty:
        return out
    group = GROUP + ([by] if by else [])
    for gkey, sel in runs.dropna(subset=["target"]).groupby(group, sort=True):
        slug = "_".join(str(k) for k in gkey)
        labels = sorted(sel["label"].unique(), key=method_rank)
        targets, heads = _targets(sel)
        cells = pd.DataFrame({"Method": labels, **{h: MISSING for h in heads.values()}})
        data, bold, verdicts, refs, absent = [], set(), [], {}, []
        for (t, kind), head in heads.items():
            column = sel[(sel.target == t) & (sel.target_kind == kind)]
            verdict = tie_rule(column, metric)
            verdicts.append(verdict.assign(column=head))
            ref = refs[head] = reference_for(column, metric, reference)
            if ref is None:
                absent.append(head)
            for i, lab in enumerate(labels):
                if lab not in verdict.index:
                    continue
                mean, status = verdict.at[lab, "mean"], verdict.at[lab, "status"]
                iv = compare(column, lab, ref, metric) if ref not in (None, lab) else Interval()
                text = ("no reference" if ref is None else f"reference: {fmt.format(mean)}"
                        if lab == ref else _paired_cell(iv, spec))
                cells.loc[i, head] = f"{TIED} {text}" if status == "tied" else text
                if status == "best":
                    bold.add((i, head))
                data.append({**dict(zip(group, gkey)), "method": lab, "reference": ref,
                             "target_sparsity": t if kind == "sparsity" else np.nan,
                             "target_flops_kept": t if kind == "flops" else np.nan,
                             "column": head, "metric": metric, "mean": mean,
                             **asdict(iv), "status": status})
        data = pd.DataFrame(data)
        compared = data[data["reference"].notna() & (data["method"] != data["reference"])]
        named = (f"{reference} in every column" if reference is not None else
                 "the best baseline of each column (best mean among methods other than the "
                 "paper's)" + "".join(f"; {h}: {r}" for h, r in refs.items() if r))
        notes = [f"{what}: mean paired difference method − reference (runs sharing seed and "
                 f"dense model) with its {LEVEL:.0%} interval, n = pairs; not paired = no run "
                 f"sharing seed and dense model with the reference. Reference: {named}.",
                 interval_note(compared, "Intervals against the reference"),
                 TIE_RULE.replace("best (bold)", "in bold"),
                 interval_note(pd.concat(verdicts), "Intervals of the tie rule"),
                 *_not_compared(pd.concat(verdicts).reset_index())]
        if absent:
            notes.append((f"No run of the reference {reference}" if reference is not None else
                          "No baseline run (no reference)") + " at " + ", ".join(absent) + ".")
        out[slug] = Table(" / ".join(str(k) for k in gkey), cells, data, bold, notes, left=1,
                          key=slug)
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
            cells[lab] = [num(mean.loc[n, lab], ".2f") for n in first["name"]]
        cells.loc[len(cells)] = ["all layers", "", "", str(int(first["weights"].sum())),
                                 *[num(total[lab], ".2f") for lab in labels]]
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




def clipping_table(runs: pd.DataFrame) -> Table | None:
    """The cells where a method left layers dense (0%) or removed them whole (100%): a method
    whose band leaves [0, 1] is clipped there (AlphaPruning's official mapping does not clamp;
    OWL and DLP clip at 0.01). None when no run clipped."""
    if "layers_at_100" not in runs or "layers_at_0" not in runs:
        return None
    cols = [c for c in ("model", "dataset", "label", "target") if c in runs]
    data = runs.groupby(cols, dropna=False)[["layers_at_0", "layers_at_100", "num_layers"]].mean(
    ).reset_index()
    data = data[(data["layers_at_0"] > 0) | (data["layers_at_100"] > 0)]
    if data.empty:
        return None
    cells = pd.DataFrame({"Model": data["model"].astype(str), "Method": data["label"].astype(str),
                          "Target": data["target"].map(lambda t: f"{t:g}%"),
                          "Layers at 0%": data["layers_at_0"].map(lambda v: f"{v:g}"),
                          "Layers at 100%": data["layers_at_100"].map(lambda v: f"{v:g}"),
                          "of": data["num_layers"].map(lambda v: f"{v:g}")})
    return Table("Layers clipped to 0% or 100% sparsity (mean over runs)", cells, data, notes=[
        "A layer at 100% is removed entirely (its output is its bias, or zero); at 0% it is kept "
        "dense. Cells without clipping are not listed."], left=2, key="clipping")
