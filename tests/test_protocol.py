"""The paper experiments' configs against the official protocol (paper-notes section 2).

The expected values below are written from the notes independently of
``rdprune.report.protocol.RECIPES``, so a wrong entry in either the configs or the spec table fails.
The experiments are composed by :mod:`rdprune.report.protocol_check` from the checkout's ``conf/``,
named explicitly (``CONF``): the tests do not depend on the current directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rdprune.methods.registry import info
from rdprune.report import protocol

from rdprune.report import protocol_check
from rdprune.errors import UserError
from rdprune.report.published import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CIFAR = ["resnet32_cifar10_iterative", "vgg16_cifar10_iterative",
         "densenet121_cifar10_iterative", "efficientnet_b0_cifar10_iterative"]
IMAGENET = ["vgg16_bn_imagenet_iterative", "resnet50_imagenet_iterative",
            "resnet50_imagenet_oneshot", "resnet50_imagenet_zerodata"]
#: experiment -> (dense steps, dense schedule, fine-tune steps, target sparsity): section 2 and 4
CIFAR_RECIPE = {
    "resnet32_cifar10_iterative": (50_000, "cosine", 80_000, 0.955),
    "vgg16_cifar10_iterative": (20_000, "constant", 40_000, 0.9885),
    "densenet121_cifar10_iterative": (80_000, "constant", 60_000, 0.9885),
    "efficientnet_b0_cifar10_iterative": (50_000, "constant", 40_000, 0.9885),
}
#: experiment -> (batch size, fine-tune steps, amount, schedule, target, calibration inputs)
IMAGENET_RECIPE = {
    "vgg16_bn_imagenet_iterative": (32, 80_000, 0.6, "iterative", 0.893, "data"),
    "resnet50_imagenet_iterative": (64, 40_000, 0.2, "iterative", 0.41, "data"),
    "resnet50_imagenet_oneshot": (64, 40_000, 0.2, "oneshot", 0.58, "data"),
    "resnet50_imagenet_zerodata": (64, 40_000, 0.2, "oneshot", 0.50, "synthetic"),
}


@pytest.fixture(scope="module")
def composed():
    return {name: compose(name) for name in CIFAR + IMAGENET}


def compose(name: str, overrides: list[str] = ()):
    return protocol_check.compose_experiment(name, overrides, CONF)


def test_every_published_row_has_its_experiment():
    assert sorted(protocol.EXPERIMENTS) == sorted(CIFAR + IMAGENET)
    assert len(protocol.EXPERIMENTS) == len(PUBLISHED)
    for name in protocol.EXPERIMENTS:
        assert (ROOT / "conf" / "experiment" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_experiment_is_the_official_recipe(composed, name):
    cfg = composed[name]
    dense_steps, dense_schedule, ft_steps, target = CIFAR_RECIPE[name]
    assert cfg.dataset.name == "cifar10" and cfg.schedule.name == "iterative"
    assert cfg.sparsity == pytest.approx(target) and cfg.flops_kept is None
    assert cfg.get("model").get("weights") is None and cfg.dense.checkpoint is None
    assert (cfg.recipe.dense_steps, cfg.recipe.dense_schedule) == (dense_steps, dense_schedule)
    for opt in (cfg.dense.optimizer, cfg.finetune.optimizer):
        assert opt._target_ == "torch.optim.AdamW"
        assert (opt.lr, opt.weight_decay) == (pytest.approx(3e-4), pytest.approx(0.01))
    assert (cfg.recipe.finetune_steps, cfg.recipe.finetune_schedule) == (ft_steps, "constant")
    assert (cfg.recipe.batch_size, cfg.recipe.prune_amount, cfg.recipe.rounds) == (100, 0.2, 20)
    assert cfg.dataset.calib_size == 1024 and cfg.dataset.augment is True
    assert (cfg.method.name, info(cfg.method.name).settings["calibration"]) == ("ours", "data")
    assert (cfg.rd.grid_points, cfg.rd.reduction) == (101, "worst")


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_experiment_is_the_official_recipe(composed, name):
    cfg = composed[name]
    batch, ft_steps, amount, schedule, target, calibration = IMAGENET_RECIPE[name]
    assert cfg.dataset.name == "imagenet" and cfg.schedule.name == schedule
    assert cfg.sparsity == pytest.approx(target) and cfg.flops_kept is None
    assert cfg.model.weights == "IMAGENET1K_V1" and cfg.recipe.dense_steps == 0
    assert cfg.finetune.name == "sgd"
    opt = cfg.finetune.optimizer
    assert opt._target_ == "torch.optim.SGD"
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.01, 0.0, pytest.approx(1e-4))
    assert (cfg.recipe.finetune_steps, cfg.recipe.finetune_schedule) == (ft_steps, "cosine")
    assert (cfg.recipe.batch_size, cfg.recipe.prune_amount) == (batch, amount)
    assert cfg.dataset.calib_size == 256
    assert (cfg.dataset.train_transform, cfg.dataset.interpolation) == ("official", "bicubic")
    assert (cfg.dataset.resize, cfg.dataset.image_size) == (256, 224)
    method = "ours_zerodata" if calibration == "synthetic" else "ours"
    assert (cfg.method.name, info(cfg.method.name).settings["calibration"]) == (method,
                                                                               calibration)
    assert (cfg.rd.grid_points, cfg.rd.reduction) == (101, "worst")


@pytest.mark.parametrize("model, file, published_dense", [
    ("resnet50", "resnet50-0676ba61.pth", 76.14), ("vgg16_bn", "vgg16_bn-6c64b313.pth", 73.37)])
def test_weights_are_torchvisions_original_release(composed, model, file, published_dense):
    """IMAGENET1K_V1 by name (no download): the original release the paper's dense top-1 is."""
    import torchvision

    names = {c.model.weights for c in composed.values() if c.model_name == model}
    assert names == {"IMAGENET1K_V1"}
    weights = torchvision.models.get_model_weights(model)["IMAGENET1K_V1"]
    assert weights.url.rsplit("/", 1)[1] == file
    assert weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(published_dense,
                                                                              abs=0.015)
    default = torchvision.models.get_model_weights(model).DEFAULT
    assert model == "vgg16_bn" or default.url != weights.url  # DEFAULT is V2 for ResNet-50


