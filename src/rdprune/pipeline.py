"""The pipeline: dense model -> rounds of (allocate -> prune -> fine-tune) -> evaluate -> outputs.

``run(cfg)`` is what ``run.py`` calls (and what tests call with a composed config). Stages:

1. Dense model: a checkpoint, pretrained weights, or training with the model's recipe.
2. Per round of the schedule (one round for one-shot): allocation by the method, magnitude masks,
   pruning, measured joint distortion on the calibration set, fine-tuning under the masks.
   With ``finetune=admm``, ADMM iterations (:mod:`rdprune.admm`) precede the hard pruning.
3. Outputs in ``paths.output_dir``: ``metrics.json``, ``layers.csv``, ``rounds.csv``, ``masks.pt``,
   ``model.pt`` (dense-compatible state_dict, zeros in place), ``config.yaml``, for
   rate-distortion methods ``rd_curves.npz``, and for ADMM ``admm.csv`` (residual per iteration).

Dense training and every round are cached under ``paths.cache_dir`` by a digest of what they depend
on (see :mod:`rdprune.cache`), so a sweep trains each dense model once and a killed job resumes.
All cheap input checks run before any expensive work.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import rdprune
from rdprune import cache
from rdprune.admm import admm_phase
from rdprune.data import Splits
from rdprune.errors import UserError
from rdprune.flops import flops_remaining, layer_macs
from rdprune.layers import find_prunable
from rdprune.masks import (
    apply_masks,
    check_masks,
    kept_count,
    layer_sparsities,
    magnitude_masks,
    sparsity_of,
)
from rdprune.methods import Allocation, Problem
from rdprune.schedules import schedule_targets
from rdprune.train import SCHEDULES, evaluate, fit, lr_schedule, predict

log = logging.getLogger(__name__)

#: dataset keys that do not change the images or labels (left out of cache keys; the calibration
#: inputs themselves are part of the RD-curve keys)
LOADER_KEYS = ("num_workers", "eval_batch_size", "root", "download", "calib_size")


# --------------------------------------------------------------------------------------------
# checks and small helpers


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the config, before anything expensive happens."""
    s = cfg.sparsity
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise UserError(f"sparsity must be a number in [0, 1), got {s!r}")
    if not 0.0 <= s < 1.0:
        raise UserError(f"sparsity must be in [0, 1) (fraction of weights removed), got {s}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed must be an integer, got {cfg.seed!r}")


def budget_of(cfg: DictConfig) -> str:
    """What the target counts: "params" (``sparsity``) or "flops" (``flops_kept``)."""
    return "params" if cfg.get("flops_kept") is None else "flops"


def targets(cfg: DictConfig) -> list[float]:
    """Per-round targets: fraction of the weights (or of the dense MACs) removed after each round."""
    goal = cfg.sparsity if budget_of(cfg) == "params" else 1.0 - float(cfg.flops_kept)
    return schedule_targets(
        {"name": cfg.schedule.name, "amount": cfg.recipe.prune_amount, "rounds": cfg.recipe.rounds},
        goal)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} requested but CUDA is not available: use device=cpu")
    return torch.device(name)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def data_identity(cfg: DictConfig) -> dict[str, Any]:
    """The dataset config without loader-only keys: what the data itself depends on."""
    return {k: v for k, v in _container(cfg.dataset).items() if k not in LOADER_KEYS}


