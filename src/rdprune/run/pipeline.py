"""The pipeline: dense model -> rounds of (allocate -> prune -> fine-tune) -> evaluate -> outputs.

``run(cfg)`` is what ``run.py`` calls (and what tests call with a composed config). Stages, in the
order they run:

1. Setup (:mod:`rdprune.run.setup`): the config parsed once (:class:`~rdprune.run.spec.RunSpec`),
   every input checked before anything expensive runs, whatever is in the cache; the model's task
   (:mod:`rdprune.tasks`) answers everything that depends on the kind of model.
2. Dense model: a checkpoint, pretrained weights (``model.weights``), or training with the recipe.
3. Per round of the schedule (one round for one-shot): the criterion's calibration statistics,
   the allocation by the configured method, pruning (the task's protocol), the measured joint
   distortion on the calibration set, fine-tuning under the masks. With ``finetune=admm``, ADMM
   iterations (:mod:`rdprune.training.admm`) precede the hard pruning.
4. Outputs (:mod:`rdprune.run.outputs`) in ``paths.output_dir``.

Dense training, evaluation and every round are cached under ``paths.cache_dir`` by the keys of
:mod:`rdprune.keys`, so a sweep trains each dense model once and a killed or requeued job resumes;
training stages also checkpoint every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from rdprune import cache
from rdprune.methods.problem import Budget
from rdprune.methods.rd.distortion import joint
from rdprune.pruning.flops import flops_kept
from rdprune.pruning.masks import check_masks, layer_sparsities, sparsity_of
from rdprune.run import checks
from rdprune.run.outputs import (layer_rows, mark_failed, summary_metrics, summary_table,
                                 write_atomic, write_outputs)
from rdprune.run.parts import admm_stage, criterion, problem, prune, shard_stage, stage_key
from rdprune.run.setup import Run, setup
from rdprune.run.spec import record
from rdprune.training.train import fit, predict

log = logging.getLogger(__name__)


@dataclass
class Round:
    """One pruning round's result, as cached: the model after it and what was measured."""

    index: int
    row: dict[str, Any]
    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    admm: list[dict[str, Any]] = field(default_factory=list)
    curves: np.ndarray | None = None
    grid: np.ndarray | None = None
    correct: np.ndarray | None = None  # per test sample: classified correctly after the round


def dense_stage(run: Run) -> dict[str, Any]:
    """Load, or train (cached), the dense model; returns its metrics and how it was obtained."""
    cfg, model, dense = run.cfg, run.model, run.spec.dense
    if run.checkpoint is not None:
        model.load_state_dict(run.checkpoint)
        source, seconds = f"checkpoint:{cfg.dense.checkpoint}", 0.0
    elif cfg.model.get("weights"):
        source, seconds = f"pretrained:{cfg.model.weights}", 0.0
    elif dense.steps == 0:
        source, seconds = "random init", 0.0
    else:
        path = run.cache_dir / "dense" / f"{stage_key(run, 'dense')}.pt"

        def train() -> dict[str, Any]:
            start = time.perf_counter()
            history = fit(
                model, run.data, steps=dense.steps, batch_size=dense.batch_size,
                optimizer=dense.build_optimizer(), scheduler=dense.scheduler(),
                seed=cfg.dense.seed, device=run.device, checkpoint=path.with_suffix(".partial.pt"),
                checkpoint_every=cfg.checkpoint_every, precision=dense.precision,
                devices=dense.devices, desc="dense training",
            )
            return {"state": {k: v.cpu() for k, v in model.state_dict().items()},
                    "history": history, "seconds": time.perf_counter() - start}

        result, hit = cache.cached(path, train)
        if not hit:  # (a read-only cache has no partial file to remove)
            path.with_suffix(".partial.pt").unlink(missing_ok=True)
        model.load_state_dict(result["state"])
        run.logger.log_history("dense", result["history"])
        source, seconds = "trained", result["seconds"]
        log.info("dense model %s: %s", "loaded from cache" if hit else "trained", path)
    # which dense model this is (runs pair on it): its weights before any cast, so a run in
    # bfloat16 pairs with the float32 runs of the same model; the evaluation reads the cast ones
    identity = cache.state_digest(model)
    run.task.ready(model)  # (a language model trained here: cast to model.dtype)
    run.task.place(model, run.device)
    weights = cache.state_digest(model)
    return {"source": source, "key": identity, "seconds": seconds,
            **cached_evaluation(run, weights)}


def cached_evaluation(run: Run, weights: str) -> dict[str, Any]:
    """The task's metrics of the current model (``weights``: its state digest) on the test split,
    without per-sample flags, and its ``eval_seconds``, cached by its weights and the data."""
    def evaluate() -> dict[str, float]:
        start = time.perf_counter()
        scores = {k: v for k, v in run.task.evaluate(run.model, run.data, run.device).items()
                  if k != "correct"}
        return {**scores, "eval_seconds": time.perf_counter() - start}

    key = stage_key(run, "eval", weights=weights)
    return cache.cached(run.cache_dir / "eval" / f"{key}.pt", evaluate)[0]


