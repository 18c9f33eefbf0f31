"""W&B logging: resolved config, experiment group, model/dataset/method tags, tables, a run that
is always finished, and offline fallback without credentials."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from rdprune.errors import UserError
from rdprune.run.pipeline import run


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged, self.summary, self.finished = [], {}, None

    def log(self, data):
        self.logged.append(data)

    def finish(self, exit_code=0):
        self.finished = exit_code


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    runs = []
    module = types.SimpleNamespace(
        init=lambda **kw: runs.append(FakeRun(**kw)) or runs[-1],
        Table=lambda columns, data: ("table", columns, data),
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    return runs


def test_wandb_run_content_and_offline_fallback(tiny_config, fake_wandb, caplog):
    cfg = tiny_config("logger=wandb", "method=lamp", "name=my_sweep")
    with caplog.at_level(logging.WARNING):
        metrics = run(cfg)
    (wb,) = fake_wandb
    assert "without credentials" in caplog.text and wb.init["mode"] == "offline"
    assert wb.init["group"] == "my_sweep"
    assert wb.init["tags"][:3] == ["resnet32", "digits", "lamp"]
    assert wb.init["config"]["sparsity"] == cfg.sparsity
    assert wb.init["config"]["model"]["num_classes"] == 10  # ${dataset.num_classes}, resolved
    assert wb.summary["top1"] == metrics["top1"]
    tables = {k for entry in wb.logged for k, v in entry.items() if isinstance(v, tuple)}
    assert {"layers", "rounds"} <= tables
    assert wb.finished == 0


def test_wandb_run_finished_on_error(tiny_config, fake_wandb, monkeypatch):
    def boom(env):
        raise UserError("dense stage exploded")

    monkeypatch.setattr("rdprune.run.pipeline.dense_stage", boom)
    with pytest.raises(UserError):
        run(tiny_config("logger=wandb", "logger.mode=offline", "method=lamp"))
    assert fake_wandb[0].finished == 1


def test_wandb_credentials_keep_online(tiny_config, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    run(tiny_config("logger=wandb", "method=lamp"))
    assert fake_wandb[0].init["mode"] == "online"
