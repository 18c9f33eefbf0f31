"""Reading run directories: every ``metrics.json`` below some directories into one DataFrame.

A finished run leaves ``metrics.json``: the run's record (:func:`rdprune.run.spec.record`: model,
dataset, method and its options, criterion, schedule, fine-tune, target, seed, ``config_id``) and
its results. A run that failed or was killed has no ``metrics.json`` but its ``run.json`` (the
same record, written when it started) and, if it failed, a ``FAILED`` marker with the error; a
Hydra job directory (``.hydra/``) with neither failed before its record could be written. The
report reads these files only, never the configs.

Each run becomes one row with its cell (model, dataset, schedule, fine-tune, method label, target
and what the target counts), seed, ``config_id`` and ``dense_key`` (the digest of the dense
weights: runs with the same ``dense_key`` share their dense model, the pairing of
:mod:`rdprune.report.stats`). Targets: ``target_kind`` "sparsity" (``target`` = % of prunable weights
removed) or "flops" (``target`` = % of the dense conv/linear MACs kept). The label is the method
with its non-default variant (:func:`label`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rdprune.errors import UserError, UserFileNotFoundError
from rdprune.tasks import metric_directions

log = logging.getLogger(__name__)

GROUP = ["model", "dataset", "schedule", "finetune"]  # one baseline table per group
#: one cell: a method (label) at a target (%), and what the target counts (sparsity | flops)
CELL = [*GROUP, "label", "target", "target_kind"]
#: which way each task metric is better (:mod:`rdprune.tasks`)
_HIGHER = metric_directions()
#: the report's metrics: (description, higher is better, mean formatter, with ± std)
METRICS = {
    "top1": ("Top-1 (%) on the test set after the last round (a language model: next-token "
             "top-1)", True, "{:.2f}", True),
    "pruned_top1": ("Top-1 (%) right after pruning, before fine-tuning", _HIGHER["top1"],
                    "{:.2f}", True),
    "perplexity": ("Perplexity on the test split after the last round (exp of the mean "
                   "next-token NLL)", _HIGHER["perplexity"], "{:.2f}", True),
    "joint_distortion_worst": ("Joint output distortion of the last pruning round on the "
                               "calibration set (worst case: max per-sample MSE of the logits, "
                               "before fine-tuning), mean over seeds", False, "{:.3g}", False),
    "joint_distortion_mean": ("Joint output distortion of the last pruning round on the "
                              "calibration set (mean MSE of the logits, before fine-tuning), "
                              "mean over seeds", False, "{:.3g}", False),
}
SKIP = {".hydra", "wandb", ".submitit", "__pycache__", ".cache", ".git"}


def _scan(dirs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path], list[Path]]:
    """Complete runs, failed/incomplete job dirs and additivity.csv files below ``dirs``."""
    runs, failed, additivity, seen = [], [], [], set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            error = UserError if root.exists() else UserFileNotFoundError
            raise error(f"not a directory: {root} (give run or sweep directories)")
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            has_hydra = ".hydra" in dirnames
            dirnames[:] = sorted(n for n in dirnames if n not in SKIP)
            if here.resolve() in seen:
                continue
            seen.add(here.resolve())
            if "additivity.csv" in filenames:
                additivity.append(here / "additivity.csv")
            if "shard.json" in filenames:  # a profiling shard (rd.shard): no run to report
                continue
            if "metrics.json" in filenames:
                runs.append(here)
            # an experiment script's Hydra dir (additivity.csv, no metrics.json) is not a failed job
            elif "FAILED" in filenames or "run.json" in filenames or (
                    has_hydra and "additivity.csv" not in filenames):
                failed.append(here)
    return runs, failed, additivity


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def target_label(target: float, kind: str = "sparsity") -> str:
    """A target in percent as a column label: 90 -> '90%', a FLOPs target 30 -> 'FLOPs kept 30%'."""
    text = f"{round(float(target), 2):g}%"
    return f"FLOPs kept {text}" if kind == "flops" else text


def label(rec: dict[str, Any]) -> str:
    """The method of a record with its non-default variant: ``ours (mean distortion)``,
    ``lamp (wanda)``, ``ours (FLOPs target)``, ``ours (local, 1024 tokens)``; the default
    setting is the bare method name."""
    parts, options = [], rec.get("options") or {}
    if options.get("reduction") == "mean":
        parts.append("mean distortion")
    if rec.get("criterion", "magnitude") != "magnitude":
        parts.append(str(rec["criterion"]))
        if rec.get("sequential") is False:
            parts.append("dense inputs")  # not the sequential protocol of the LLM papers
    parts += estimator_label(options)
    if rec.get("dtype") not in (None, "auto", "float32"):
        parts.append(str(rec["dtype"]))
    if rec.get("target_flops_kept") is not None:
        parts.append("FLOPs target")
    method = str(rec.get("method"))
    return f"{method} ({', '.join(parts)})" if parts else method


def estimator_label(options: dict[str, Any]) -> list[str]:
    """The RD-curve estimator of a run's options in words (nothing for the exact reference):
    ``local``, ``3 points``, ``1024 tokens``, ``bfloat16``."""
    parts = []
    if options.get("estimator", "exact") != "exact":
        parts.append(str(options["estimator"]))
    if options.get("points") is not None:
        parts.append(f"{options['points']} points")
    tokens = options.get("tokens")
    if tokens is not None:
        # an integer counts tokens (a language model) or samples (images); a fraction either
        parts.append(f"{tokens:g} of the calibration" if isinstance(tokens, float) else
                     f"{tokens} tokens")
    if options.get("precision") is not None:
        parts.append(str(options["precision"]))
    return parts


def cell_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """Label, target (%) and target kind of a record (a run's or a failed job's)."""
    kept, s = rec.get("target_flops_kept"), rec.get("target_sparsity")
    if _number(kept):
        kind, target = "flops", round(100 * float(kept), 4)
    else:
        kind, target = "sparsity", round(100 * float(s), 4) if _number(s) else np.nan
    return {"label": label(rec), "target": target, "target_kind": kind}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("unreadable %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def _failed_job(path: Path) -> dict[str, Any]:
    """A failed or incomplete job: its status, message and (from run.json) record and cell."""
    fail = path / "FAILED"
    if fail.is_file():
        lines = [ln.strip() for ln in fail.read_text(errors="replace").splitlines()]
        status, message = "failed", next((ln for ln in lines if ln), "(empty FAILED file)")
    else:
        status, message = "incomplete", "no metrics.json and no FAILED (killed or running)"
    rec = _read_json(path / "run.json") if (path / "run.json").is_file() else None
    if rec is None:
        return {"path": str(path), "status": status, "message": message
                + ("" if status == "incomplete" else " (before the run's record was written)")}
    return {"path": str(path), "status": status, "message": message, **rec, **cell_fields(rec)}


def _protocol(metrics: dict[str, Any]) -> dict[str, Any]:
    """``protocol`` (official | custom | none) and its differences, joined, from metrics.json."""
    p = metrics.get("protocol") or {}
    out = {"protocol": p.get("protocol")}
    if p.get("differences"):
        out["protocol_differences"] = "; ".join(map(str, p["differences"]))
    return out


def collect(dirs: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Load every run below ``dirs``.

    Returns:
        ``(runs, failed)``: one row per complete run (metrics.json's scalar fields, ``options``
        as JSON text, ``target`` in % and ``target_kind``, ``label``, ``protocol`` and
        ``protocol_differences``, ``superseded`` = an older run of the same ``config_id``, cell,
        seed and dense model, ``run_dir``); and one dict per failed or incomplete job (``path``,
        ``status``, ``message``, and its record and cell fields where ``run.json`` tells them).
    """
    run_dirs, bad_dirs, _ = _scan(dirs)
    failed = [_failed_job(path) for path in bad_dirs]
    rows = []
    for path in run_dirs:
        metrics = _read_json(path / "metrics.json")
        if metrics is None:
            failed.append({"path": str(path), "status": "failed",
                           "message": "unreadable metrics.json"})
            continue
        row: dict[str, Any] = {}
        for k, v in metrics.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                row[k] = v
            elif k == "seconds" and isinstance(v, dict):
                row.update({f"seconds_{s}": t for s, t in v.items()})
            elif k == "rounds" and isinstance(v, list):
                row["num_rounds"] = len(v)
        row["options"] = json.dumps(metrics.get("options") or {}, sort_keys=True)
        row.update(_protocol(metrics), **cell_fields(metrics))
        row.update(run_dir=str(path),
                   has_layers=(path / "layers.csv").is_file(),
                   has_rounds=row.get("num_rounds", 1) > 1 and (path / "rounds.csv").is_file(),
                   has_curves=(path / "rd_curves.npz").is_file(),
                   mtime=(path / "metrics.json").stat().st_mtime)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df, failed
    for d in df.loc[df["target"].isna(), "run_dir"]:
        log.warning("%s: no target (sparsity or FLOPs) in metrics.json; left out of tables", d)
    # a re-run of the same config, seed and dense model supersedes the older (several dense
    # models of one config are replicates, not re-runs); different configs in one cell are both
    # kept (and flagged in README.md)
    same = CELL + ["seed", "config_id"] + (["dense_key"] if "dense_key" in df else [])
    newest = df.sort_values("mtime").groupby(same, dropna=False).tail(1).index
    df["superseded"] = ~df.index.isin(newest)
    # config columns first: what W&B tables and spreadsheets group by
    front = [c for c in [*CELL, "method", "criterion", "seed", "experiment", "target_sparsity",
                         "achieved_sparsity", "top1", "dense_top1"] if c in df]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(CELL + ["seed"], key=_sort_key).reset_index(drop=True), failed


