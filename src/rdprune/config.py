"""What a composed run config asks for, in the terms the stages use.

One place reads the config's knobs (``sparsity`` / ``flops_kept``, ``recipe.*``, the optimizers,
the dataset): the per-round targets, the budget kind, whether a stage runs, its learning-rate
schedule, and the identities that cache keys are built from (everything that changes a result,
nothing that does not).
"""

from __future__ import annotations

import functools
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rdprune.errors import UserError
from rdprune.schedules import schedule_targets
from rdprune.train import lr_schedule

#: dataset keys that do not change the images or labels (left out of cache keys; the calibration
#: set enters the round keys through ``calib_size`` and the RD-curve keys through its tensor)
LOADER_KEYS = ("num_workers", "eval_batch_size", "root", "download", "calib_size")


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


def data_identity(cfg: DictConfig) -> dict[str, Any]:
    """The dataset config without loader-only keys: what the data itself depends on."""
    return {k: v for k, v in container(cfg.dataset).items() if k not in LOADER_KEYS}


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


def build(node: DictConfig) -> Any:
    """``hydra.utils.instantiate``, but a UserError raised by the target surfaces as itself."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
