"""The paper's official protocol as data, and how a composed config compares with it.

:data:`RECIPES` is the specification: the official code's settings per model (its
``tools/modelloaders.py``: Akimoto-Cris/RD_PRUNE on GitHub, built on jaeho-lee/layer-adaptive-
sparsity), with the dataset-level facts in :data:`DATASETS` and the
RD method's in :data:`RD`. Each official value is keyed by the config key that sets it here
(``recipe.finetune_schedule``, ``finetune.optimizer.lr``, ...), so a difference names its knob.
Deliberate differences that fix defects of the official code (numbered as in :data:`FIXES`) are code
behaviour, not config: :data:`FIXES` lists them with their reasons, apart from the differences.

- :func:`describe` (cheap, pure): one run's config against its model's official recipe, stored
  by the pipeline in ``metrics.json``.
- :func:`compare` compares any config with official settings; :data:`EXPERIMENTS` and
  :func:`experiment_settings` are what each paper experiment (``conf/experiment``; one per
  published row of :mod:`rdprune.report.published`) must be, target and schedule included.

Composing the paper experiments from a config directory and checking them (the table in
``results/protocol.md``, ``python -m rdprune.report.protocol_check``) is :mod:`rdprune.report.protocol_check`.

Longer than most modules because most of it is the specification itself, kept in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rdprune.run.spec import profiles
from rdprune.report.published import PUBLISHED, Published


@dataclass(frozen=True)
class Training:
    """One training stage of the official code (``opt_pre`` dense, ``opt_post`` per round)."""

    optimizer: str  # torch class, as the config's ``_target_``
    lr: float
    weight_decay: float
    steps: int
    schedule: str  # constant (the code passes no scheduler) | cosine (T_max = steps)
    momentum: float | None = None  # SGD only


@dataclass(frozen=True)
class Recipe:
    """The official recipe of one model on one dataset."""

    model: str
    dataset: str
    amount: float  # iterative: fraction of the remaining weights pruned per round
    batch_size: int  # dense training and fine-tuning
    dense: Training | str  # trained from scratch, or torchvision pretrained weights by name
    finetune: Training


_ADAMW = {"optimizer": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 0.01}  # torch default wd
_SGD = {"optimizer": "torch.optim.SGD", "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.0}

#: the official code's tools/modelloaders.py, one row per model: THE specification
RECIPES: tuple[Recipe, ...] = (
    Recipe("resnet32", "cifar10", 0.2, 100, Training(**_ADAMW, steps=50_000, schedule="cosine"),
           Training(**_ADAMW, steps=80_000, schedule="constant")),
    Recipe("vgg16", "cifar10", 0.2, 100, Training(**_ADAMW, steps=20_000, schedule="constant"),
           Training(**_ADAMW, steps=40_000, schedule="constant")),
    Recipe("densenet121", "cifar10", 0.2, 100,
           Training(**_ADAMW, steps=80_000, schedule="constant"),
           Training(**_ADAMW, steps=60_000, schedule="constant")),
    Recipe("efficientnet_b0", "cifar10", 0.2, 100,
           Training(**_ADAMW, steps=50_000, schedule="constant"),
           Training(**_ADAMW, steps=40_000, schedule="constant")),
    Recipe("vgg16_bn", "imagenet", 0.6, 32, "IMAGENET1K_V1",
           Training(**_SGD, steps=80_000, schedule="cosine")),
    Recipe("resnet50", "imagenet", 0.2, 64, "IMAGENET1K_V1",
           Training(**_SGD, steps=40_000, schedule="cosine")),
)

#: dataset-level facts of the official code: calibration size; training transform (CIFAR: random
#: crop + flip; ImageNet: the evaluation transform, resize 256 bicubic + centre crop 224, no flip)
DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"dataset.calib_size": 1024, "dataset.augment": True},
    "imagenet": {"dataset.calib_size": 256, "dataset.train_transform": "official",
                 "dataset.interpolation": "bicubic", "dataset.resize": 256,
                 "dataset.image_size": 224},
}
#: the RD method's options in every official README command
RD: dict[str, Any] = {"rd.grid_points": 101, "rd.reduction": "worst"}
ROUNDS = 20  # iterative: at most this many rounds (0.8^20: 98.85%)

#: key -> what it sets (table text); keys not listed describe themselves
DESCRIPTION = {
    "model.weights": "dense model: pretrained weights (null: trained here)",
    "dense.checkpoint": "dense model: external checkpoint",
    "recipe.dense_steps": "dense training: steps",
    "dense.optimizer._target_": "dense training: optimizer",
    "dense.optimizer.lr": "dense training: learning rate",
    "dense.optimizer.weight_decay": "dense training: weight decay",
    "recipe.dense_schedule": "dense training: LR schedule",
    "finetune.name": "fine-tuning: kind",
    "finetune.optimizer._target_": "fine-tuning: optimizer (fresh every round)",
    "finetune.optimizer.lr": "fine-tuning: learning rate",
    "finetune.optimizer.momentum": "fine-tuning: momentum",
    "finetune.optimizer.weight_decay": "fine-tuning: weight decay",
    "recipe.finetune_steps": "fine-tuning: steps per round",
    "recipe.finetune_schedule": "fine-tuning: LR schedule (per round)",
    "recipe.batch_size": "batch size (dense and fine-tuning)",
    "recipe.prune_amount": "iterative: fraction of the remaining weights per round",
    "recipe.rounds": "iterative: at most this many rounds",
    "dataset.calib_size": "calibration: images (evenly strided, training split)",
    "dataset.augment": "training augmentation (random crop 32 pad 4 + flip)",
    "dataset.train_transform": "training transform (official: resize + centre crop, no flip)",
    "dataset.interpolation": "resize interpolation (every transform)",
    "dataset.resize": "resize, shorter side (evaluation and calibration)",
    "dataset.image_size": "centre crop (evaluation and calibration)",
    "rd.grid_points": "RD curve: grid points",
    "rd.reduction": "RD curve: distortion (worst: max per-sample MSE)",
    "schedule.name": "schedule",
    "sparsity": "target sparsity",
    "flops_kept": "FLOPs target (null: sparsity target)",
    "method.name": "method (ours_zerodata: N(0, 1) calibration inputs)",
}
ITERATIVE_ONLY = ("recipe.prune_amount", "recipe.rounds")
RD_ONLY = ("dataset.calib_size", *RD)


@dataclass(frozen=True)
class Fix:
    """A deliberate difference from the official code: the fix of one of its defects."""

    bug: int  # the defect's number (1 calibration augmentation, 2 DP budget, 3 caches, 5 layers)
    what: str
    official: str
    ours: str
    datasets: tuple[str, ...] = ()  # empty: every dataset
    models: tuple[str, ...] = ()  # empty: every model
    rd_only: bool = False  # only where the RD method runs

    def applies(self, model: str, dataset: str, rd: bool) -> bool:
        return ((not self.datasets or dataset in self.datasets)
                and (not self.models or model in self.models) and (rd or not self.rd_only))

    def __str__(self) -> str:
        return f"bug {self.bug}: {self.what}"


FIXES: tuple[Fix, ...] = (
    Fix(1, "calibration without augmentation",
        "calibration images keep the training augmentation (wrong transform attribute), so "
        "every curve carries input noise, non-zero even at 0% pruning",
        "evaluation transform", datasets=("cifar10",), rd_only=True),
    Fix(2, "in-budget exact DP",
        "table sized by the exact surviving-weight count (about 13 GB for ResNet-50); budget "
        "positions at multiples of 4096 are never filled, so the target can be silently missed",
        "exact DP on binned costs, never over budget, within rd.tol of it", rd_only=True),
    Fix(3, "content-hashed caches",
        "curve and DP caches keyed by hand-built paths that ignore calibration size, reduction, "
        "zero-data and the weights: stale results reused",
        "every cache keyed by a content hash of all it depends on"),
    Fix(5, "only layers that run are prunable",
        "a conv defined but never called is counted as prunable (82 layers; the RD path "
        "crashes on the mismatch)", "81 layers, those that run", models=("efficientnet_b0",)),
)


@dataclass(frozen=True)
class Row:
    """One setting compared: ``status`` is "same", "differs" or "n/a" (does not apply here)."""

    key: str
    value: Any
    official: Any
    status: str


def recipe_for(model: str, dataset: str) -> Recipe | None:
    """The official recipe of ``model`` on ``dataset`` (config names), or None."""
    return next((r for r in RECIPES if (r.model, r.dataset) == (model, dataset)), None)


def _training(prefix: str, t: Training) -> dict[str, Any]:
    out = {f"{prefix}._target_": t.optimizer, f"{prefix}.lr": t.lr}
    if t.momentum is not None:
        out[f"{prefix}.momentum"] = t.momentum
    out[f"{prefix}.weight_decay"] = t.weight_decay
    return out


def official_settings(recipe: Recipe) -> dict[str, Any]:
    """The recipe as ``{config key: official value}``, in table order."""
    out: dict[str, Any] = {}
    if isinstance(recipe.dense, str):
        out.update({"model.weights": recipe.dense, "dense.checkpoint": None,
                    "recipe.dense_steps": 0})
    else:
        out.update({"model.weights": None, "dense.checkpoint": None,
                    "recipe.dense_steps": recipe.dense.steps,
                    **_training("dense.optimizer", recipe.dense),
                    "recipe.dense_schedule": recipe.dense.schedule})
    ft = recipe.finetune
    out.update({"finetune.name": ft.optimizer.rsplit(".", 1)[1].lower(),
                **_training("finetune.optimizer", ft), "recipe.finetune_steps": ft.steps,
                "recipe.finetune_schedule": ft.schedule, "recipe.batch_size": recipe.batch_size,
                "recipe.prune_amount": recipe.amount, "recipe.rounds": ROUNDS,
                **DATASETS[recipe.dataset], **RD})
    return out


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return math.isclose(a, b, rel_tol=1e-9) if numbers else a == b


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def compare(cfg: DictConfig | Mapping[str, Any], official: Mapping[str, Any]) -> list[Row]:
    """Each official setting against ``cfg`` (resolved); a key ``cfg`` lacks reads as null."""
    cfg = _as_config(cfg)
    iterative, rd = OmegaConf.select(cfg, "schedule.name") == "iterative", profiles(cfg)
    rows = []
    for key, want in official.items():
        value = OmegaConf.select(cfg, key, default=None)
        if (key in ITERATIVE_ONLY and not iterative) or (key in RD_ONLY and not rd):
            rows.append(Row(key, value, want, "n/a"))
        else:
            rows.append(Row(key, value, want, "same" if _same(value, want) else "differs"))
    return rows


def format_value(v: Any) -> str:
    """A setting's value as the tables and :func:`describe` print it (null, true, 0.0003)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """How one run's config relates to the official protocol (cheap and pure: no compose).

    The run's model and dataset (``model_name``, ``dataset.name``) select the official recipe;
    its settings are compared, the iterative ones only for iterative runs and the RD method's
    only for RD methods. The target (sparsity or FLOPs) and the method are the run's own choice.

    Returns:
        ``{"protocol", "recipe", "differences", "fixes"}``: ``protocol`` is "official" (no
        difference), "custom" or "none" (no official recipe for this model and dataset, e.g.
        digits); ``recipe`` = "model/dataset" or None; ``differences`` = one string per differing
        setting, ``"key: value (official: value)"``; ``fixes`` = the deliberate fixes of
        official bugs that apply, ``"bug N: what"`` (reasons in :data:`FIXES`).
    """
    cfg = _as_config(cfg)
    model = OmegaConf.select(cfg, "model_name", default=None)
    dataset = OmegaConf.select(cfg, "dataset.name", default=None)
    recipe = recipe_for(model, dataset)
    if recipe is None:
        return {"protocol": "none", "recipe": None, "differences": [], "fixes": []}
    rows = compare(cfg, official_settings(recipe))
    diffs = [f"{r.key}: {format_value(r.value)} (official: {format_value(r.official)})"
             for r in rows if r.status == "differs"]
    return {"protocol": "custom" if diffs else "official", "recipe": f"{model}/{dataset}",
            "differences": diffs,
            "fixes": [str(f) for f in FIXES if f.applies(model, dataset, profiles(cfg))]}


# --------------------------------------------------------------------------------------------
# the paper experiments


def experiment_name(p: Published) -> str:
    """The ``conf/experiment`` config of a published row."""
    return f"{p.model}_{p.dataset}_{'zerodata' if p.method == 'ours_zerodata' else p.schedule}"


#: paper experiment -> its published row (target, schedule, calibration)
EXPERIMENTS: dict[str, Published] = {experiment_name(p): p for p in PUBLISHED}


def experiment_settings(p: Published) -> dict[str, Any]:
    """The official recipe plus the experiment's own settings (schedule, target, method)."""
    recipe = recipe_for(p.model, p.dataset)
    assert recipe is not None, f"no recipe for published {p.model}/{p.dataset}"
    return {"schedule.name": p.schedule, "sparsity": p.sparsity / 100, "flops_kept": None,
            "method.name": p.method, **official_settings(recipe)}
