"""What a composed run config asks for, in the terms the stages use.

One place reads the config's knobs (``sparsity`` / ``flops_kept``, ``recipe.*``, the optimizers,
the dataset): the per-round targets, the budget kind, whether a stage runs, its learning-rate
schedule, and the identities that cache keys are built from (everything that changes a result,
nothing that does not).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rdprune import cache

from rdprune.errors import UserError
from rdprune.pruning.targets import schedule_targets
from rdprune.training.train import lr_schedule

#: dataset keys that change neither the data nor any result (left out of every cache key)
LOADER_KEYS = ("num_workers", "eval_batch_size", "root", "download", "cache_dir")
#: dataset keys of the calibration set and of the evaluated split only: the training data, and so
#: a trained model, does not depend on them (left out of the training stages' keys)
HELD_OUT_KEYS = ("calib_size", "calib_len", "calib_seed", "calib_corpus", "eval_tokens")


def container(node: Any) -> Any:
    """A config node as plain data (resolved), anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def budget_of(cfg: DictConfig) -> str:
    """What the target counts: "params" (``sparsity``) or "flops" (``flops_kept``)."""
    return "params" if cfg.get("flops_kept") is None else "flops"


def targets(cfg: DictConfig) -> list[float]:
    """Per-round targets: the fraction of the weights (or dense MACs) removed after each round."""
    goal = cfg.sparsity if budget_of(cfg) == "params" else 1.0 - float(cfg.flops_kept)
    return schedule_targets(
        {"name": cfg.schedule.name, "amount": cfg.recipe.prune_amount,
         "rounds": cfg.recipe.rounds}, goal)


def data_identity(cfg: DictConfig, training: bool = False) -> dict[str, Any]:
    """The dataset config without loader-only keys: what the data itself depends on (with
    ``training``: what the training split depends on, without the calibration and evaluation
    keys)."""
    drop = LOADER_KEYS + (HELD_OUT_KEYS if training else ())
    return {k: v for k, v in container(cfg.dataset).items() if k not in drop}


def training(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Everything a training stage's result depends on besides the model and data (cache keys).

    ``stage`` is "dense" or "finetune"; steps, batch size and schedule come from ``recipe``.
    """
    r = cfg.recipe
    node = cfg.dense if stage == "dense" else cfg.finetune
    spec = {
        "optimizer": container(node.get("optimizer")),
        "steps": r.dense_steps if stage == "dense" else r.finetune_steps,
        "schedule": r.dense_schedule if stage == "dense" else r.finetune_schedule,
        "batch_size": r.batch_size, "precision": str(cfg.precision), "devices": cfg.devices,
    }
    if stage == "finetune":
        spec["finetune"] = cfg.finetune.name
        spec["admm"] = container(cfg.finetune.get("admm"))
    return spec


def schedule_factory(cfg: DictConfig, stage: str) -> Any:
    """``optimizer -> LR scheduler`` of a training stage (picklable, for DDP workers)."""
    spec = training(cfg, stage)
    return functools.partial(lr_schedule, kind=spec["schedule"], steps=spec["steps"])


def trains_dense(cfg: DictConfig) -> bool:
    """Whether the dense model is trained here (no checkpoint, no pretrained weights)."""
    return not (cfg.dense.checkpoint or cfg.model.get("weights")) and cfg.recipe.dense_steps > 0


def finetunes(cfg: DictConfig) -> bool:
    """Whether each round fine-tunes (``finetune=none`` or 0 steps: no)."""
    return cfg.finetune.name != "none" and cfg.recipe.finetune_steps > 0


#: config keys that do not change a run's result beyond its cell and seed (left out of
#: :func:`config_id`): the target and seed are the cell's own, the rest is where and how it runs
NEUTRAL = ("seed", "name", "sparsity", "flops_kept", "paths", "device", "threads", "logger",
           "launcher", "checkpoint_every", "dataset.root", "dataset.num_workers",
           "dataset.eval_batch_size", "dataset.download", "dataset.cache_dir", "rd.shards",
           "rd.shard", "slurm_gpus")
#: ``rd.*`` keys that split RD profiling over jobs (``rd.shard`` = k of ``rd.shards``): how the
#: curves are computed, not what they are, so they are not options of the method
SHARDING = ("shards", "shard")


def rd_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``rd.*`` options of a rate-distortion method (without the sharding keys)."""
    return {k: v for k, v in container(cfg.rd).items() if k not in SHARDING}


def method_options(cfg: DictConfig) -> dict[str, Any]:
    """The method's settings besides its name: its config's keys, plus ``rd.*`` for a
    rate-distortion method (other methods do not read ``rd.*``)."""
    node = {k: v for k, v in container(cfg.method).items() if k not in ("_target_", "name")}
    return {**node, **rd_options(cfg)} if is_rd(cfg) else node


def config_id(cfg: DictConfig) -> str:
    """A digest of the resolved config without the :data:`NEUTRAL` keys: runs of one cell and
    seed with different ``config_id`` differ in some setting (the report names such cells). A
    setting that follows the seed (``dense.seed: ${seed}``, ``dataset.calib_seed: ${seed}``)
    counts as that one setting, whatever the seed."""
    node = copy.deepcopy(cfg)
    with open_dict(node):
        node.seed = "<seed>"  # a placeholder: every key interpolating it reads the same
        # (del, not pop: pop would resolve the value, whose interpolation may be gone already)
        for key in NEUTRAL + (() if is_rd(cfg) else ("rd",)):  # rd.*: RD methods only
            if key == "seed":
                continue
            parent, _, leaf = key.rpartition(".")
            holder = OmegaConf.select(node, parent) if parent else node
            if isinstance(holder, DictConfig) and leaf in holder:
                del holder[leaf]
    return cache.digest(container(node))[:12]


def record(cfg: DictConfig) -> dict[str, Any]:
    """What the run is, as ``metrics.json`` (and ``run.json`` while it runs) records it: the
    report reads these fields and nothing else of the config.

    Returns:
        ``model``, ``dataset``, ``method``, ``options`` (:func:`method_options`), ``criterion``,
        ``schedule``, ``finetune``, ``experiment``, ``seed``, ``target_sparsity`` or
        ``target_flops_kept`` (the other None), ``precision`` and ``config_id``.
    """
    flops = budget_of(cfg) == "flops"
    return {
        "model": cfg.model_name, "dataset": cfg.dataset.name, "method": cfg.method.name,
        "options": method_options(cfg), "criterion": cfg.prune.criterion,
        "schedule": cfg.schedule.name, "finetune": cfg.finetune.name, "experiment": cfg.name,
        "seed": cfg.seed, "target_sparsity": None if flops else float(cfg.sparsity),
        "target_flops_kept": float(cfg.flops_kept) if flops else None,
        "precision": str(cfg.precision), "config_id": config_id(cfg),
    }


def is_rd(cfg: DictConfig) -> bool:
    """Whether the run's method is a rate-distortion method (it takes the ``rd.*`` options)."""
    from hydra.utils import get_method

    from rdprune.methods import rate_distortion

    target = OmegaConf.select(cfg, "method._target_", default=None)
    return target is not None and get_method(target) is rate_distortion


def build_method(cfg: DictConfig) -> Any:
    """The run's method from ``conf/method``; a rate-distortion method gets ``rd.*`` as its
    options (the one place they are read; other methods ignore them, as documented there)."""
    return build(cfg.method, options=rd_options(cfg)) if is_rd(cfg) else build(cfg.method)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a UserError raised by the target surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
