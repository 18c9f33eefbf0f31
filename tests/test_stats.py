"""Paired statistics (rdprune.report.stats): intervals checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rdprune.report import stats

COL = {"model": "resnet32", "dataset": "digits", "schedule": "oneshot", "finetune": "adamw",
       "target": 90.0, "target_kind": "sparsity"}


def column(rows, tmp_path=None):
    """One column's runs from ``(label, seed, value)`` or ``(label, seed, value, dense_key)``."""
    out = []
    for i, (label, seed, value, *key) in enumerate(rows):
        out.append({**COL, "label": label, "seed": seed, "dense_key": key[0] if key else
                    f"dense-{seed}", "top1": value, "pruned_top1": value - 10,
                    "joint_distortion_worst": value / 100,
                    "run_dir": str(tmp_path / f"run{i}") if tmp_path else f"/nonexistent/{i}"})
    return pd.DataFrame(out)


def test_t_interval_by_hand():
    # diffs 1..4: mean 2.5, sd sqrt(5/3) = 1.2910, t(0.975, 3) = 3.1824 -> half 3.1824 * 1.2910 / 2
    mean, low, high = stats.t_interval([1, 2, 3, 4])
    assert mean == 2.5
    assert (high - mean) == pytest.approx(2.0543, abs=1e-4)
    assert (mean - low) == pytest.approx(2.0543, abs=1e-4)
    # two pairs: t(0.975, 1) = 12.7062; diffs 1, 3: sd sqrt(2), se 1 -> half 12.7062
    assert stats.t_interval([1, 3]) == pytest.approx((2.0, 2 - 12.7062, 2 + 12.7062), abs=1e-4)
    assert stats.t_interval([2, 2, 2]) == (2.0, 2.0, 2.0)  # no spread: a point
    with pytest.raises(ValueError):
        stats.t_interval([1.0])


def test_bootstrap_identical_and_disjoint():
    rng = np.random.default_rng(1)
    a = rng.random(500) < 0.7
    assert stats.bootstrap_interval(a, a.copy()) == (0.0, 0.0, 0.0)
    # a right everywhere, b nowhere: every resample differs by exactly 100 pp
    assert stats.bootstrap_interval(np.ones(300, bool), np.zeros(300, bool)) == (100, 100, 100)
    with pytest.raises(ValueError):
        stats.bootstrap_interval(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.parametrize("only_a, only_b", [(1000, 0), (600, 400)])
def test_bootstrap_known_difference(only_a, only_b):
    """10,000 samples; per-sample difference d in {+1, -1, 0}: the interval is close to the normal
    one, mean(d) +- 1.96 sqrt(var(d) / n), in percentage points."""
    n = 10_000
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    b[-2000:] = a[-2000:] = True  # both right on some samples: no difference there
    p, q = only_a / n, only_b / n
    mean = p - q
    half = 1.96 * math.sqrt((p + q - mean ** 2) / n)
    diff, low, high = stats.bootstrap_interval(a, b)
    assert diff == pytest.approx(100 * mean)
    assert low == pytest.approx(100 * (mean - half), abs=0.05)
    assert high == pytest.approx(100 * (mean + half), abs=0.05)
    assert stats.bootstrap_interval(a, b) == (diff, low, high)  # fixed seed: deterministic


def test_bootstrap_matches_resampling_indices():
    """The multinomial shortcut draws what resampling indices draws: compare with the plain
    bootstrap (indices with replacement) on a small, irregular pair."""
    rng = np.random.default_rng(7)
    a, b = rng.random(400) < 0.8, rng.random(400) < 0.75
    idx = rng.integers(0, 400, size=(20_000, 400))
    plain = 100 * (a[idx].mean(axis=1) - b[idx].mean(axis=1))
    _, low, high = stats.bootstrap_interval(a, b)
    assert low == pytest.approx(np.percentile(plain, 2.5), abs=0.5)  # 0.25 pp per index
    assert high == pytest.approx(np.percentile(plain, 97.5), abs=0.5)


def test_pairing_needs_seed_and_dense_key():
    runs = column([("ours", 0, 91.0), ("ours", 1, 92.0), ("ours", 2, 93.0),
                   ("lamp", 0, 90.0), ("lamp", 1, 90.0),
                   ("lamp", 2, 50.0, "another dense model"),  # same seed, other dense model
                   ("lamp", 3, 90.0)])  # no ours run at seed 3
    p = stats.pairs(runs, "ours", "lamp", "top1")
    assert sorted(p["seed"]) == [0, 1]
    iv = stats.compare(runs, "ours", "lamp")
    assert (iv.pairs, iv.interval, iv.diff) == (2, "t", 1.5)  # diffs 1 and 2
    # diffs 1, 2: sd 0.7071, se 0.5, t(0.975, 1) = 12.7062
    assert (iv.low, iv.high) == pytest.approx((1.5 - 6.3531, 1.5 + 6.3531), abs=1e-4)
    assert stats.compare(runs, "lamp", "ours").diff == -1.5
    no_key = runs.assign(dense_key=None)  # no record of the dense model: no evidence of a pair
    assert stats.compare(no_key, "ours", "lamp").pairs == 0


def _save(path, correct):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / stats.CORRECT, np.asarray(correct, bool))