def training(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Everything a training stage's result depends on besides the model and data (cache keys).

    ``stage`` is "dense" or "finetune"; the steps, batch size and schedule come from ``recipe``.
    """
    r = cfg.recipe
    node = cfg.dense if stage == "dense" else cfg.finetune
    spec = {
        "optimizer": _container(node.get("optimizer")),
        "steps": r.dense_steps if stage == "dense" else r.finetune_steps,
        "schedule": r.dense_schedule if stage == "dense" else r.finetune_schedule,
        "batch_size": r.batch_size, "precision": str(cfg.precision), "devices": cfg.devices,
    }
    if stage == "finetune":
        spec["finetune"] = cfg.finetune.name
        spec["admm"] = _container(cfg.finetune.get("admm"))
    return spec


def schedule_factory(cfg: DictConfig, stage: str) -> Any:
    """``optimizer -> LR scheduler`` of a training stage (picklable, for DDP workers)."""
    spec = training(cfg, stage)
    return functools.partial(lr_schedule, kind=spec["schedule"], steps=spec["steps"])


def finetunes(cfg: DictConfig) -> bool:
    """Whether each round fine-tunes (``finetune=none`` or 0 steps: no)."""
    return cfg.finetune.name != "none" and cfg.recipe.finetune_steps > 0


def check_recipe(name: str, cfg: DictConfig) -> None:
    """A training stage that will run must build its optimizer and schedule factories."""
    node = cfg.dense if name == "dense" else cfg.finetune
    spec = node.get("optimizer")
    if not callable(instantiate(spec) if spec is not None else None):
        raise UserError(f"{name}.optimizer must be a _target_ + _partial_ config, got {spec}")
    kind = training(cfg, name)["schedule"]
    if kind not in SCHEDULES:
        raise UserError(f"recipe.{name}_schedule must be one of {', '.join(SCHEDULES)}, "
                        f"got {kind!r}")


def build(node: DictConfig) -> Any:
    """``hydra.utils.instantiate``, but a UserError raised by the target surfaces as itself."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state_dict (or ``{"model": state_dict}``) into ``model``, strictly.

    Raises:
        UserError: missing file, or keys/shapes that do not match this architecture.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p} (set dense.checkpoint to an existing file)")
    state = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                             f" ({len(keys)})")
        raise UserError(f"checkpoint {p} does not fit this model - " + "; ".join(parts))
    model.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# stages


@dataclass
class Env:
    """What every stage needs: config, data, model, its prunable layers, where to work."""

    cfg: DictConfig
    data: Splits
    model: nn.Module
    layers: dict[str, nn.Module]
    macs: dict[str, int]
    device: torch.device
    cache_dir: Path
    out_dir: Path
    logger: Any


def dense_stage(env: Env) -> dict[str, Any]:
    """Load, or train (cached), the dense model; returns its top-1 and how it was obtained."""
    cfg, model = env.cfg, env.model
    if cfg.dense.checkpoint:
        load_checkpoint(model, cfg.dense.checkpoint)
        source, seconds = f"checkpoint:{cfg.dense.checkpoint}", 0.0
    elif cfg.model.get("weights"):
        source, seconds = f"pretrained:{cfg.model.weights}", 0.0
    else:
        key = cache.digest("dense", rdprune.__version__, _container(cfg.model),
                           data_identity(cfg), training(cfg, "dense"), cfg.seed)
        path = env.cache_dir / "dense" / f"{key}.pt"

        def train() -> dict[str, Any]:
            start = time.perf_counter()
            history = fit(
                model, env.data, steps=cfg.recipe.dense_steps, batch_size=cfg.recipe.batch_size,
                optimizer=instantiate(cfg.dense.optimizer),
                scheduler=schedule_factory(cfg, "dense"), seed=cfg.seed, device=env.device,
                checkpoint=path.with_suffix(".partial.pt"),
                checkpoint_every=cfg.checkpoint_every, precision=cfg.precision,
                devices=cfg.devices,
                desc="dense training",
            )
            return {"state": {k: v.cpu() for k, v in model.state_dict().items()},
                    "history": history, "seconds": time.perf_counter() - start}

        result, hit = cache.cached(path, train)
        path.with_suffix(".partial.pt").unlink(missing_ok=True)
        model.load_state_dict(result["state"])
        env.logger.log_history("dense", result["history"])
        source, seconds = "trained", result["seconds"]
        log.info("dense model %s: %s", "loaded from cache" if hit else "trained", path)
    model.to(env.device)
    top1, eval_seconds = cached_top1(env)
    return {"source": source, "seconds": seconds, "top1": top1, "eval_seconds": eval_seconds}


def cached_top1(env: Env) -> tuple[float, float]:
    """Test top-1 of the current model, cached by its weights and the data."""
    key = cache.digest("top1", cache.state_digest(env.model), data_identity(env.cfg))

    def measure() -> dict[str, float]:
        start = time.perf_counter()
        return {"top1": evaluate(env.model, env.data, env.device),
                "seconds": time.perf_counter() - start}

    result, _ = cache.cached(env.cache_dir / "eval" / f"{key}.pt", measure)
    return result["top1"], result["seconds"]


