"""Shared fixtures: compose the project's Hydra config, shrunk to a few seconds of CPU work."""

from __future__ import annotations

import os
from pathlib import Path

# as in run.py: idle OpenMP threads sleep (spinning threads crawl on a loaded CPU)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: overrides that shrink any run to a few seconds on a CPU
TINY = [
    "device=cpu",
    "threads=1",
    "dataset=digits",
    "dataset.image_size=8",
    "dataset.calib_size=32",
    "recipe.dense_steps=30",
    "dense.optimizer.lr=3e-3",
    "recipe.finetune_steps=6",
    "recipe.batch_size=64",
]


def compose_config(overrides: list[str], tmp: Path, out: str = "out") -> DictConfig:
    """The project's config with ``overrides``; outputs in ``tmp/out``, caches in ``tmp/cache``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(
            "config",
            overrides=[
                f"paths.output_dir={tmp / out}",
                f"paths.cache_dir={tmp / 'cache'}",
                f"paths.data_dir={tmp / 'data'}",
                f"paths.log_dir={tmp / 'logs'}",
                *overrides,
            ],
        )


def dataset(config: str, /, **overrides: Any):
    """The :class:`~rdprune.data.Splits` of ``conf/dataset/<config>.yaml`` with ``overrides``
    (its keys): the factories take no defaults, the YAML holds them."""
    from rdprune.run.spec import build

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"dataset={config}"])
    for key, value in overrides.items():
        assert key in cfg.dataset, f"conf/dataset/{config}.yaml has no key {key}"
        cfg.dataset[key] = value
    return build(cfg.dataset)


@pytest.fixture
def tiny_config(tmp_path):
    """``overrides -> config``: a tiny CPU run on digits at 8x8, into ``tmp_path``."""

    def make(*overrides: str, out: str = "out") -> DictConfig:
        return compose_config([*TINY, *overrides], tmp_path, out)

    return make


class Dying:
    """Splits whose training batches stop with KeyboardInterrupt after ``after`` batches."""

    def __init__(self, data, after: int) -> None:
        self.data, self.after = data, after

    def __getattr__(self, name):
        return getattr(self.data, name)

    def train_batches(self, *args, **kwargs):
        for i, batch in enumerate(self.data.train_batches(*args, **kwargs)):
            if i == self.after:
                raise KeyboardInterrupt
            yield batch
