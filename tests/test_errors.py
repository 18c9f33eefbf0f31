"""Bad input: a one-line UserError before any expensive work, and nothing written."""

from __future__ import annotations

import pytest
import torch

import rdprune
from rdprune.errors import UserError, UserFileNotFoundError, UserTypeError
from rdprune.run.pipeline import run


def assert_clean_failure(cfg, tmp_path, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "cache").exists(), "expensive work started before the check"
    assert not (tmp_path / "out" / "metrics.json").exists()
    return message


@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.1", "nan", "abc", "true"])
def test_sparsity_outside_unit_interval(tiny_config, tmp_path, value):
    assert_clean_failure(tiny_config(f"sparsity={value}"), tmp_path, "sparsity")


def test_infeasible_uniform_plus(tiny_config, tmp_path):
    message = assert_clean_failure(
        tiny_config("method=uniform_plus", "sparsity=0.999"), tmp_path, "uniform_plus"
    )
    assert "0.999" in message


def test_unknown_generic_model_name(tiny_config, tmp_path):
    message = assert_clean_failure(
        tiny_config("model=generic", "model.name=resnet_18"), tmp_path, "resnet_18"
    )
    assert "resnet18" in message  # a close match is suggested


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet"])
def test_missing_data_names_path_and_fix(tiny_config, tmp_path, dataset):
    cfg = tiny_config(f"dataset={dataset}", "dataset.image_size=32")  # (CIFAR's only size)
    with pytest.raises(FileNotFoundError):
        run(cfg)
    message = assert_clean_failure(cfg, tmp_path, "not found")
    assert str(tmp_path / "data") in message
    assert "RDPRUNE_DATA_DIR" in message


def test_calibration_larger_than_training_split(tiny_config, tmp_path):
    assert_clean_failure(tiny_config("dataset.calib_size=5000"), tmp_path, "calibration size")


def test_grid_with_fewer_than_two_points(tiny_config, tmp_path):
    assert_clean_failure(tiny_config("method=ours", "rd.grid_points=1"), tmp_path,
                         "grid_points")


def test_fixed_sparsities_must_fit_the_model(tiny_config, tmp_path):
    assert_clean_failure(tiny_config("method=fixed", "method.sparsities=[0.5,0.5]"), tmp_path,
                         "34 prunable layers")


def test_checkpoint_of_another_architecture(tiny_config, tmp_path):
    import torch

    from rdprune.models import resnet32

    path = tmp_path / "other.pt"
    torch.save(resnet32(shortcut="A").state_dict(), path)
    with pytest.raises(UserError, match="does not fit this model") as info:
        run(tiny_config(f"dense.checkpoint={path}"))
    assert "\n" not in str(info.value)
    assert "shortcut" in str(info.value)  # names the keys that differ


def test_a_recipe_without_an_optimizer_fails_before_training(tiny_config, tmp_path):
    assert_clean_failure(tiny_config("finetune=adamw", "finetune.optimizer=null"), tmp_path,
                         "finetune.optimizer must be a _target_")


def test_errors_are_the_standard_exception_types(tmp_path):
    """A caller's ``except ValueError`` / ``TypeError`` / ``FileNotFoundError`` catches them;
    run.py catches them all as UserError (exit code 2)."""
    assert issubclass(UserTypeError, UserError) and issubclass(UserFileNotFoundError, UserError)
    assert (rdprune.UserError, rdprune.UserTypeError, rdprune.UserFileNotFoundError) == (
        UserError, UserTypeError, UserFileNotFoundError)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    calib = torch.randn(8, 4)
    with pytest.raises(ValueError, match="sparsity must be in"):
        rdprune.allocate(model, calib=calib, sparsity=1.0, method="uniform")
    with pytest.raises(TypeError, match="calib must be a tensor or a DataLoader, got int"):
        rdprune.allocate(model, calib=3, sparsity=0.5, method="uniform")
    with pytest.raises(TypeError, match="is a Flatten, not a Conv2d / Linear"):
        rdprune.prune(model, {"0": 0.5})
    from rdprune.run.checks import load_state

    with pytest.raises(FileNotFoundError, match="checkpoint not found") as info:
        load_state(str(tmp_path / "missing.pt"))
    assert str(info.value) == f"checkpoint not found: {tmp_path / 'missing.pt'} (set " \
        "dense.checkpoint to an existing file)"  # the message alone, as a ValueError's