def admm_stage(env: Env, sparsities: list[float], index: int) -> list[dict[str, float]]:
    """ADMM iterations pulling every layer towards its sparsity (``finetune=admm``).

    Trains ``env.model`` in place (still dense); returns one row per iteration (residuals).
    """
    cfg, spec = env.cfg, env.cfg.finetune.admm
    ckpt = env.cache_dir / "admm" / (cache.digest(
        "admm", cache.state_digest(env.model), sparsities, training(cfg, "finetune"),
        data_identity(cfg), cfg.seed, index) + ".partial.pt")
    rows = admm_phase(
        env.model, env.data, env.layers, sparsities, iters=spec.iters,
        steps_per_iter=spec.steps_per_iter, rho=spec.rho, rho_growth=spec.rho_growth,
        batch_size=cfg.recipe.batch_size, optimizer=instantiate(spec.optimizer),
        seed=cfg.seed + 1000 * index + 500, device=env.device, checkpoint=ckpt,
        precision=cfg.precision, desc=f"ADMM round {index}",
    )
    ckpt.unlink(missing_ok=True)
    return rows


def distortions(reference: torch.Tensor, pruned: torch.Tensor) -> dict[str, float]:
    """Joint distortion of pruned logits vs reference: mean and worst (max per-sample MSE)."""
    per_sample = (reference.double() - pruned.double()).pow(2).mean(dim=1)
    return {"mean": float(per_sample.mean()), "worst": float(per_sample.max())}


def prune_round(
    env: Env, method: Any, index: int, target: float, masks: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """One round: allocate, prune, measure, fine-tune. Mutates ``env.model``; returns the record."""
    cfg, model, layers = env.cfg, env.model, env.layers
    problem = Problem(
        model=model, layers=layers, target=target, budget=budget_of(cfg),
        pruned=[m.numel() - kept_count(m) for m in masks.values()], macs=env.macs,
        calibration=env.data.calibration(), cache_dir=env.cache_dir, device=env.device,
    )
    start = time.perf_counter()
    alloc: Allocation = method.allocate(problem)
    alloc_seconds = time.perf_counter() - start

    calib = env.data.calibration()
    bs = env.data.eval_batch_size
    reference = predict(model, calib, bs, env.device)
    start = time.perf_counter()
    admm_rows = admm_stage(env, alloc.sparsities, index) if cfg.finetune.name == "admm" else []
    admm_seconds = time.perf_counter() - start
    new = magnitude_masks(layers, alloc.sparsities)
    # pruned weights stay pruned, whatever the allocation says
    new = {k: v & masks[k].to(v.device) for k, v in new.items()}
    apply_masks(layers, new)
    check_masks(layers, new, "after pruning")
    joint = distortions(reference, predict(model, calib, bs, env.device))
    pruned_top1 = evaluate(model, env.data, env.device)

    start = time.perf_counter()
    history = []
    if finetunes(cfg):
        ckpt = env.cache_dir / "finetune" / (
            cache.digest("ft", cache.state_digest(model), new, training(cfg, "finetune"),
                         data_identity(cfg), cfg.seed, index) + ".partial.pt")
        history = fit(
            model, env.data, steps=cfg.recipe.finetune_steps, batch_size=cfg.recipe.batch_size,
            optimizer=instantiate(cfg.finetune.optimizer),
            scheduler=schedule_factory(cfg, "finetune"),
            seed=cfg.seed + 1000 * index, device=env.device, masks=new, checkpoint=ckpt,
            checkpoint_every=cfg.checkpoint_every, precision=cfg.precision,
            devices=cfg.devices,
            desc=f"fine-tune round {index}",
        )
        ckpt.unlink(missing_ok=True)
    ft_seconds = time.perf_counter() - start
    top1 = evaluate(model, env.data, env.device) if finetunes(cfg) else pruned_top1
    check_masks(layers, new, f"after fine-tuning round {index}")

    densities = [1.0 - s for s in layer_sparsities(new)]
    row = {
        "round": index,
        "target_sparsity": target,
        "achieved_sparsity": sparsity_of(new),
        "flops_remaining": flops_remaining([env.macs[k] for k in layers], densities),
        "pruned_top1": pruned_top1,
        "top1": top1,
        "joint_distortion_mean": joint["mean"],
        "joint_distortion_worst": joint["worst"],
        "allocate_seconds": alloc_seconds,
        "admm_seconds": admm_seconds,
        "finetune_seconds": ft_seconds,
        **{k: v for k, v in alloc.info.items() if isinstance(v, (int, float, str))},
    }
    return {
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.cpu() for k, v in new.items()},
        "row": row,
        "history": history,
        "admm": admm_rows,
        "curves": alloc.curves,
        "grid": alloc.grid,
    }


