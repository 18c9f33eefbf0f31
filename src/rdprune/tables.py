"""Rendered tables: display strings with bold cells and notes, as Markdown, LaTeX and CSV."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

MISSING, NA = "missing", "–"


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
        "→": r"$\rightarrow$"}


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
