"""Where a run reports besides its output files: nowhere extra (default) or Weights & Biases.

Loggers share one small interface: ``start(cfg, out_dir)``, ``log(metrics, step)``,
``log_history(stage, rows)``, ``summary(metrics, layer_rows)``, ``finish(ok)``. The pipeline calls
``finish`` in a ``finally`` block, so a failed job of a sweep never leaves its W&B run open.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class FileLogger:
    """Appends logged metrics and training histories to ``log.jsonl`` in the output directory."""

    def __init__(self, **_: Any) -> None:
        self.path: Path | None = None

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "log.jsonl"

    def _write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._write({"step": step, **metrics})

    def log_history(self, stage: str, rows: list[dict[str, float]]) -> None:
        for row in rows:
            self._write({"stage": stage, **row})

    def summary(self, metrics: dict[str, Any], layer_rows: list[dict[str, Any]]) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass


def wandb_has_credentials() -> bool:
    """True if an API key is in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(FileLogger):
    """Weights & Biases: the resolved config, grouped by experiment, tagged by model/data/method.

    Args:
        project: W&B project.
        entity: W&B entity (team or user), or None for the default.
        mode: "online", "offline" or "disabled". Online without credentials falls back to offline
            with a warning (sync later with ``wandb sync``).
        tags: extra tags besides model, dataset and method.
    """

    def __init__(self, project: str = "rdprune", entity: str | None = None,
                 mode: str = "online", tags: list[str] | None = None, **_: Any) -> None:
        super().__init__()
        self.project, self.entity, self.mode = project, entity, mode
        self.extra_tags = list(tags or [])
        self.run = None

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        super().start(cfg, out_dir)
        import wandb

        mode = self.mode
        if mode == "online" and not wandb_has_credentials():
            log.warning("W&B online mode without credentials (WANDB_API_KEY or wandb login): "
                        "logging offline to %s instead; sync later with `wandb sync`", out_dir)
            mode = "offline"
        tags = [str(cfg.model_name), str(cfg.dataset.name), str(cfg.method.name),
                *self.extra_tags]
        self.run = wandb.init(
            project=self.project, entity=self.entity, mode=mode, dir=str(out_dir),
            config=OmegaConf.to_container(cfg, resolve=True), group=str(cfg.name), tags=tags,
            job_type=str(cfg.schedule.name), reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log(metrics, step)
        if self.run is not None:
            self.run.log(metrics)

    def log_history(self, stage: str, rows: list[dict[str, float]]) -> None:
        super().log_history(stage, rows)
        if self.run is not None:
            for row in rows:
                self.run.log({f"{stage}/{k}": v for k, v in row.items()})

    def summary(self, metrics: dict[str, Any], layer_rows: list[dict[str, Any]]) -> None:
        if self.run is None:
            return
        import wandb

        self.run.summary.update({k: v for k, v in metrics.items() if k != "rounds"})
        if layer_rows:
            cols = list(layer_rows[0])
            self.run.log({"layers": wandb.Table(columns=cols,
                                                data=[[r[c] for c in cols] for r in layer_rows])})
        if metrics.get("rounds"):
            cols = list(metrics["rounds"][0])
            self.run.log({"rounds": wandb.Table(
                columns=cols, data=[[r.get(c) for c in cols] for r in metrics["rounds"]])})

    def finish(self, ok: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None