def rounds_stage(env: Env, method: Any) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """All rounds of the schedule, each cached by its inputs; returns records and final masks."""
    cfg = env.cfg
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in env.layers.items()}
    records = []
    for index, target in enumerate(targets(cfg), start=1):
        key = cache.digest(
            "round", rdprune.__version__, cache.state_digest(env.model), masks,
            _container(cfg.method), target, budget_of(cfg), training(cfg, "finetune"),
            data_identity(cfg), cfg.dataset.calib_size, cfg.seed, index,
        )
        compute = functools.partial(prune_round, env, method, index, target, masks)
        record, hit = cache.cached(env.cache_dir / "rounds" / f"{key}.pt", compute)
        if hit:
            env.model.load_state_dict(record["state"])
        masks = {k: v.to(env.device) for k, v in record["masks"].items()}
        check_masks(env.layers, masks, f"after loading round {index}")
        row = record["row"]
        log.info("round %d: target %.4f achieved %.4f top-1 %.2f -> %.2f%s", index, target,
                 row["achieved_sparsity"], row["pruned_top1"], row["top1"],
                 " (cached)" if hit else "")
        env.logger.log_history(f"finetune_round{index}", record["history"])
        env.logger.log({f"round/{k}": v for k, v in row.items()}, step=index)
        records.append(record)
    return records, masks


# --------------------------------------------------------------------------------------------
# outputs


