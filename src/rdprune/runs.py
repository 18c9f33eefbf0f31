"""Reading run directories: every ``metrics.json`` below some directories into one DataFrame.

A run directory holds ``metrics.json``; a Hydra job directory (``.hydra/``) without one is a
failed (``FAILED`` marker) or incomplete (killed, still running) job. Each run becomes one row
with its cell (model, dataset, schedule, fine-tune, method label, target and what the target
counts), seed and a ``config_id`` of everything else in its config, so re-runs and mixed configs
can be told apart.

Targets: ``target_kind`` "sparsity" (``target`` = % of prunable weights removed) or "flops"
(``target`` = % of the dense conv/linear MACs kept; the run's ``flops_kept`` config, or, in
configs older than it, ``method.budget=flops`` with ``1 - sparsity``). Achieved FLOPs are read
from ``flops_remaining`` (%) or its successor ``flops_kept`` (a fraction) into
``flops_remaining`` (%). ``protocol`` is the run's relation to the official recipe
(:func:`rdprune.protocol.describe`, stored in metrics.json) or "unknown" for runs older than it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf

from rdprune.errors import UserError

log = logging.getLogger(__name__)

GROUP = ["model", "dataset", "schedule", "finetune"]  # one baseline table per group
#: one cell: a method (label) at a target (%), and what the target counts (sparsity | flops)
CELL = [*GROUP, "label", "target", "target_kind"]
METHOD_ORDER = ["ours", "lamp", "global_magnitude", "erk", "uniform_plus", "uniform"]
SKIP = {".hydra", "wandb", ".submitit", "__pycache__", ".cache", ".git"}
#: config keys that do not change a run's result beyond its cell and seed (left out of config_id)
VOLATILE = ("seed", "name", "sparsity", "flops_kept", "paths", "device", "threads", "logger",
            "launcher", "hydra", "dataset.root", "dataset.num_workers", "dataset.eval_batch_size",
            "dataset.download")


def _scan(dirs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path], list[Path]]:
    """Complete runs, failed/incomplete job dirs and additivity.csv files below ``dirs``."""
    runs, failed, additivity, seen = [], [], [], set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise UserError(f"not a directory: {root} (give run or sweep directories)")
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            has_hydra = ".hydra" in dirnames
            dirnames[:] = sorted(n for n in dirnames if n not in SKIP)
            if here.resolve() in seen:
                continue
            seen.add(here.resolve())
            if "additivity.csv" in filenames:
                additivity.append(here / "additivity.csv")
            if "metrics.json" in filenames:
                runs.append(here)
            # an experiment script's Hydra dir (additivity.csv, no metrics.json) is not a failed job
            elif "FAILED" in filenames or (has_hydra and "additivity.csv" not in filenames):
                failed.append(here)
    return runs, failed, additivity


#: cell field -> (keys in the job's config, first present wins; override names, used only when
#: no config is readable). Configs before the rd.* layout held method.reduction / method.budget.
FIELDS = {"model": (("model_name",), ("model",)), "dataset": (("dataset.name",), ("dataset",)),
          "method": (("method.name",), ("method",)),
          "schedule": (("schedule.name",), ("schedule",)),
          "finetune": (("finetune.name",), ("finetune",)),
          "target_sparsity": (("sparsity",), ("sparsity",)),
          "target_flops_kept": (("flops_kept",), ("flops_kept",)),
          "seed": (("seed",), ("seed",)), "experiment": (("name",), ("name",)),
          "calibration": (("method.calibration",), ("method.calibration",)),
          "reduction": (("method.options.reduction", "method.reduction"),
                        ("rd.reduction", "method.reduction")),
          "budget": (("method.budget",), ("method.budget",))}
SETTINGS = ("calibration", "reduction", "budget")  # fold into the label, not kept as columns


def _job(path: Path) -> tuple[dict[str, Any], list[str], str]:
    """Cell fields, overrides and config_id of a job dir (its config.yaml, else Hydra's)."""
    ov_file = path / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (yaml.safe_load(ov_file.read_text()) or [])] \
        if ov_file.is_file() else []
    given = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            try:
                given[k.lstrip("+~")] = yaml.safe_load(v)
            except yaml.YAMLError:
                given[k.lstrip("+~")] = v
    cfg = None
    for p in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        try:
            cfg = OmegaConf.load(p) if p.is_file() else None
        except Exception as e:  # noqa: BLE001 - one broken config must not stop the report
            log.warning("unreadable %s: %s", p, e)
        if cfg is not None:
            break
    fields = {}
    for name, (keys, names) in FIELDS.items():
        if cfg is None:  # overrides stand in only for a missing config: a key the config lacks
            found = (given.get(n) for n in names)  # is absent on purpose (a baseline's rd.*)
        else:  # unresolvable interpolations (${hydra:...}) read as None
            found = (OmegaConf.select(cfg, k, default=None, throw_on_resolution_failure=False)
                     for k in keys)
        fields[name] = next((v for v in found if v is not None), None)
    config_id = ""
    if cfg is not None:
        flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=False)).iloc[0].to_dict()
        kept = {k: str(v) for k, v in flat.items()
                if not any(k == x or k.startswith(x + ".") for x in VOLATILE)}
        config_id = hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]
    return fields, overrides, config_id


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _target(fields: dict[str, Any]) -> tuple[str, float]:
    """``(target_kind, target in %)`` of a run: a FLOPs target whenever the budget is FLOPs."""
    s, kept = fields.get("target_sparsity"), fields.get("target_flops_kept")
    if _number(kept):
        return "flops", round(100 * float(kept), 4)
    if fields.get("budget") == "flops":  # older configs: method.budget=flops, sparsity = removed
        return "flops", round(100 * (1 - float(s)), 4) if _number(s) else np.nan
    return "sparsity", round(100 * float(s), 4) if _number(s) else np.nan