def test_no_difference_but_the_deliberate_fixes():
    results = protocol_check.check(conf=CONF)
    assert set(results) == set(CIFAR + IMAGENET)
    for name, (rows, fixes) in results.items():
        assert [r for r in rows if r.status == "differs"] == [], name
        assert len(rows) >= 24 and sum(r.status == "same" for r in rows) >= 22, name
        bugs = [f.bug for f in fixes]
        expected = [1, 2, 3] if name in CIFAR else [2, 3]
        assert bugs == expected + ([5] if name.startswith("efficientnet") else []), name
    amount = {r.key: r.status for r in results["resnet50_imagenet_oneshot"][0]}
    assert amount["recipe.prune_amount"] == amount["recipe.rounds"] == "n/a"


@pytest.mark.parametrize("name, override, key, value, official", [
    ("resnet32_cifar10_iterative", "recipe.finetune_schedule=cosine",
     "recipe.finetune_schedule", "cosine", "constant"),
    ("vgg16_cifar10_iterative", "recipe.dense_schedule=cosine",
     "recipe.dense_schedule", "cosine", "constant"),
    ("resnet50_imagenet_oneshot", "dataset.train_transform=standard",
     "dataset.train_transform", "standard", "official"),
    ("resnet50_imagenet_iterative", "model.weights=IMAGENET1K_V2",
     "model.weights", "IMAGENET1K_V2", "IMAGENET1K_V1"),
    ("vgg16_bn_imagenet_iterative", "rd.reduction=mean", "rd.reduction", "mean", "worst"),
    ("densenet121_cifar10_iterative", "dataset.calib_size=512", "dataset.calib_size", 512, 1024),
    ("resnet32_cifar10_iterative", "sparsity=0.9", "sparsity", 0.9, 0.955),
])
def test_a_changed_setting_is_a_difference(name, override, key, value, official):
    rows, _ = protocol_check.check([name], [override], CONF)[name]
    diffs = [(r.key, r.value, r.official) for r in rows if r.status == "differs"]
    assert diffs == [(key, value, pytest.approx(official) if isinstance(official, float)
                      else official)]


