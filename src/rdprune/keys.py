"""Cache keys: every cached stage's key is made by :func:`key`, from the stage's name, the config
subtree the stage depends on, its other inputs (weights, masks, calibration data) and the package
version.

For the pipeline's stages the subtree is declared in :data:`STAGES`: each stage ``reads`` some
config paths (a path covers its subtree) and ``ignores`` the others, each with the reason its
result does not depend on it. Every key of every composed config must be read or ignored by every
stage (``tests/test_cache_keys.py`` composes all of them): a new config key is a failing test until
someone decides, here, which stages it changes. That is the guard against a key that changes a
result but is missing from its stage's key (a Wanda round once reused a magnitude round).
Methods key their own stages (``curves``, ``solve``) from their settings and inputs, through the
same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rdprune import cache

#: where a job runs and how it reports: no stage's result depends on these
_WHERE = {
    "name": "the experiment's name: folders and W&B group",
    "paths": "where files go",
    "device": "where it runs",
    "threads": "CPU threads",
    "logger": "where metrics are reported",
    "launcher": "how jobs are started",
    "checkpoint_every": "training resumes bitwise from any checkpoint",
    "slurm_gpus": "the launcher's GPU table",
    "model_name": "the model config's label (model.* holds the model)",
    "input_size": "read through dataset.image_size",
    "dataset.num_workers": "loader processes",
    "dataset.eval_batch_size": "loader batching",
    "dataset.root": "where the files are",
    "dataset.download": "whether to fetch missing files",
    "dataset.cache_dir": "where the token streams are kept",
    "rd.shards": "how profiling is split over jobs",
    "rd.shard": "how profiling is split over jobs",
    "replicate": "an experiment's label of its dense model (read through dense.seed and "
                 "dataset.split_seed)",
}
#: dataset keys of the calibration set and the evaluated splits: training does not read them
_HELD_OUT = {f"dataset.{k}": "calibration and evaluation only" for k in (
    "calib_size", "calib_len", "calib_seed", "calib_corpus", "eval_tokens")}
#: keys of the pruning rounds: dense training does not read them
_PRUNING = {
    "sparsity": "the pruning target", "flops_kept": "the pruning target",
    "seed": "the rounds' seed (dense.seed seeds dense training)",
    "method": "the allocation", "rd": "the allocation", "prune": "the criterion",
    "schedule": "the rounds", "finetune": "the rounds' fine-tuning",
    "recipe.finetune_steps": "the rounds' fine-tuning",
    "recipe.finetune_schedule": "the rounds' fine-tuning",
    "recipe.prune_amount": "the rounds", "recipe.rounds": "the rounds",
}


@dataclass(frozen=True)
class Stage:
    """What a stage's result depends on in the config (:data:`STAGES`).

    Attributes:
        reads: config paths in the key (each covers its subtree).
        ignores: config paths left out, with the reason (a more specific path wins).
    """

    reads: tuple[str, ...]
    ignores: Mapping[str, str] = field(default_factory=dict)


STAGES: dict[str, Stage] = {
    # dense training from the recipe: the model, the training data, the dense optimizer
    "dense": Stage(
        reads=("model", "dataset", "dense", "recipe.batch_size", "recipe.dense_steps",
               "recipe.dense_schedule", "precision", "devices"),
        ignores={**_WHERE, **_HELD_OUT, **_PRUNING,
                 "model.dtype": "training runs in float32; the trained weights are cast after",
                 "dense.checkpoint": "a checkpoint is loaded, not trained"}),
    # evaluation of given weights (their digest is an input) on the test split
    "eval": Stage(
        reads=("dataset",),
        ignores={**_WHERE, **_PRUNING, **{k: "the calibration set only" for k in _HELD_OUT
                                           if k != "dataset.eval_tokens"},
                 "model": "the weights (an input) are the model",
                 "dense": "the weights are an input", "recipe": "training only",
                 "precision": "training autocast only", "devices": "training processes"}),
    # one pruning round: allocation, criterion, pruning, fine-tuning of given weights and masks
    "round": Stage(
        reads=("seed", "sparsity", "flops_kept", "method", "rd", "prune", "schedule",
               "finetune", "recipe", "dataset", "precision", "devices", "model.dtype"),
        ignores={**_WHERE, "model": "the weights (an input) are the model",
                 "dense": "the weights (an input) are the dense model",
                 "recipe.dense_steps": "dense training only",
                 "recipe.dense_schedule": "dense training only"}),
}


def select(cfg: DictConfig | Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The config subtree ``stage`` reads (:data:`STAGES`), resolved, as plain data."""
    spec = STAGES[stage]
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for path in spec.reads:
        value = _get(node, path)
        if value is not _MISSING:
            out[path] = _drop(value, path, spec.ignores)
    return out


def key(stage: str, settings: Mapping[str, Any] | None = None, **inputs: Any) -> str:
    """The cache key of ``stage``: a digest of its name, the package version, ``settings``
    (the config subtree it reads, :func:`select`; a method's own settings) and ``inputs``."""
    from rdprune import __version__

    return cache.digest(stage, __version__, dict(settings or {}), inputs)


_MISSING = object()


def _get(node: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _drop(value: Any, path: str, ignores: Mapping[str, str]) -> Any:
    """``value`` (the subtree at ``path``) without the ignored paths below it."""
    if not isinstance(value, Mapping):
        return value
    return {k: _drop(v, f"{path}.{k}", ignores) for k, v in value.items()
            if f"{path}.{k}" not in ignores}


def classify(cfg: DictConfig | Mapping[str, Any], stage: str) -> dict[str, list[str]]:
    """Every leaf key of ``cfg`` as ``read`` / ``ignored`` by ``stage``, and the ``unclassified``
    ones (neither: a test failure) and ``both`` (a path read and ignored at the same depth)."""
    spec = STAGES[stage]
    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, list[str]] = {"read": [], "ignored": [], "unclassified": [], "both": []}
    for leaf in _leaves(node):
        read = _closest(leaf, spec.reads)
        ignored = _closest(leaf, spec.ignores)
        if read is None and ignored is None:
            out["unclassified"].append(leaf)
        elif read is not None and ignored is not None and read == ignored:
            out["both"].append(leaf)
        elif ignored is not None and (read is None or len(ignored) > len(read)):
            out["ignored"].append(leaf)
        else:
            out["read"].append(leaf)
    return out


def _closest(leaf: str, paths: Any) -> str | None:
    """The longest of ``paths`` that is ``leaf`` or a prefix of it (by dotted parts)."""
    hits = [p for p in paths if leaf == p or leaf.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, Mapping) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]