def method_rank(label: str) -> tuple[int, str]:
    """Sort key of a method label: the registry's order (the paper's method first), then
    others."""
    from rdprune.methods.registry import methods

    order = list(methods())
    base = str(label).split(" (")[0]
    return (order.index(base) if base in order else len(order), str(label))


def _sort_key(col: pd.Series) -> pd.Series:
    return col.map(method_rank) if col.name == "label" else col


def complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["superseded"]] if "superseded" in df else df


def collect_additivity(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All additivity.csv files below ``dirs`` in one frame (``source`` = the file)."""
    frames = [pd.read_csv(p).assign(source=str(p)) for p in _scan(dirs)[2]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _per_run(df: pd.DataFrame, file: str, wanted: str) -> pd.DataFrame:
    """``file`` of every (non-superseded) run whose flag column ``wanted`` is true, long, with the
    run's cell fields and seed; ``position`` = row number within its file."""
    frames = []
    for _, r in complete(df).iterrows():
        if r.get(wanted):
            t = pd.read_csv(Path(r["run_dir"]) / file)
            t["position"] = range(len(t))
            frames.append(t.assign(**{c: r[c] for c in CELL + ["seed", "run_dir"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_layers(df: pd.DataFrame) -> pd.DataFrame:
    """layers.csv of every (non-superseded) run, long, with the run's cell fields and seed."""
    return _per_run(df, "layers.csv", "has_layers")


def load_rounds(df: pd.DataFrame) -> pd.DataFrame:
    """rounds.csv of every (non-superseded) run with more than one round, long, with the run's
    cell fields and seed; empty when no run is iterative."""
    return _per_run(df, "rounds.csv", "has_rounds")