def test_describe_one_run():
    official = protocol.describe(compose("resnet50_imagenet_zerodata"))
    assert official == {"protocol": "official", "recipe": "resnet50/imagenet", "differences": [],
                        "fixes": ["bug 2: in-budget exact DP", "bug 3: content-hashed caches"]}
    cfg = compose("resnet32_cifar10_iterative", [
        "recipe.finetune_schedule=cosine", "sparsity=0.5", "schedule=oneshot",
        "recipe.prune_amount=0.5", "paths.output_dir=out"])
    custom = protocol.describe(cfg)
    # the target and schedule are the run's choice; the amount does not apply to one-shot
    assert custom["protocol"] == "custom"
    assert custom["differences"] == ["recipe.finetune_schedule: cosine (official: constant)"]
    # a resolved plain dict (config.yaml as loaded) describes the same
    assert protocol.describe(OmegaConf.to_container(cfg, resolve=True)) == custom
    # baselines ignore the RD options and the calibration set
    lamp = compose("vgg16_cifar10_iterative",
                   ["method=lamp", "rd.reduction=mean", "dataset.calib_size=8"])
    assert protocol.describe(lamp)["protocol"] == "official"
    assert protocol.describe(lamp)["fixes"] == ["bug 3: content-hashed caches"]
    ft = protocol.describe(compose("vgg16_cifar10_iterative", ["finetune=none"]))
    assert "finetune.name: none (official: adamw)" in ft["differences"]


def test_describe_without_an_official_recipe():
    none = {"protocol": "none", "recipe": None, "differences": [], "fixes": []}
    assert protocol.describe(compose("quickstart")) == none
    assert protocol.describe({"model_name": "resnet32", "dataset": {"name": "cifar100"}}) == none


def test_cli_marks_differences_and_writes_markdown(tmp_path, capsys):
    out = tmp_path / "protocol.md"
    assert protocol_check.main(["--config-dir", str(CONF), "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == text
    assert "**DIFFERS**" not in text and text.count("\n## ") == 8
    assert "| `efficientnet_b0_cifar10_iterative` | 0 | bug 1, bug 2, bug 3, bug 5 |" in text
    assert ("| fine-tuning: LR schedule (per round) | `recipe.finetune_schedule` | constant | "
            "constant |  |") in text
    assert protocol_check.main(["--config-dir", str(CONF), "recipe.finetune_schedule=cosine"]) == 1
    changed = capsys.readouterr().out
    assert ("| fine-tuning: LR schedule (per round) | `recipe.finetune_schedule` | cosine | "
            "constant | **DIFFERS** |") in changed
    assert "| `resnet32_cifar10_iterative` | 1 |" in changed


def test_committed_protocol_md_is_current(tmp_path):
    """results/protocol.md is what the configs give today (else: regenerate, see its header)."""
    out = tmp_path / "protocol.md"
    protocol_check.main(["--config-dir", str(CONF), "--out", str(out)])
    committed = (ROOT / "results" / "protocol.md").read_text()
    command = "python -m rdprune.report.protocol_check --out results/protocol.md"
    header = f"    {command}\n"
    assert header in committed, f"regenerate: {command}"
    assert committed.replace(header, "") == out.read_text().replace(
        f"    python -m rdprune.report.protocol_check --config-dir {CONF} --out {out}\n", ""), \
        f"results/protocol.md is stale: {command}"


def test_the_config_directory_is_named_found_here_or_asked_for(tmp_path, monkeypatch):
    """--config-dir, else $RDPRUNE_CONF, else ./conf; nothing assumes a source checkout."""
    monkeypatch.delenv(protocol_check.CONF_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no conf/ here
    with pytest.raises(UserError, match=r"^no config directory: .*pass --config-dir") as info:
        protocol_check.config_dir()
    assert "\n" not in str(info.value)
    assert protocol_check.config_dir(CONF) == CONF
    with pytest.raises(UserError, match=r"^--config-dir=.* is not a config directory"):
        protocol_check.config_dir(tmp_path)
    monkeypatch.setenv(protocol_check.CONF_ENV, str(CONF))
    assert protocol_check.config_dir() == CONF
    assert protocol_check.config_dir(CONF) == CONF
    cfg = protocol_check.compose_experiment("resnet50_imagenet_oneshot")  # from $RDPRUNE_CONF
    assert cfg.model_name == "resnet50"
    monkeypatch.setenv(protocol_check.CONF_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"^RDPRUNE_CONF=.* is not a config directory"):
        protocol_check.config_dir()
    monkeypatch.delenv(protocol_check.CONF_ENV)
    monkeypatch.chdir(ROOT)  # ./conf
    assert protocol_check.config_dir() == CONF


def test_the_cli_without_a_config_directory_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != protocol_check.CONF_ENV}
    proc = subprocess.run([sys.executable, "-m", "rdprune.report.protocol_check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("error: no config directory") and proc.stderr.count("\n") == 1
    assert "--config-dir" in proc.stderr