def prune_round(run: Run, index: int, target: float, masks: dict[str, torch.Tensor]) -> Round:
    """One round: allocate, prune, measure, fine-tune. Mutates ``run.model``."""
    cfg, model, task, spec = run.cfg, run.model, run.task, run.spec
    calib = run.data.calibration()
    start = time.perf_counter()
    crit = criterion(run)
    alloc = run.method.allocate(problem(run, target, masks, crit))
    alloc_seconds = time.perf_counter() - start

    bs = run.data.eval_batch_size
    reference = predict(model, calib, bs, run.device)
    start = time.perf_counter()
    admm_rows = admm_stage(run, list(alloc.values()), index) if spec.admm is not None else []
    admm_seconds = time.perf_counter() - start
    new = prune(run, model, dict(alloc), masks, crit)  # pruned weights stay pruned
    distortion = joint(reference, predict(model, calib, bs, run.device))
    pruned = task.evaluate(model, run.data, run.device)

    start = time.perf_counter()
    history, ft = [], spec.finetune
    if ft.steps:
        ckpt = run.cache_dir / "finetune" / (stage_key(
            run, "finetune", weights=cache.state_digest(model), masks=new,
            index=index) + ".partial.pt")
        history = fit(
            model, run.data, steps=ft.steps, batch_size=ft.batch_size,
            optimizer=ft.build_optimizer(), scheduler=ft.scheduler(),
            seed=spec.seed + 1000 * index, device=run.device, masks=new, checkpoint=ckpt,
            checkpoint_every=cfg.checkpoint_every, precision=ft.precision, devices=ft.devices,
            desc=f"fine-tune round {index}",
        )
        ckpt.unlink(missing_ok=True)
    ft_seconds = time.perf_counter() - start
    final = task.evaluate(model, run.data, run.device) if ft.steps else pruned
    check_masks(run.layers, new, f"after fine-tuning round {index}")

    densities = [1.0 - s for s in layer_sparsities(new)]
    params = spec.budget is Budget.PARAMS
    row = {
        "round": index,
        "target_sparsity": target if params else None,
        "target_flops_kept": None if params else 1.0 - target,
        "achieved_sparsity": sparsity_of(new),
        "flops_kept": flops_kept([run.macs[k] for k in run.layers], densities),
        "pruned_top1": pruned["top1"],
        "top1": final["top1"],
        **{k: v for m in task.metrics if m != "top1"
           for k, v in ((f"pruned_{m}", pruned[m]), (m, final[m]))},
        "joint_distortion_mean": distortion["mean"],
        "joint_distortion_worst": distortion["worst"],
        "allocate_seconds": alloc_seconds,
        "admm_seconds": admm_seconds,
        "finetune_seconds": ft_seconds,
        **{k: v for k, v in alloc.info.items() if isinstance(v, (int, float, str))},
    }
    return Round(index=index, row=row,
                 state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                 masks={k: v.cpu() for k, v in new.items()}, history=history, admm=admm_rows,
                 curves=alloc.curves, grid=alloc.grid,
                 correct=final["correct"].numpy() if "correct" in final else None)


def rounds_stage(run: Run) -> tuple[list[Round], dict[str, torch.Tensor]]:
    """All rounds of the schedule, each cached by its inputs; returns them and the final masks."""
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    rounds = []
    for index, target in enumerate(run.spec.targets, start=1):
        key = stage_key(run, "round", weights=cache.state_digest(run.model), masks=masks,
                        target=target, index=index)
        compute = functools.partial(prune_round, run, index, target, masks)
        record_, hit = cache.cached(run.cache_dir / "rounds" / f"{key}.pt", compute)
        if hit:
            run.model.load_state_dict(record_.state)
        masks = {k: v.to(run.device) for k, v in record_.masks.items()}
        check_masks(run.layers, masks, f"after loading round {index}")
        row = record_.row
        log.info("round %d: target %.4f achieved %.4f top-1 %.2f -> %.2f%s", index, target,
                 row["achieved_sparsity"], row["pruned_top1"], row["top1"],
                 " (cached)" if hit else "")
        run.logger.log_history(f"finetune_round{index}", record_.history)
        run.logger.log({f"round/{k}": v for k, v in row.items()}, step=index)
        rounds.append(record_)
    return rounds, masks


# --------------------------------------------------------------------------------------------
# entry point


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra run directory (e.g. composed in a test)
        return None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole pipeline for one config; returns the metrics (also in metrics.json).

    The run directory gets ``run.json`` (:func:`rdprune.run.spec.record`) first, ``metrics.json``
    (the record and the results) last. On failure a ``FAILED`` marker with the error is left in
    the run directory; a later successful run in the same directory (a requeued job) removes it.
    """
    out = _output_dir(cfg)
    try:
        checks.check_config(cfg)  # (the record reads the target and seed)
        if out is not None:  # what the run is, for the report to place a failed or killed job
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "run.json", json.dumps(record(cfg), indent=2) + "\n")
        metrics = _run(cfg)
    except BaseException as e:
        mark_failed(out, e)
        raise
    (Path(cfg.paths.output_dir) / "FAILED").unlink(missing_ok=True)
    return metrics


def _run(cfg: DictConfig) -> dict[str, Any]:
    wall = time.perf_counter()
    run = setup(cfg)
    run.logger.start(cfg, run.out_dir)
    ok = False
    try:
        dense = dense_stage(run)
        if cfg.rd.shard is not None:
            result = shard_stage(run)
            ok = True
            return result
        rounds, masks = rounds_stage(run)
        rows = layer_rows(run.layers, masks, run.macs)
        metrics = summary_metrics(cfg, run.task, run.model, run.layers, dense,
                                  [r.row for r in rounds], masks, rows, wall,
                                  run.data.fingerprint)
        last = rounds[-1]
        write_outputs(run.out_dir, cfg, metrics, [r.row for r in rounds], rows, masks,
                      run.model, admm_rows=last.admm, correct=last.correct,
                      curves=(last.curves, last.grid) if last.curves is not None else None)
        run.task.export(run.model, run.out_dir, run.data, metrics)
        run.logger.summary(metrics, rows)
        ok = True
        print(summary_table(metrics, run.task), flush=True)
        return metrics
    finally:
        run.logger.finish(ok)
