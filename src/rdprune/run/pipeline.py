"""The pipeline: dense model -> rounds of (allocate -> prune -> fine-tune) -> evaluate -> outputs.

``run(cfg)`` is what ``run.py`` calls (and what tests call with a composed config). Stages:

1. Setup: every input is checked (:mod:`rdprune.run.checks`) before anything expensive runs,
   whatever is in the cache.
2. Dense model: a checkpoint, pretrained weights (``model.weights``), or training with the recipe.
3. Per round of the schedule (one round for one-shot): allocation (:func:`rdprune.api.allocate`
   with the configured method), magnitude pruning (:func:`rdprune.api.prune`), the measured joint
   distortion on the calibration set, fine-tuning under the masks. With ``finetune=admm``, ADMM
   iterations (:mod:`rdprune.training.admm`) precede the hard pruning.
4. Outputs (:mod:`rdprune.run.outputs`) in ``paths.output_dir``.

Dense training, evaluation and every round are cached under ``paths.cache_dir`` by a digest of
what they depend on (see :mod:`rdprune.cache`), so a sweep trains each dense model once and a
killed or requeued job resumes; training stages also checkpoint every ``checkpoint_every`` steps.
The stages stay in this one module, in the order they run (a little over 300 lines), so that the
whole pipeline reads top to bottom; what the config means is in :mod:`rdprune.run.spec`, the
checks in :mod:`rdprune.run.checks`, the files in :mod:`rdprune.run.outputs`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

import rdprune
from rdprune import cache
from rdprune.run import checks as validation
from rdprune.training.admm import admm_phase
from rdprune.api import check_target, prune
from rdprune.run.spec import (
    budget_of,
    build,
    build_method,
    container,
    data_identity,
    finetunes,
    method_options,
    record,
    schedule_factory,
    targets,
    training,
    trains_dense,
)
from rdprune.data import Splits, TextSplits
from rdprune.methods.rd.distortion import joint
from rdprune.errors import UserError
from rdprune.pruning.flops import flops_kept, layer_macs
from rdprune.pruning.layers import find_prunable, unprunable_weights
from rdprune.pruning.statistics import input_norms
from rdprune.pruning.masks import (
    Criterion,
    check_criterion,
    check_masks,
    kept_count,
    layer_sparsities,
    sparsity_of,
)
from rdprune.methods import Problem
from rdprune.run.outputs import (
    layer_rows,
    mark_failed,
    summary_metrics,
    summary_table,
    write_atomic,
    write_outputs,
)
from rdprune.training.train import correct, fit, predict, top1

log = logging.getLogger(__name__)

#: datasets whose images are resized to ``dataset.image_size`` (a model may ask for another size)
RESIZABLE = ("digits", "synthetic", "imagenet")


# --------------------------------------------------------------------------------------------
# stages


@dataclass
class Run:
    """What every stage of one run shares: config, data, model, its prunable layers, places."""

    cfg: DictConfig
    data: Splits
    model: nn.Module
    layers: dict[str, nn.Module]
    macs: dict[str, int]
    device: torch.device
    cache_dir: Path
    out_dir: Path
    logger: Any
    method: Any
    data_key: dict[str, Any]
    train_key: dict[str, Any]
    checkpoint: dict[str, torch.Tensor] | None = None


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


def setup(cfg: DictConfig) -> Run:
    """Build everything cheap and check every input, before any expensive work."""
    validation.check_config(cfg)
    validation.check_targets(cfg)  # no dataset / model / method key is ignored
    device = validation.resolve_device(cfg.device)
    validation.check_machine(cfg, device)
    if trains_dense(cfg):
        validation.check_optimizer("dense", cfg.dense.get("optimizer"),
                                   cfg.recipe.dense_schedule, cfg.recipe.dense_steps)
    if finetunes(cfg):
        validation.check_optimizer("finetune", cfg.finetune.get("optimizer"),
                                   cfg.recipe.finetune_schedule, cfg.recipe.finetune_steps)
    if len(targets(cfg)) > 1 and cfg.finetune.name == "admm":
        raise UserError("finetune=admm works with schedule=oneshot (ADMM replaces the rounds)")
    cache_dir = validation.check_cache_dir(cfg.paths.cache_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    data: Splits = build(cfg.dataset)
    data.calibration_indices()  # the calibration size fits the training split
    torch.manual_seed(cfg.dense.seed)  # the dense model's initialisation
    model: nn.Module = build(cfg.model)
    state = None
    if cfg.dense.checkpoint:
        state = validation.load_state(cfg.dense.checkpoint)
        validation.check_fits(model, state, cfg.dense.checkpoint)
    example = data.train_eval[0][0].unsqueeze(0)
    try:
        layers = find_prunable(model, example)
    except Exception as e:  # noqa: BLE001 - the model's own error, turned into one line
        raise validation.input_size_error(cfg.model_name, model, tuple(example.shape[1:]), e,
                                          cfg.dataset.name in RESIZABLE,
                                          sizable="kwargs" in cfg.model) from None
    if not layers:
        raise UserError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    check_criterion(cfg.prune.criterion, layers)
    outside = sum(unprunable_weights(model, layers).values())
    if outside:
        log.warning("%s: %d weights are outside the prunable Conv2d / Linear layers "
                    "(embeddings, position tables, ...); sparsity counts the prunable ones only",
                    cfg.model_name, outside)
    method = build_method(cfg)
    fingerprint = {"fingerprint": data.fingerprint} if hasattr(data, "fingerprint") else {}
    if budget_of(cfg) == "params":
        check_target(layers, cfg.sparsity)
    method.check(layers, targets(cfg)[-1], budget_of(cfg))
    model.to(device)
    validation.warn_profiling_cost(cfg, model, data.calibration, len(layers), device)
    # MACs per sample: an image, or a language model's token (a window of one token)
    sample = example[:, :1] if isinstance(data, TextSplits) else example
    return Run(cfg=cfg, data=data, model=model, layers=layers,
               macs=layer_macs(model, sample.to(device), list(layers)), device=device,
               cache_dir=cache_dir, out_dir=Path(cfg.paths.output_dir).expanduser().resolve(),
               logger=build(cfg.logger), method=method, checkpoint=state,
               # what the data depends on: the config, and the corpus a text dataset read
               data_key={**data_identity(cfg), **fingerprint},
               train_key={**data_identity(cfg, training=True), **fingerprint})


def dense_stage(run: Run) -> dict[str, Any]:
    """Load, or train (cached), the dense model; returns its top-1 and how it was obtained."""
    cfg, model = run.cfg, run.model
    if run.checkpoint is not None:
        model.load_state_dict(run.checkpoint)
        source, seconds = f"checkpoint:{cfg.dense.checkpoint}", 0.0
    elif cfg.model.get("weights"):
        source, seconds = f"pretrained:{cfg.model.weights}", 0.0
    elif cfg.recipe.dense_steps == 0:
        source, seconds = "random init", 0.0
    else:
        key = cache.digest("dense", rdprune.__version__, container(cfg.model),
                           run.train_key, training(cfg, "dense"), cfg.dense.seed)
        path = run.cache_dir / "dense" / f"{key}.pt"

        def train() -> dict[str, Any]:
            start = time.perf_counter()
            history = fit(
                model, run.data, steps=cfg.recipe.dense_steps, batch_size=cfg.recipe.batch_size,
                optimizer=instantiate(cfg.dense.optimizer),
                scheduler=schedule_factory(cfg, "dense"), seed=cfg.dense.seed, device=run.device,
                checkpoint=path.with_suffix(".partial.pt"),
                checkpoint_every=cfg.checkpoint_every, precision=str(cfg.precision),
                devices=cfg.devices, desc="dense training",
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
    model.to(run.device)
    weights = cache.state_digest(model)
    scores = cached_evaluation(run, weights)
    return {"source": source, "key": weights, "seconds": seconds, **scores}


def evaluation(run: Run) -> dict[str, Any]:
    """The current model on the test split: ``top1`` and per-sample ``correct`` flags of a
    classifier; ``perplexity``, ``nll`` and next-token ``top1`` of a language model."""
    if hasattr(run.data, "evaluate"):
        return run.data.evaluate(run.model, run.device)
    flags = correct(run.model, run.data, run.device)
    return {"top1": top1(flags), "correct": flags}


def cached_evaluation(run: Run, weights: str) -> dict[str, Any]:
    """:func:`evaluation` of the current model (``weights``: its state digest) without the
    per-sample flags, and its ``eval_seconds``, cached by its weights and the data."""
    key = cache.digest("eval", weights, run.data_key)

    def measure() -> dict[str, float]:
        start = time.perf_counter()
        scores = {k: v for k, v in evaluation(run).items() if k != "correct"}
        return {**scores, "eval_seconds": time.perf_counter() - start}

    result, _ = cache.cached(run.cache_dir / "eval" / f"{key}.pt", measure)
    return result


def admm_stage(run: Run, sparsities: list[float], index: int) -> list[dict[str, float]]:
    """ADMM iterations pulling every layer towards its sparsity (``finetune=admm``).

    Trains ``run.model`` in place (still dense); returns one row per iteration (residuals).
    """
    cfg, spec = run.cfg, run.cfg.finetune.admm
    ckpt = run.cache_dir / "admm" / (cache.digest(
        "admm", cache.state_digest(run.model), sparsities, training(cfg, "finetune"),
        run.train_key, cfg.seed, index) + ".partial.pt")
    rows = admm_phase(
        run.model, run.data, run.layers, sparsities, iters=spec.iters,
        steps_per_iter=spec.steps_per_iter, rho=spec.rho, rho_growth=spec.rho_growth,
        batch_size=cfg.recipe.batch_size, optimizer=instantiate(spec.optimizer),
        seed=cfg.seed + 1000 * index + 500, device=run.device, checkpoint=ckpt,
        precision=str(cfg.precision), desc=f"ADMM round {index}",
    )
    ckpt.unlink(missing_ok=True)
    return rows


def criterion(run: Run) -> Criterion:
    """``prune.criterion`` for the current model (wanda: its input norms on the calibration
    set, measured once per round)."""
    if run.cfg.prune.criterion == "magnitude":
        return Criterion()
    return Criterion("wanda", input_norms(run.model, run.layers, run.data.calibration(),
                                          batch_size=run.cfg.rd.batch_size, device=run.device))


def validator(run: Run, masks: dict[str, torch.Tensor], crit: Criterion
              ) -> Callable[[dict[str, float]], float] | None:
    """``{layer: sparsity} -> validation NLL`` of a copy of the model pruned so (a method
    choosing a hyperparameter on the validation split: ATP), if the data has that split."""
    if not hasattr(run.data, "validation"):
        return None

    def nll(sparsities: dict[str, float]) -> float:
        model = copy.deepcopy(run.model)
        prune(model, sparsities, masks, criterion=crit)
        return run.data.evaluate(model, run.device, split="validation")["nll"]

    return nll


def problem(run: Run, target: float, masks: dict[str, torch.Tensor],
            crit: Criterion | None = None) -> Problem:
    """What the method solves in a round: the target as setup checked it (a fraction removed of
    the weights, or of the dense MACs), the MACs setup counted, the weights already removed,
    the criterion that will prune."""
    budget = budget_of(run.cfg)
    crit = crit or criterion(run)
    return Problem(
        model=run.model, layers=run.layers, target=target, budget=budget,
        pruned=[m.numel() - kept_count(m) for m in masks.values()],
        macs=run.macs if budget == "flops" else None, calibration=run.data.calibration(),
        cache_dir=run.cache_dir, device=run.device, criterion=crit,
        validate=validator(run, masks, crit),
    )


def prune_round(run: Run, index: int, target: float, masks: dict[str, torch.Tensor]) -> Round:
    """One round: allocate, prune, measure, fine-tune. Mutates ``run.model``."""
    cfg, model, layers = run.cfg, run.model, run.layers
    calib = run.data.calibration()
    start = time.perf_counter()
    crit = criterion(run)
    alloc = run.method.allocate(problem(run, target, masks, crit))
    alloc_seconds = time.perf_counter() - start

    bs = run.data.eval_batch_size
    reference = predict(model, calib, bs, run.device)
    start = time.perf_counter()
    admm_rows = admm_stage(run, list(alloc.values()), index) if cfg.finetune.name == "admm" \
        else []
    admm_seconds = time.perf_counter() - start
    # pruned weights stay pruned, whatever the allocation says
    new = prune(model, alloc, masks, criterion=crit)
    distortion = joint(reference, predict(model, calib, bs, run.device))
    pruned = evaluation(run)

    start = time.perf_counter()
    history = []
    if finetunes(cfg):
        ckpt = run.cache_dir / "finetune" / (
            cache.digest("ft", cache.state_digest(model), new, training(cfg, "finetune"),
                         run.train_key, cfg.seed, index) + ".partial.pt")
        history = fit(
            model, run.data, steps=cfg.recipe.finetune_steps, batch_size=cfg.recipe.batch_size,
            optimizer=instantiate(cfg.finetune.optimizer),
            scheduler=schedule_factory(cfg, "finetune"), seed=cfg.seed + 1000 * index,
            device=run.device, masks=new, checkpoint=ckpt,
            checkpoint_every=cfg.checkpoint_every, precision=str(cfg.precision),
            devices=cfg.devices, desc=f"fine-tune round {index}",
        )
        ckpt.unlink(missing_ok=True)
    ft_seconds = time.perf_counter() - start
    final = evaluation(run) if finetunes(cfg) else pruned
    check_masks(layers, new, f"after fine-tuning round {index}")

    densities = [1.0 - s for s in layer_sparsities(new)]
    row = {
        "round": index,
        "target_sparsity": target if budget_of(cfg) == "params" else None,
        "target_flops_kept": 1.0 - target if budget_of(cfg) == "flops" else None,
        "achieved_sparsity": sparsity_of(new),
        "flops_kept": flops_kept([run.macs[k] for k in layers], densities),
        "pruned_top1": pruned["top1"],
        "top1": final["top1"],
        **({"pruned_perplexity": pruned["perplexity"], "perplexity": final["perplexity"]}
           if "perplexity" in final else {}),
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
    cfg = run.cfg
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    rounds = []
    for index, target in enumerate(targets(cfg), start=1):
        key = cache.digest(
            "round", rdprune.__version__, cache.state_digest(run.model), masks,
            cfg.method.name, method_options(cfg), container(cfg.prune), target, budget_of(cfg),
            training(cfg, "finetune"), run.data_key, cfg.seed, index,
        )
        compute = functools.partial(prune_round, run, index, target, masks)
        record, hit = cache.cached(run.cache_dir / "rounds" / f"{key}.pt", compute)
        if hit:
            run.model.load_state_dict(record.state)
        masks = {k: v.to(run.device) for k, v in record.masks.items()}
        check_masks(run.layers, masks, f"after loading round {index}")
        row = record.row
        log.info("round %d: target %.4f achieved %.4f top-1 %.2f -> %.2f%s", index, target,
                 row["achieved_sparsity"], row["pruned_top1"], row["top1"],
                 " (cached)" if hit else "")
        run.logger.log_history(f"finetune_round{index}", record.history)
        run.logger.log({f"round/{k}": v for k, v in row.items()}, step=index)
        rounds.append(record)
    return rounds, masks


def shard_stage(run: Run) -> dict[str, Any]:
    """``rd.shard`` = k: profile shard k's layers of round 1 into the cache (resumable, like any
    profiling), leave ``shard.json`` in the run directory, and stop. The run without
    ``rd.shard`` then finds the curves in the cache (docs/slurm.md)."""
    cfg = run.cfg
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    start = time.perf_counter()
    done, _, measured = run.method.curves(problem(run, targets(cfg)[0], masks),
                                          shards=cfg.rd.shards, shard=cfg.rd.shard)
    result = {**record(cfg), "shard": cfg.rd.shard, "shards": cfg.rd.shards,
              "measured_layers": measured, "num_layers": len(run.layers),
              "complete": done is not None, "seconds": time.perf_counter() - start}
    run.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run.out_dir / "shard.json", json.dumps(result, indent=2) + "\n")
    print(f"RD profiling shard {cfg.rd.shard} of {cfg.rd.shards}: {measured} layers measured; "
          f"curves {'complete' if done is not None else 'incomplete (other shards pending)'}",
          flush=True)
    return result


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
        validation.check_config(cfg)  # (the record reads the target and seed)
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
        metrics = summary_metrics(cfg, run.model, run.layers, dense, [r.row for r in rounds],
                                  masks, rows, wall, run.data_key.get("fingerprint"))
        last = rounds[-1]
        write_outputs(run.out_dir, cfg, metrics, [r.row for r in rounds], rows, masks,
                      run.model, admm_rows=last.admm, correct=last.correct,
                      curves=(last.curves, last.grid) if last.curves is not None else None)
        run.logger.summary(metrics, rows)
        ok = True
        print(summary_table(metrics), flush=True)
        return metrics
    finally:
        run.logger.finish(ok)

