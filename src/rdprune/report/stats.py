"""Paired statistics for the report: intervals of method differences and the tie rule.

Runs of two methods in one column (model, dataset, schedule, fine-tune, target, target kind) are
*paired* when they share the seed and the dense model (``dense_key``): their difference removes
the variation of the dense model and of the seed, which dominates differences between methods.

- :func:`compare`: the mean paired difference ``method - reference`` of a metric with a 95%
  interval: Student's t over the paired seeds (n >= 2); with exactly one pair, top-1 only and
  both runs holding ``test_correct.npy``, a paired percentile bootstrap over the test samples
  (:func:`bootstrap_interval`); otherwise no interval (NaN bounds).
- :func:`tie_rule`: the column's leader (best mean) is "best" only when its interval against
  every other method it is paired with excludes zero in its favour; otherwise every method whose
  interval against the leader includes zero is "tied" with it, the leader too.
- :func:`reference_for`: the reference of a column: a label the user names, or the best baseline
  (the best mean among labels that are not the paper's methods, as the registry marks them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from rdprune.report.runs import GROUP, METRICS, method_rank

#: one column of a methods x targets table; the runs of one label in it are one cell
COLUMN = [*GROUP, "target", "target_kind"]
PAIR = ["seed", "dense_key"]  # paired runs share both: the same dense model and seed
LEVEL = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same interval in every report
#: metric -> higher is better
HIGHER = {metric: spec[1] for metric, spec in METRICS.items()}
#: test_correct.npy records the final model only: it is the per-sample data of ``top1`` alone
BOOTSTRAP_METRICS = {"top1"}
CORRECT = "test_correct.npy"

TIE_RULE = ("Tie rule: the leader of a column (best mean) is best (bold) only when the 95% "
            "interval of its paired difference against every other method it shares runs with "
            "excludes 0 in its favour; otherwise every method whose interval against the leader "
            "includes 0 is tied with it (≈), the leader too. A pair without an interval cannot "
            "separate the two and counts as tied; not compared = no run sharing seed and dense "
            "model with the leader.")


@dataclass(frozen=True)
class Interval:
    """The paired difference of a metric between two labels in one column.

    Attributes:
        diff: mean paired difference (first label minus second); NaN without pairs.
        low: lower bound of the 95% interval; NaN when there is none.
        high: upper bound of the 95% interval; NaN when there is none.
        pairs: number of pairs (runs sharing seed and dense model).
        interval: ``"t"`` (over the pairs), ``"bootstrap"`` (over test samples) or ``"none"``.
        samples: test samples of the bootstrap (0 otherwise).
    """

    diff: float = np.nan
    low: float = np.nan
    high: float = np.nan
    pairs: int = 0
    interval: str = "none"
    samples: int = 0

    def separates(self, higher: bool) -> bool:
        """Whether the interval excludes zero in the first label's favour."""
        return bool(self.low > 0) if higher else bool(self.high < 0)  # NaN: False

    def includes_zero(self) -> bool:
        """Whether zero lies in the interval; a missing interval cannot exclude it."""
        return not (self.low > 0 or self.high < 0)


