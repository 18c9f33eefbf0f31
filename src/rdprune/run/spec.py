"""What a composed run config asks for, parsed once into a typed :class:`RunSpec`.

The stages read the spec, not the config: the per-round targets and what they count
(:class:`Budget`), the method (its :mod:`registry <rdprune.methods.registry>` entry and options),
the criterion and protocol, the two training stages (:class:`Training`), whether each runs. What a
cached stage depends on is not decided here but in :mod:`rdprune.keys`. The few cfg-level helpers
(:func:`targets`, :func:`config_id`, :func:`record`, :func:`profiles`) are what checks, reports
and tests need before a spec exists.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rdprune import cache
from rdprune.errors import UserError
from rdprune.methods.problem import Budget
from rdprune.methods.registry import MethodInfo, info
from rdprune.pruning.targets import schedule_targets
from rdprune.training.train import lr_schedule


def container(node: Any) -> Any:
    """A config node as plain data (resolved), anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def budget_of(cfg: DictConfig) -> Budget:
    """What the target counts: ``sparsity`` (params) or ``flops_kept`` (flops)."""
    return Budget.PARAMS if cfg.get("flops_kept") is None else Budget.FLOPS


def targets(cfg: DictConfig) -> list[float]:
    """Per-round targets: the fraction of the weights (or dense MACs) removed after each round."""
    goal = cfg.sparsity if budget_of(cfg) is Budget.PARAMS else 1.0 - float(cfg.flops_kept)
    return schedule_targets(
        {"name": cfg.schedule.name, "amount": cfg.recipe.prune_amount,
         "rounds": cfg.recipe.rounds}, goal)


def profiles(cfg: DictConfig) -> bool:
    """Whether the run's method measures RD curves (it takes the ``rd.*`` options)."""
    name = OmegaConf.select(cfg, "method.name", default=None)
    try:
        return name is not None and info(str(name)).profiles
    except UserError:
        return False


def method_options(cfg: DictConfig) -> dict[str, Any]:
    """The method's settings besides its name: its config's keys, plus ``rd.*`` (without the
    sharding keys) for a method that profiles (other methods do not read ``rd.*``)."""
    node = {k: v for k, v in container(cfg.method).items() if k not in ("_target_", "name")}
    return {**node, **rd_options(cfg)} if profiles(cfg) else node


