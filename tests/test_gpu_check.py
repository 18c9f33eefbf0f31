"""experiments/gpu_check.py: the CPU smoke run writes every part of the report; the cost table's
step counts follow the official recipes; a step past its cap or a failing part is reported and
the check goes on."""

from __future__ import annotations

import importlib.util
import time

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def check():
    path = ROOT / "experiments" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:rd_curves. the traced graph")
def test_smoke_run_writes_every_part(check, tmp_path):
    out = tmp_path / "gpu_check.md"
    state = check.main(["--device", "cpu", "--smoke", "--out", str(out)])
    text = out.read_text()
    assert "SMOKE RUN" in text
    for part in ("profiling", "training", "quickstart", "cost"):
        assert state[part]["status"].startswith("done"), (part, state[part]["status"])
    for heading in ("## 1. RD profiling", "## 2. Training step time", "## 3. Quickstart",
                    "## 4. Cost to reproduce"):
        assert heading in text
    train = state["training"]
    for name, label in [("resnet32", "32"), ("resnet32", "bf16 on device"), ("resnet50", "bf16")]:
        m = train[name][label]
        assert m["ms"] > 0 and 0 <= m["wait"] < 1
    assert 0 < state["quickstart"]["metrics"]["achieved_sparsity"] < 1
    assert "| resnet32_cifar10_iterative | 100 | 14 | 80,000 | 50,000 | 1,170,000 | 15 |" in text
    assert all(r["32"] is None for r in check.cost_rows(state))  # no GPU-hours from a CPU


def test_cost_table_counts_the_official_recipes(check):
    rows = {r["experiment"]: r for r in check.cost_rows({})}
    assert set(rows) == {
        "resnet32_cifar10_iterative", "vgg16_cifar10_iterative", "densenet121_cifar10_iterative",
        "efficientnet_b0_cifar10_iterative", "vgg16_bn_imagenet_iterative",
        "resnet50_imagenet_iterative", "resnet50_imagenet_oneshot", "resnet50_imagenet_zerodata"}
    r32 = rows["resnet32_cifar10_iterative"]
    # 20% of the remaining weights per round to 95.5%: 1 - 0.8^14 >= 0.955 > 1 - 0.8^13
    assert (r32["rounds"], r32["ft"], r32["dense"]) == (14, 80_000, 50_000)
    assert r32["run"] == 50_000 + 14 * 80_000
    # 5 methods x 3 seeds; the dense model trained once per seed, shared by the methods
    assert (r32["jobs"], r32["rd_jobs"]) == (15, 3)
    assert r32["sweep"] == 3 * 50_000 + 15 * 14 * 80_000
    vgg = rows["vgg16_bn_imagenet_iterative"]  # pretrained: no dense steps; 60%, 84%, 89.3%
    assert (vgg["rounds"], vgg["ft"], vgg["dense"], vgg["run"]) == (3, 80_000, 0, 240_000)
    assert rows["resnet50_imagenet_oneshot"]["run"] == 40_000
    assert rows["resnet50_imagenet_zerodata"]["rd_jobs"] == 3  # ours_zerodata profiles too
    assert all(r["32"] is None for r in rows.values())  # nothing measured: no GPU-hours


def test_gpu_hours_from_measured_step_times(check):
    state = {"cuda": True, "training": {"resnet32": {"layers": 34, "32": {"ms": 10.0,
                                                                          "ips": 10_000.0}}}}
    rows = {r["experiment"]: r for r in check.cost_rows(state)}
    run, sweep = rows["resnet32_cifar10_iterative"]["32"]
    profile = 34 * 101 * 1024 / (3 * 10_000)  # naive bound: layers x points x calibration images
    assert run == pytest.approx((50_000 * 0.01 + 14 * (80_000 * 0.01 + profile)) / 3600)
    # 3 dense trainings, 15 jobs fine-tuning, 3 of them (method ours) profiling
    assert sweep == pytest.approx((3 * 50_000 * 0.01 + 15 * 14 * 80_000 * 0.01
                                   + 3 * 14 * profile) / 3600)
    assert rows["resnet32_cifar10_iterative"]["bf16"] is None  # bf16 not measured
    assert rows["vgg16_cifar10_iterative"]["32"] is None


def test_a_step_past_its_cap_is_stopped_and_reported(check):
    clock = check.Clock(60)
    record = {}
    start = time.monotonic()
    assert check.attempt(record, "slow", clock, 0.2, lambda: time.sleep(5)) is None
    assert time.monotonic() - start < 2
    assert record["slow"] == "stopped at its 0.2 s cap"
    assert check.attempt(record, "fast", clock, 5, lambda: 7) == 7 and "fast" not in record
    # a part's clock never outlasts the run's
    assert check.Clock(100, check.Clock(0.5)).left() <= 0.5


def test_a_failing_part_is_reported_and_the_rest_still_runs(check, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "quickstart", broken)
    out = tmp_path / "g.md"
    state = check.main(["--device", "cpu", "--smoke", "--parts", "quickstart,cost",
                        "--out", str(out)])
    assert state["quickstart"]["status"] == "failed: RuntimeError: boom"
    text = out.read_text()
    assert "## 3. Quickstart end to end (failed: RuntimeError: boom)" in text
    assert "| resnet32_cifar10_iterative | 100 | 14 | 80,000 | 50,000 | 1,170,000 | 15 |" in text