def test_one_pair_bootstraps_top1_only(tmp_path):
    runs = column([("ours", 0, 92.0), ("lamp", 0, 90.0)], tmp_path)
    iv = stats.compare(runs, "ours", "lamp")
    assert (iv.pairs, iv.interval, iv.diff) == (1, "none", 2.0)  # no per-sample data
    assert math.isnan(iv.low) and math.isnan(iv.high) and iv.includes_zero()
    correct = np.zeros(1000, bool)
    _save(tmp_path / "run0", correct | (np.arange(1000) < 920))
    _save(tmp_path / "run1", correct | (np.arange(1000) < 900))
    iv = stats.compare(runs, "ours", "lamp")
    # only ours right on 20 of 1000 samples: the difference is 0.1 x Binomial(1000, 0.02)
    assert (iv.pairs, iv.interval, iv.samples, iv.diff) == (1, "bootstrap", 1000, 2.0)
    assert 0.8 <= iv.low <= 1.3 and 2.7 <= iv.high <= 3.2
    assert iv.separates(higher=True) and not iv.includes_zero()
    # test_correct.npy holds the final model only: not the data of pruned_top1
    assert stats.compare(runs, "ours", "lamp", "pruned_top1").interval == "none"


def test_tie_rule_leader_vs_second():
    # ours - lamp = 1, 2, 3, 4 (interval [0.45, 4.55], excludes 0): ours is best
    clear = column([("ours", s, 91.0 + s) for s in range(4)] + [("lamp", s, 90.0)
                                                                 for s in range(4)])
    verdict = stats.tie_rule(clear)
    assert verdict["status"].to_dict() == {"ours": "best", "lamp": ""}
    assert verdict.at["lamp", "diff"] == 2.5 and verdict.at["lamp", "leader"] == "ours"
    # ours - lamp = 3, -1, 2, -2 (mean 0.5 > 0, interval includes 0): both tied, none best
    close = column([("ours", s, v) for s, v in enumerate([93.0, 89.0, 92.0, 88.0])]
                   + [("lamp", s, 90.0) for s in range(4)])
    assert stats.tie_rule(close)["status"].to_dict() == {"ours": "tied", "lamp": "tied"}
    # a third method with no run on the leader's seeds and dense models is not compared
    extra = pd.concat([clear, column([("erk", 0, 80.0, "other")])], ignore_index=True)
    assert stats.tie_rule(extra)["status"].to_dict() == {
        "ours": "best", "lamp": "", "erk": "not compared"}
    # one pair and no per-sample data: no interval, so it cannot separate the two
    single = column([("ours", 0, 95.0), ("lamp", 0, 90.0)])
    assert stats.tie_rule(single)["status"].to_dict() == {"ours": "tied", "lamp": "tied"}
    assert stats.tie_rule(column([("lamp", 0, 90.0)]))["status"].to_dict() == {"lamp": ""}


def test_tie_rule_lower_is_better():
    # distortion = top1 / 100: lamp (0.90) has the lowest; ours - lamp = 0.01 .. 0.04
    runs = column([("ours", s, 91.0 + s) for s in range(4)] + [("lamp", s, 90.0)
                                                                for s in range(4)])
    verdict = stats.tie_rule(runs, "joint_distortion_worst")
    assert verdict["status"].to_dict() == {"ours": "", "lamp": "best"}
    assert verdict.at["ours", "high"] < 0  # leader - ours: lower, in the leader's favour


def test_reference_choice():
    runs = column([("ours", 0, 99.0), ("ours (mean distortion)", 0, 98.0), ("lamp", 0, 90.0),
                   ("erk", 0, 93.0), ("uniform", 0, 80.0)])
    assert stats.reference_for(runs) == "erk"  # best baseline; the paper's methods never
    assert stats.reference_for(runs, reference="lamp") == "lamp"
    assert stats.reference_for(runs, reference="global_magnitude") is None  # absent here
    # lower is better for distortions: uniform's 0.80 is the best baseline
    assert stats.reference_for(runs, "joint_distortion_worst") == "uniform"
    assert stats.reference_for(column([("ours", 0, 99.0)])) is None  # no baseline


def test_interval_note():
    rows = pd.DataFrame({"interval": ["t", "t", "bootstrap", "none", "none"],
                         "pairs": [3, 10, 1, 1, 0], "samples": [0, 0, 10_000, 0, 0]})
    note = stats.interval_note(rows)
    assert "Student t over n=3–10 paired seeds" in note
    assert "bootstrap over 10,000 test samples" in note and "10,000 resamples" in note
    assert "single pair without per-sample data" in note
    assert stats.interval_note(rows.iloc[4:]) == "Intervals: none (no paired runs)."