def t_interval(diffs: Iterable[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of paired differences with its Student-t interval (n - 1 degrees of freedom).

    Args:
        diffs: one difference per pair, at least two.
        level: coverage of the interval.

    Returns:
        ``(mean, low, high)``.
    """
    d = np.asarray(list(diffs), dtype=float)
    if d.size < 2:
        raise ValueError(f"a t-interval needs at least 2 differences, got {d.size}")
    half = student_t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def bootstrap_interval(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = LEVEL
                       ) -> tuple[float, float, float]:
    """Paired percentile bootstrap of an accuracy difference over test samples.

    Each resample draws the test samples' indices with replacement (the same indices for both
    models) and takes the difference of the two accuracies in percent. The difference depends
    only on how many drawn indices fall on samples only ``a`` gets right and on samples only
    ``b`` gets right, so a resample is drawn as one multinomial draw of those counts: the same
    distribution as drawing the n indices, at a cost independent of n (50,000 ImageNet samples
    x 10,000 resamples would be 5e8 indices).

    Args:
        a: per test sample, whether the first model is correct (bool, any shape).
        b: the same for the second model, same samples in the same order.
        resamples: bootstrap resamples.
        seed: seed of the generator (fixed: deterministic intervals).
        level: coverage of the interval.

    Returns:
        ``(difference, low, high)`` in percentage points, ``a`` minus ``b``.
    """
    a, b = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"per-sample arrays must match and be non-empty: {a.shape}, {b.shape}")
    n = a.size
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = np.array([only_a, only_b, n - only_a - only_b]) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=resamples)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return 100.0 * (only_a - only_b) / n, float(low), float(high)


def load_correct(run_dir: str | Path) -> np.ndarray | None:
    """A run's ``test_correct.npy`` (bool per test sample), or None when it has none."""
    path = Path(run_dir) / CORRECT
    return np.load(path).astype(bool) if path.is_file() else None


def pairs(column: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """The runs of labels ``a`` and ``b`` in one column that share seed and dense model.

    Runs without the metric, seed or ``dense_key`` pair with nothing: without a dense key there
    is no evidence that two runs share their dense model. Two runs of one label with the same
    seed and dense key (a cell mixing configs) count as one, their mean.

    Returns:
        One row per pair: ``seed``, ``dense_key``, ``value_a``, ``value_b`` (the metric) and
        ``run_dir_a``, ``run_dir_b`` (None where two runs were averaged).
    """
    if not set(PAIR) <= set(column.columns):
        return pd.DataFrame(columns=[*PAIR, "value_a", "run_dir_a", "value_b", "run_dir_b"])

    def side(label: str) -> pd.DataFrame:
        runs = column[column["label"] == label].dropna(subset=[metric, *PAIR])
        g = runs.groupby(PAIR)
        return pd.DataFrame({"value": g[metric].mean(),
                             "run_dir": g["run_dir"].agg(lambda d: d.iloc[0] if len(d) == 1
                                                         else None)})

    return pd.merge(side(a), side(b), how="inner", left_index=True, right_index=True,
                    suffixes=("_a", "_b")).reset_index()


def compare(column: pd.DataFrame, a: str, b: str, metric: str = "top1") -> Interval:
    """The paired difference ``a - b`` of ``metric`` in one column, with its 95% interval.

    Args:
        column: the runs of one column (:data:`COLUMN`), superseded re-runs dropped.
        a: the label compared.
        b: the label it is compared against.
        metric: a metric column of the runs.

    Returns:
        The :class:`Interval`: t over the pairs (n >= 2); with one pair, a bootstrap over test
        samples for ``top1`` when both runs saved ``test_correct.npy``; else no interval.
    """
    p = pairs(column, a, b, metric)
    if p.empty:
        return Interval()
    d = (p["value_a"] - p["value_b"]).to_numpy(dtype=float)
    if len(d) >= 2:
        mean, low, high = t_interval(d)
        return Interval(mean, low, high, len(d), "t")
    dirs = p[["run_dir_a", "run_dir_b"]].iloc[0]
    if metric in BOOTSTRAP_METRICS and dirs.notna().all():
        x, y = load_correct(dirs.iloc[0]), load_correct(dirs.iloc[1])
        if x is not None and y is not None and x.shape == y.shape and x.size:
            _, low, high = bootstrap_interval(x, y)
            # the difference shown is the runs' own (their top1), the bounds the bootstrap's
            return Interval(float(d[0]), low, high, 1, "bootstrap", int(x.size))
    return Interval(float(d[0]), pairs=1)


def _best(means: pd.Series, higher: bool) -> str | None:
    """The label with the best mean (ties: the first in method order), None when there is none."""
    means = means.dropna()
    if means.empty:
        return None
    best = means.max() if higher else means.min()
    return min(means.index[means == best], key=method_rank)


def tie_rule(column: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Best, tied and not-compared labels of one column under the tie rule (:data:`TIE_RULE`).

    Returns:
        One row per label with a value (index ``label``): ``mean``, ``status`` ("best", "tied",
        "not compared" or ""), ``leader`` and the :class:`Interval` fields of leader minus this
        label (NaN for the leader itself).
    """
    higher = HIGHER.get(metric, True)
    means = column.groupby("label")[metric].mean().dropna()
    leader = _best(means, higher)
    rows = {}
    for label in sorted(means.index, key=method_rank):
        iv = Interval() if label == leader else compare(column, leader, label, metric)
        rows[label] = {"mean": means[label], "leader": leader, "status": "", **asdict(iv)}
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["mean", "leader", "status", *asdict(Interval())])
    out.index.name = "label"
    others = out.index[out.index != leader]
    compared = [lab for lab in others if out.at[lab, "pairs"] > 0]
    out.loc[[lab for lab in others if lab not in compared], "status"] = "not compared"
    ivs = {lab: Interval(**out.loc[lab, list(asdict(Interval()))].to_dict()) for lab in compared}
    if compared and all(iv.separates(higher) for iv in ivs.values()):
        out.at[leader, "status"] = "best"
    else:
        tied = [lab for lab, iv in ivs.items() if iv.includes_zero()]
        out.loc[tied, "status"] = "tied"
        if tied:  # a leader no paired comparison separates from the others is tied, not best
            out.at[leader, "status"] = "tied"
    return out


def reference_for(column: pd.DataFrame, metric: str = "top1",
                  reference: str | None = None) -> str | None:
    """The reference label of one column.

    Args:
        column: the runs of one column.
        metric: the metric whose mean picks the default reference.
        reference: a label to use; None picks the best baseline (best mean among labels that
            are not the paper's methods, :func:`rdprune.methods.registry.is_ours`).

    Returns:
        The label, or None when the named label (or any baseline) has no run in the column.
    """
    if reference == "best":
        return _best(column.groupby("label")[metric].mean(), HIGHER.get(metric, True))
    if reference is not None:
        return reference if (column["label"] == reference).any() else None
    from rdprune.methods.registry import is_ours

    base = column[~column["label"].astype(str).map(is_ours)]
    return _best(base.groupby("label")[metric].mean(), HIGHER.get(metric, True))


def interval_note(rows: pd.DataFrame, what: str = "Intervals") -> str:
    """Which intervals ``rows`` (with ``interval``, ``pairs``, ``samples``) used, in words,
    after ``what``."""
    used = []
    t = rows[rows["interval"] == "t"]["pairs"]
    if len(t):
        lo, hi = int(t.min()), int(t.max())
        used.append(f"Student t over n={lo}{'' if lo == hi else f'–{hi}'} paired seeds "
                    "(n-1 degrees of freedom)")
    boot = rows[rows["interval"] == "bootstrap"]["samples"]
    if len(boot):
        sizes = ", ".join(f"{int(s):,}" for s in sorted(set(boot)))
        used.append(f"a paired percentile bootstrap over {sizes} test samples (one pair; "
                    f"{RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED})")
    if ((rows["interval"] == "none") & (rows["pairs"] == 1)).any():
        used.append("none for a single pair without per-sample data (no interval)")
    if not used:
        return f"{what}: none (no paired runs)."
    return f"{what} ({LEVEL:.0%}): " + "; ".join(used) + ". Pairs share seed and dense model."
