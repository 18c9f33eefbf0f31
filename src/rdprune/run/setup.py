"""A run's first stage: every input checked and everything cheap built, before any expensive
stage runs and whatever is in the cache (:mod:`rdprune.run.checks` holds the checks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from rdprune.data import Splits
from rdprune.errors import UserError
from rdprune.methods.problem import Budget, check_target
from rdprune.pruning.criteria import check_criterion
from rdprune.pruning.flops import layer_macs
from rdprune.pruning.layers import unprunable_weights
from rdprune.run import checks
from rdprune.run.spec import RunSpec, build
from rdprune.tasks import Task, for_factory, task_of

log = logging.getLogger(__name__)

#: datasets whose images are resized to ``dataset.image_size`` (a model may ask for another size)
RESIZABLE = ("digits", "synthetic", "imagenet")


@dataclass
class Run:
    """What every stage of one run shares: the spec, data, model, its task and prunable layers,
    places."""

    spec: RunSpec
    data: Splits
    model: nn.Module
    task: Task
    layers: dict[str, nn.Module]
    macs: dict[str, int]
    device: torch.device
    cache_dir: Path
    out_dir: Path
    logger: Any
    method: Any
    checkpoint: dict[str, torch.Tensor] | None = None

    @property
    def cfg(self) -> DictConfig:
        return self.spec.cfg


def setup(cfg: DictConfig) -> Run:
    """Build everything cheap and check every input, before any expensive work."""
    checks.check_config(cfg)
    checks.check_targets(cfg)  # no dataset / model / method key is ignored
    spec = RunSpec.parse(cfg)
    device = checks.resolve_device(cfg.device)
    checks.check_machine(cfg, device)
    if spec.dense.steps:
        checks.check_optimizer("dense", spec.dense.optimizer, spec.dense.schedule,
                               spec.dense.steps)
    if spec.finetune.steps:
        checks.check_optimizer("finetune", spec.finetune.optimizer, spec.finetune.schedule,
                               spec.finetune.steps)
    if len(spec.targets) > 1 and spec.finetune_name == "admm":
        raise UserError("finetune=admm works with schedule=oneshot (ADMM replaces the rounds)")
    cache_dir = checks.check_cache_dir(cfg.paths.cache_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    data: Splits = build(cfg.dataset)
    data.calibration_indices()  # the calibration size fits the training split
    torch.manual_seed(cfg.dense.seed)  # the dense model's initialisation
    model: nn.Module = build(cfg.model, **for_factory(cfg.model.get("_target_")).model_inputs(
        data))
    task = task_of(model)
    task.check_data(data, spec.model_name)
    state = None
    if cfg.dense.checkpoint:
        state = checks.load_state(cfg.dense.checkpoint)
        checks.check_fits(model, state, cfg.dense.checkpoint)
    example = data.train_eval[0][0].unsqueeze(0)
    try:
        layers = task.prunable(model, example)
    except Exception as e:  # noqa: BLE001 - the model's own error, turned into one line
        raise checks.input_size_error(spec.model_name, model, tuple(example.shape[1:]), e,
                                      cfg.dataset.name in RESIZABLE,
                                      sizable="kwargs" in cfg.model) from None
    if not layers:
        raise UserError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    check_criterion(spec.criterion, layers)
    outside = sum(unprunable_weights(model, layers).values())
    if outside:
        log.warning("%s: %d weights are outside the prunable Conv2d / Linear layers "
                    "(embeddings, position tables, ...); sparsity counts the prunable ones only",
                    spec.model_name, outside)
    method = spec.build_method()
    if spec.budget is Budget.PARAMS:
        check_target(layers, cfg.sparsity)
    method.check(layers, spec.targets[-1], spec.budget, task)
    task.place(model, device)
    checks.warn_profiling_cost(cfg, model, data.calibration, len(layers), device)
    return Run(spec=spec, data=data, model=model, task=task, layers=layers,
               macs=layer_macs(model, task.mac_sample(example).to(device), list(layers)),
               device=device, cache_dir=cache_dir,
               out_dir=Path(cfg.paths.output_dir).expanduser().resolve(),
               logger=build(cfg.logger), method=method, checkpoint=state)