def layer_rows(env: Env, masks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per prunable layer: name, shape, weights, kept, sparsity, dense MACs."""
    rows = []
    for name, m in env.layers.items():
        mask = masks[name]
        rows.append({
            "name": name,
            "type": type(m).__name__,
            "shape": "x".join(map(str, m.weight.shape)),
            "weights": m.weight.numel(),
            "kept": kept_count(mask),
            "sparsity": 1.0 - kept_count(mask) / m.weight.numel(),
            "dense_macs": env.macs[name],
        })
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of a list of same-keyed dicts."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_outputs(env: Env, metrics: dict[str, Any], records: list[dict[str, Any]],
                  masks: dict[str, torch.Tensor], layers_rows: list[dict[str, Any]]) -> None:
    """Write every artifact of the run into the output directory (metrics.json last)."""
    out = env.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(env.cfg, resolve=True))
    write_atomic(out / "layers.csv", to_csv(layers_rows))
    write_atomic(out / "rounds.csv", to_csv([r["row"] for r in records]))
    cache.save(out / "masks.pt", {k: v.cpu() for k, v in masks.items()})
    torch.save({k: v.cpu() for k, v in env.model.state_dict().items()}, out / "model.pt.tmp")
    os.replace(out / "model.pt.tmp", out / "model.pt")
    last = records[-1]
    if last["admm"]:
        write_atomic(out / "admm.csv", to_csv(last["admm"]))
    if last["curves"] is not None:
        np.savez(out / "rd_curves.npz", curves=last["curves"], grid=last["grid"],
                 layers=np.array(list(env.layers)),
                 chosen=np.array([r["sparsity"] for r in layers_rows]))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def summary_table(metrics: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    flops_budget = metrics.get("budget_type") == "flops"
    lines = [
        f"{metrics['model']} on {metrics['dataset']}, method {metrics['method']}, "
        f"schedule {metrics['schedule']}",
        f"  {'dense top-1':<22}{metrics['dense_top1']:8.2f} %",
        f"  {'pruned top-1 (no FT)':<22}{metrics['pruned_top1']:8.2f} %",
        f"  {'final top-1':<22}{metrics['top1']:8.2f} %",
        f"  {'sparsity':<22}{100 * metrics['achieved_sparsity']:8.2f} %" + (
            "" if flops_budget else f"  (target {100 * metrics['target_sparsity']:.2f} %)"),
        f"  {'FLOPs remaining':<22}{metrics['flops_remaining']:8.2f} %" + (
            f"  (target {100 * metrics['target_flops_kept']:.2f} %)" if flops_budget else ""),
        f"  {'joint distortion':<22}{metrics['joint_distortion_worst']:8.4g} (worst)"
        f"  {metrics['joint_distortion_mean']:.4g} (mean)",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# entry point


def setup(cfg: DictConfig) -> tuple[Env, Any]:
    """Build everything cheap and check every input, before any expensive work."""
    validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    data: Splits = build(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model: nn.Module = build(cfg.model)
    example = data.train_eval[0][0].unsqueeze(0)
    layers = find_prunable(model, example)
    if not layers:
        raise UserError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    macs = layer_macs(model, example, list(layers))
    method = build(cfg.method)
    method.check(layers, targets(cfg)[-1], budget_of(cfg))
    if not (cfg.dense.checkpoint or cfg.model.get("weights")) and cfg.recipe.dense_steps > 0:
        check_recipe("dense", cfg)
    if finetunes(cfg):
        check_recipe("finetune", cfg)
    if len(targets(cfg)) > 1 and cfg.finetune.name == "admm":
        raise UserError("finetune=admm works with schedule=oneshot (ADMM replaces the rounds)")
    data.calibration_indices()
    logger = build(cfg.logger)
    env = Env(cfg=cfg, data=data, model=model.to(device), layers=layers, macs=macs,
              device=device, cache_dir=Path(cfg.paths.cache_dir).expanduser().resolve(),
              out_dir=Path(cfg.paths.output_dir).expanduser().resolve(), logger=logger)
    return env, method


def mark_failed(cfg: DictConfig, error: BaseException) -> None:
    """Leave a ``FAILED`` file (the one-line error) in the run directory, if there is one."""
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra run directory (e.g. composed in a test)
        return
    if out.is_dir():
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        write_atomic(out / "FAILED", f"{type(error).__name__}: {message}\n")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole pipeline for one config; returns the metrics (also in metrics.json).

    On failure a ``FAILED`` marker with the error is left in the run directory; a later successful
    run in the same directory (a requeued job) removes it.
    """
    try:
        metrics = _run(cfg)
    except BaseException as e:
        mark_failed(cfg, e)
        raise
    (Path(cfg.paths.output_dir) / "FAILED").unlink(missing_ok=True)
    return metrics


def _run(cfg: DictConfig) -> dict[str, Any]:
    wall = time.perf_counter()
    env, method = setup(cfg)
    env.logger.start(cfg, env.out_dir)
    ok = False
    try:
        dense = dense_stage(env)
        records, masks = rounds_stage(env, method)
        last = records[-1]["row"]
        rows = layer_rows(env, masks)
        metrics = {
            "model": cfg.model_name,
            "dataset": cfg.dataset.name,
            "method": cfg.method.name,
            "schedule": cfg.schedule.name,
            "finetune": cfg.finetune.name,
            "experiment": cfg.name,
            "seed": cfg.seed,
            "target_sparsity": float(cfg.sparsity) if budget_of(cfg) == "params" else None,
            "target_flops_kept": cfg.flops_kept,
            "achieved_sparsity": sparsity_of(masks),
            "flops_remaining": last["flops_remaining"],
            "dense_top1": dense["top1"],
            "pruned_top1": last["pruned_top1"],
            "top1": last["top1"],
            "joint_distortion_mean": last["joint_distortion_mean"],
            "joint_distortion_worst": last["joint_distortion_worst"],
            "num_layers": len(env.layers),
            "num_weights": sum(r["weights"] for r in rows),
            "kept_weights": sum(r["kept"] for r in rows),
            "dense_source": dense["source"],
            "rounds": [r["row"] for r in records],
            "seconds": {
                "dense": dense["seconds"],
                "allocate": sum(r["row"]["allocate_seconds"] for r in records),
                "admm": sum(r["row"]["admm_seconds"] for r in records),
                "finetune": sum(r["row"]["finetune_seconds"] for r in records),
            },
        }
        for key in ("predicted_distortion", "profile_seconds", "solve_seconds", "budget_type"):
            if key in last:
                metrics[key] = last[key]
        if "profile_seconds" in last:
            metrics["seconds"]["profile"] = sum(r["row"]["profile_seconds"] for r in records)
            metrics["seconds"]["solve"] = sum(r["row"]["solve_seconds"] for r in records)
        metrics["wall_seconds"] = time.perf_counter() - wall
        write_outputs(env, metrics, records, masks, rows)
        env.logger.summary(metrics, rows)
        ok = True
        print(summary_table(metrics), flush=True)
        return metrics
    finally:
        env.logger.finish(ok)