def target_label(target: float, kind: str = "sparsity") -> str:
    """A target in percent as a column label: 90 -> '90%', a FLOPs target 30 -> 'FLOPs kept 30%'."""
    text = f"{round(float(target), 2):g}%"
    return f"FLOPs kept {text}" if kind == "flops" else text


def _variant(calibration: Any, reduction: Any, budget: Any) -> str:
    """Non-default settings of the rate-distortion method, as a short label."""
    parts = []
    if calibration == "synthetic":
        parts.append("zero-data")
    if reduction == "mean":
        parts.append("mean distortion")
    if budget == "flops":
        parts.append("FLOPs target")
    return ", ".join(parts)


def _cell_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Label (method and variant), target and target kind of a run or failed job's fields."""
    budget = "flops" if fields.get("target_flops_kept") is not None else fields.get("budget")
    variant = _variant(fields.get("calibration"), fields.get("reduction"), budget)
    kind, target = _target({**fields, "budget": budget})
    method = fields.get("method")
    return {"variant": variant, "label": f"{method} ({variant})" if variant else method,
            "target": target, "target_kind": kind}


def _protocol(metrics: dict[str, Any]) -> dict[str, Any]:
    """``protocol`` (official | custom | none) and its differences, joined, from metrics.json:
    :func:`rdprune.protocol.describe`'s dict, or a name with ``protocol_differences``."""
    p = metrics.get("protocol")
    diffs = metrics.get("protocol_differences", [])
    if isinstance(p, dict):
        p, diffs = p.get("protocol"), p.get("differences", [])
    out = {"protocol": p if isinstance(p, str) else None}
    if isinstance(diffs, list) and diffs:
        out["protocol_differences"] = "; ".join(map(str, diffs))
    return out


def collect(dirs: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Load every run below ``dirs``.

    Returns:
        ``(runs, failed)``: one row per complete run (metrics.json fields, ``target`` in % and
        ``target_kind``, ``label`` = method plus non-default variant, ``flops_remaining`` in %,
        ``protocol`` and ``protocol_differences``, ``config_id`` = digest of the config without
        seed/paths/name, ``superseded`` = an older run of the same config_id, cell and seed,
        ``run_dir``, ``overrides``); and one
        dict per failed or incomplete job (``path``, ``status``, ``message``, ``overrides`` and
        its cell fields where the config tells them).
    """
    run_dirs, bad_dirs, _ = _scan(dirs)
    rows, failed = [], []
    for path in bad_dirs:
        fields, overrides, _ = _job(path)
        fail = path / "FAILED"
        if fail.is_file():
            lines = [ln.strip() for ln in fail.read_text(errors="replace").splitlines()]
            status, message = "failed", next((ln for ln in lines if ln), "(empty FAILED file)")
        else:
            status, message = "incomplete", "no metrics.json and no FAILED (killed or running)"
        cell = _cell_fields(fields)
        fields = {k: v for k, v in fields.items() if k not in SETTINGS}
        failed.append({"path": str(path), "status": status, "message": message,
                       "overrides": overrides, **fields, **cell})
    for path in run_dirs:
        fields, overrides, config_id = _job(path)
        try:
            metrics = json.loads((path / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            failed.append({"path": str(path), "status": "failed", "overrides": overrides,
                           "message": f"unreadable metrics.json: {e}", **fields})
            continue
        row: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        for k, v in metrics.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                row[k] = v
            elif k == "seconds" and isinstance(v, dict):
                row.update({f"seconds_{s}": t for s, t in v.items()})
            elif k == "rounds" and isinstance(v, list):
                row["num_rounds"] = len(v)
        row.update(_protocol(metrics))
        if row.get("flops_remaining") is None and _number(row.get("flops_kept")):
            row["flops_remaining"] = 100 * row["flops_kept"]  # the fraction's percent
        # metrics.json knows the target and budget best; the config fills in what it lacks
        budget = metrics.get("budget_type") or fields["budget"]
        row.update(_cell_fields({**fields, **row, "budget": budget}))
        row.update(run_dir=str(path), overrides=" ".join(overrides), config_id=config_id,
                   has_layers=(path / "layers.csv").is_file(),
                   has_rounds=row.get("num_rounds", 1) > 1 and (path / "rounds.csv").is_file(),
                   has_curves=(path / "rd_curves.npz").is_file(),
                   mtime=(path / "metrics.json").stat().st_mtime)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df, failed
    for c in GROUP + ["method", "experiment", "protocol"]:
        df[c] = df[c].fillna("unknown").astype(str) if c in df else "unknown"
    df["label"] = df["label"].fillna(df["method"])
    for d in df.loc[df["target"].isna(), "run_dir"]:
        log.warning("%s: no target (sparsity or FLOPs) in metrics.json or config; left out "
                    "of tables", d)
    df = df.drop(columns=[c for c in SETTINGS if c in df])
    # a re-run of the same config and seed supersedes the older; different configs in one cell
    # are both kept (and flagged in README.md)
    newest = df.sort_values("mtime").groupby(CELL + ["seed", "config_id"], dropna=False) \
        .tail(1).index
    df["superseded"] = ~df.index.isin(newest)
    # config columns first: what W&B tables and spreadsheets group by
    front = [c for c in [*CELL, "method", "variant", "seed", "experiment", "target_sparsity",
                         "achieved_sparsity", "top1", "dense_top1"] if c in df]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(CELL + ["seed"], key=_sort_key).reset_index(drop=True), failed


def method_rank(label: str) -> tuple[int, str]:
    """Sort key of a method label: the paper's method first, then the baselines, then others."""
    base = str(label).split(" (")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), str(label))


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