def rd_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``rd.*`` options of a profiling method (without ``shards`` / ``shard``)."""
    return {k: v for k, v in container(cfg.rd).items() if k not in ("shards", "shard")}


@dataclass(frozen=True)
class Training:
    """One training stage as the loop runs it.

    Attributes:
        steps: optimizer steps (0: the stage does not run).
        schedule: learning rate over the steps (``constant`` | ``cosine``).
        batch_size: samples per step (total over devices).
        precision: ``32`` or ``bf16`` autocast.
        devices: training processes.
        optimizer: the ``_partial_`` optimizer config.
    """

    steps: int
    schedule: str
    batch_size: int
    precision: str
    devices: Any
    optimizer: Any

    def scheduler(self) -> Any:
        """``optimizer -> LR scheduler`` (picklable, for DDP workers)."""
        return functools.partial(lr_schedule, kind=self.schedule, steps=self.steps)

    def build_optimizer(self) -> Any:
        return instantiate(self.optimizer)


@dataclass(frozen=True)
class RunSpec:
    """A run config, decoded once (module docstring).

    Attributes:
        cfg: the config itself (for the outputs and the cache keys).
        model_name: the model config's name.
        method: the method's registry entry.
        criterion: ``prune.criterion``.
        sequential: ``prune.sequential``: a language model is pruned block by block.
        budget: what the targets count.
        targets: per-round targets.
        seed: the run's seed.
        dense: dense training (steps 0 when the dense model is loaded).
        finetune: each round's fine-tuning (steps 0: none).
        finetune_name: ``finetune=`` (``none``, ``adamw``, ``admm``, ...).
    """

    cfg: DictConfig
    model_name: str
    method: MethodInfo
    criterion: str
    sequential: bool
    budget: Budget
    targets: tuple[float, ...]
    seed: int
    dense: Training
    finetune: Training
    finetune_name: str

    @classmethod
    def parse(cls, cfg: DictConfig) -> RunSpec:
        r = cfg.recipe

        def stage(steps: int, schedule: str, optimizer: Any) -> Training:
            return Training(steps=int(steps), schedule=str(schedule), batch_size=int(r.batch_size),
                            precision=str(cfg.precision), devices=cfg.devices, optimizer=optimizer)

        loaded = bool(cfg.dense.checkpoint or cfg.model.get("weights"))
        ft = cfg.finetune.name != "none"
        return cls(
            cfg=cfg, model_name=str(cfg.model_name), method=info(str(cfg.method.name)),
            criterion=str(cfg.prune.criterion), sequential=bool(cfg.prune.get("sequential", True)),
            budget=budget_of(cfg), targets=tuple(targets(cfg)), seed=int(cfg.seed),
            dense=stage(0 if loaded else r.dense_steps, r.dense_schedule,
                        cfg.dense.get("optimizer")),
            finetune=stage(r.finetune_steps if ft else 0, r.finetune_schedule,
                           cfg.finetune.get("optimizer")),
            finetune_name=str(cfg.finetune.name))

    @property
    def admm(self) -> Any:
        """``finetune.admm`` (``finetune=admm``), else None."""
        return self.cfg.finetune.get("admm") if self.finetune_name == "admm" else None

    def build_method(self) -> Any:
        """The method object from ``conf/method`` (with ``rd.*`` for a profiling method)."""
        if self.method.profiles:
            return build(self.cfg.method, options=rd_options(self.cfg))
        return build(self.cfg.method)


def trains_dense(cfg: DictConfig) -> bool:
    """Whether the dense model is trained here (no checkpoint, no pretrained weights)."""
    return RunSpec.parse(cfg).dense.steps > 0


def finetunes(cfg: DictConfig) -> bool:
    """Whether each round fine-tunes (``finetune=none`` or 0 steps: no)."""
    return RunSpec.parse(cfg).finetune.steps > 0


#: config keys that do not change a run's result beyond its cell and seed (left out of
#: :func:`config_id`): the target and seed are the cell's own, the rest is where and how it runs
NEUTRAL = ("seed", "name", "sparsity", "flops_kept", "paths", "device", "threads", "logger",
           "launcher", "checkpoint_every", "dataset.root", "dataset.num_workers",
           "dataset.eval_batch_size", "dataset.download", "dataset.cache_dir", "rd.shards",
           "rd.shard", "slurm_gpus")


def config_id(cfg: DictConfig) -> str:
    """A digest of the resolved config without the :data:`NEUTRAL` keys: runs of one cell and
    seed with different ``config_id`` differ in some setting (the report names such cells). A
    setting that follows the seed (``dense.seed: ${seed}``, ``dataset.calib_seed: ${seed}``), or
    an experiment's ``replicate`` (the index of one of several dense models, paired by
    ``dense_key``), counts as that one setting, whatever its value."""
    node = copy.deepcopy(cfg)
    with open_dict(node):
        node.seed = "<seed>"  # a placeholder: every key interpolating it reads the same
        if "replicate" in node:  # which dense model of several (its keys follow it, as seed's)
            node.replicate = "<replicate>"
        # (del, not pop: pop would resolve the value, whose interpolation may be gone already)
        for key in NEUTRAL + (() if profiles(cfg) else ("rd",)):  # rd.*: RD methods only
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
        ``sequential`` (``prune.sequential``),
        ``schedule``, ``finetune``, ``experiment``, ``seed``, ``target_sparsity`` or
        ``target_flops_kept`` (the other None), ``precision`` and ``config_id``.
    """
    flops = budget_of(cfg) is Budget.FLOPS
    return {
        "model": cfg.model_name, "dataset": cfg.dataset.name, "method": cfg.method.name,
        "options": method_options(cfg), "criterion": cfg.prune.criterion,
        "sequential": bool(cfg.prune.get("sequential", True)),
        "dtype": OmegaConf.select(cfg, "model.dtype", default=None),
        "schedule": cfg.schedule.name, "finetune": cfg.finetune.name, "experiment": cfg.name,
        "seed": cfg.seed, "target_sparsity": None if flops else float(cfg.sparsity),
        "target_flops_kept": float(cfg.flops_kept) if flops else None,
        "precision": str(cfg.precision), "config_id": config_id(cfg),
    }


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a UserError raised by the target surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
