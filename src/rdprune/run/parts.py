"""What a pruning round hands its method and criterion, and the stages built on the same parts
besides the rounds (:mod:`rdprune.run.pipeline` runs them in order):

- :func:`criterion`: ``prune.criterion`` with its calibration statistics on the current model;
- :func:`problem`: the :class:`~rdprune.methods.problem.Problem` of a round (with ATP's
  :func:`validator`), by the one builder the API uses too;
- :func:`prune`: the task's pruning protocol (block by block for a language model);
- :func:`admm_stage` (``finetune=admm``) and :func:`shard_stage` (``rd.shard``: one job's share
  of the RD profiling);
- :func:`stage_key`: a pipeline stage's cache key (:mod:`rdprune.keys`).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any, Callable

import torch
from hydra.utils import instantiate

from rdprune import cache, keys
from rdprune.methods.problem import Problem, build_problem
from rdprune.pruning.criteria import Criterion, measure
from rdprune.run.outputs import write_atomic
from rdprune.run.setup import Run
from rdprune.run.spec import record
from rdprune.training.admm import admm_phase


def stage_key(run: Run, stage: str, **inputs: Any) -> str:
    """The cache key of a pipeline stage: the config subtree it reads, the data read from
    outside the config, and ``inputs``."""
    settings = keys.select(run.cfg, "round" if stage in ("finetune", "admm") else stage)
    return keys.key(stage, settings, data=run.data.fingerprint, **inputs)


def criterion(run: Run) -> Criterion:
    """``prune.criterion`` with its calibration statistics on the current model (once per
    round)."""
    return measure(run.spec.criterion, run.model, run.layers, run.data.calibration(),
                   batch_size=run.cfg.rd.batch_size, device=run.device)


def prune(run: Run, model: torch.nn.Module, sparsities: dict[str, float],
          masks: dict[str, torch.Tensor], crit: Criterion) -> dict[str, torch.Tensor]:
    """Prune ``model`` (the run's or a copy of it) by the task's protocol; returns the masks."""
    layers = {k: model.get_submodule(k) for k in run.layers}
    return run.task.prune(model, layers, sparsities, crit, run.data.calibration(), masks,
                          sequential=run.spec.sequential, batch_size=run.cfg.rd.batch_size)


def validator(run: Run, masks: dict[str, torch.Tensor], crit: Criterion
              ) -> Callable[[dict[str, float]], float] | None:
    """``{layer: sparsity} -> validation loss`` of a copy of the model pruned so (a method
    choosing a hyperparameter on the validation split: ATP), if the task has that split."""
    if not run.task.has_validation(run.data):
        return None

    def loss(sparsities: dict[str, float]) -> float:
        model = copy.deepcopy(run.model)
        prune(run, model, sparsities, masks, crit)
        return run.task.validation_loss(model, run.data, run.device)

    return loss


def problem(run: Run, target: float, masks: dict[str, torch.Tensor],
            crit: Criterion | None = None) -> Problem:
    """What the method solves in a round (:func:`~rdprune.methods.problem.build_problem`)."""
    crit = crit or criterion(run)
    return build_problem(
        run.model, run.layers, target, run.spec.budget, calibration=run.data.calibration(),
        task=run.task, criterion=crit, masks=masks, macs=run.macs, cache_dir=run.cache_dir,
        device=run.device, validate=validator(run, masks, crit))


def admm_stage(run: Run, sparsities: list[float], index: int) -> list[dict[str, float]]:
    """ADMM iterations pulling every layer towards its sparsity (``finetune=admm``); trains
    ``run.model`` in place (still dense); returns one row per iteration (residuals)."""
    spec, ft = run.spec.admm, run.spec.finetune
    ckpt = run.cache_dir / "admm" / (stage_key(
        run, "admm", weights=cache.state_digest(run.model), sparsities=sparsities,
        index=index) + ".partial.pt")
    rows = admm_phase(
        run.model, run.data, run.layers, sparsities, iters=spec.iters,
        steps_per_iter=spec.steps_per_iter, rho=spec.rho, rho_growth=spec.rho_growth,
        batch_size=ft.batch_size, optimizer=instantiate(spec.optimizer),
        seed=run.spec.seed + 1000 * index + 500, device=run.device, checkpoint=ckpt,
        precision=ft.precision, desc=f"ADMM round {index}",
    )
    ckpt.unlink(missing_ok=True)
    return rows


def shard_stage(run: Run) -> dict[str, Any]:
    """``rd.shard`` = k: profile shard k's layers of round 1 into the cache (resumable, like any
    profiling), leave ``shard.json`` in the run directory, and stop. The run without
    ``rd.shard`` then finds the curves in the cache (docs/slurm.md)."""
    cfg = run.cfg
    masks = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in run.layers.items()}
    start = time.perf_counter()
    done, _, measured = run.method.curves(problem(run, run.spec.targets[0], masks),
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
