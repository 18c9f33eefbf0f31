"""What a run leaves behind: its metrics, the files of its output directory, the table it prints.

``metrics.json`` is written last, so its presence means the run finished; a run that fails leaves
a one-line ``FAILED`` marker instead. Text files are replaced atomically (temporary file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rdprune import cache
from rdprune.run.spec import record
from rdprune.errors import one_line
from rdprune.pruning.layers import unprunable_weights
from rdprune.pruning.masks import kept_count, sparsity_of
from rdprune.report.protocol import describe
from rdprune.tasks import Task


def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of a list of same-keyed dicts."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def layer_rows(
    layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor], macs: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One row per prunable layer: name, type, shape, weights, kept, sparsity, dense MACs."""
    rows = []
    for name, m in layers.items():
        kept = kept_count(masks[name])
        rows.append({
            "name": name,
            "type": type(m).__name__,
            "shape": "x".join(map(str, m.weight.shape)),
            "weights": m.weight.numel(),
            "kept": kept,
            "sparsity": 1.0 - kept / m.weight.numel(),
            "dense_macs": macs[name],
        })
    return rows


def write_outputs(
    out: Path,
    cfg: DictConfig,
    metrics: Mapping[str, Any],
    round_rows: Sequence[Mapping[str, Any]],
    layers: Sequence[Mapping[str, Any]],
    masks: Mapping[str, torch.Tensor],
    model: nn.Module,
    admm_rows: Sequence[Mapping[str, Any]] = (),
    curves: tuple[np.ndarray, np.ndarray] | None = None,
    correct: np.ndarray | None = None,
) -> None:
    """Write every artifact of the run into ``out`` (metrics.json last).

    Args:
        out: the run's output directory.
        cfg: the run's config (written resolved).
        metrics: the summary (:func:`summary_metrics`).
        round_rows: one row per pruning round.
        layers: :func:`layer_rows` of the final masks.
        masks: the final masks.
        model: the final model (its state_dict loads into the unpruned architecture).
        admm_rows: ADMM residuals per iteration (``finetune=admm``).
        curves: ``(curves, grid)`` of the last round (rate-distortion methods).
        correct: per test sample, whether the final model classifies it correctly
            (``test_correct.npy``: the paired bootstrap of :mod:`rdprune.report.stats` needs it).
    """
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_atomic(out / "layers.csv", to_csv(layers))
    write_atomic(out / "rounds.csv", to_csv(round_rows))
    cache.save(out / "masks.pt", {k: v.cpu() for k, v in masks.items()})
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt.tmp")
    os.replace(out / "model.pt.tmp", out / "model.pt")
    if admm_rows:
        write_atomic(out / "admm.csv", to_csv(admm_rows))
    if correct is not None:
        np.save(out / "test_correct.npy", np.asarray(correct, dtype=bool))
    if curves is not None:
        np.savez(out / "rd_curves.npz", curves=curves[0], grid=curves[1],
                 layers=np.array([r["name"] for r in layers]),
                 chosen=np.array([r["sparsity"] for r in layers]))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def summary_metrics(
    cfg: DictConfig,
    task: Task,
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    dense: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    masks: Mapping[str, torch.Tensor],
    layer_table: Sequence[Mapping[str, Any]],
    start: float,
    data_fingerprint: str | None = None,
) -> dict[str, Any]:
    """The run's ``metrics.json``: what was run (:func:`rdprune.run.spec.record`), what it
    reached, how long each stage took.

    Args:
        cfg: the run's config.
        task: the model's task (its metrics).
        model: the final model.
        layers: its prunable layers.
        dense: the dense stage's result (``source``, ``key``, ``seconds``, ``top1``).
        rows: one row per pruning round (the last one is the result).
        masks: the final masks.
        layer_table: :func:`layer_rows` of the final masks.
        start: ``time.perf_counter()`` at the start of the run.
        data_fingerprint: digest of data read from outside the config (a text corpus).
    """
    last = rows[-1]
    metrics = {
        **record(cfg),
        "achieved_sparsity": sparsity_of(masks),
        "flops_kept": last["flops_kept"],
        "dense_top1": dense["top1"],
        "pruned_top1": last["pruned_top1"],
        "top1": last["top1"],
        "joint_distortion_mean": last["joint_distortion_mean"],
        "joint_distortion_worst": last["joint_distortion_worst"],
        "num_layers": len(layers),
        "num_weights": sum(r["weights"] for r in layer_table),
        "kept_weights": sum(r["kept"] for r in layer_table),
        "unprunable_weights": sum(unprunable_weights(model, dict(layers)).values()),
        "dense_source": dense["source"],
        "dense_key": dense["key"],
        "protocol": describe(cfg),
        "rounds": [dict(r) for r in rows],
        "seconds": {
            "dense": dense["seconds"],
            "allocate": sum(r["allocate_seconds"] for r in rows),
            "admm": sum(r["admm_seconds"] for r in rows),
            "finetune": sum(r["finetune_seconds"] for r in rows),
        },
    }
    for m in task.metrics:  # beside top-1, the task's own (a language model: perplexity)
        if m != "top1":
            metrics.update({f"dense_{m}": dense[m], f"pruned_{m}": last[f"pruned_{m}"],
                            m: last[m]})
    metrics["task"] = task.name
    if data_fingerprint is not None:
        metrics["data_fingerprint"] = data_fingerprint
    for key in ("predicted_distortion", "profile_seconds", "solve_seconds", "budget_type",
                "layers_at_0", "layers_at_100", "search_forwards", "profile_forwards"):
        if key in last:
            metrics[key] = last[key]
    if "profile_seconds" in last:
        metrics["seconds"]["profile"] = sum(r["profile_seconds"] for r in rows)
        metrics["seconds"]["solve"] = sum(r["solve_seconds"] for r in rows)
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics


def summary_table(metrics: Mapping[str, Any], task: Task) -> str:
    """The short table printed at the end of a run."""
    flops_target = metrics.get("target_flops_kept") is not None
    lines = [
        f"{metrics['model']} on {metrics['dataset']}, method {metrics['method']}, "
        f"schedule {metrics['schedule']}, criterion {metrics['criterion']}",
    ]
    lines += task.summary_lines(metrics) + [
        f"  {'sparsity':<22}{100 * metrics['achieved_sparsity']:8.2f} %" + (
            "" if flops_target else f"  (target {100 * metrics['target_sparsity']:.2f} %)"),
        f"  {'FLOPs remaining':<22}{100 * metrics['flops_kept']:8.2f} %" + (
            f"  (target {100 * metrics['target_flops_kept']:.2f} %)" if flops_target else ""),
        f"  {'joint distortion':<22}{metrics['joint_distortion_worst']:8.4g} (worst)"
        f"  {metrics['joint_distortion_mean']:.4g} (mean)",
    ]
    if metrics.get("unprunable_weights"):
        lines.append(f"  {'not prunable':<22}{metrics['unprunable_weights']:8,d} weights "
                     "(outside Conv2d / Linear layers)")
    return "\n".join(lines)


def mark_failed(out: Path | None, error: BaseException) -> None:
    """Leave a ``FAILED`` file (the one-line error) in the run directory, if there is one."""
    if out is not None and out.is_dir():
        write_atomic(out / "FAILED", one_line(error, limit=None) + "\n")
