"""The benchmark scripts (profiling, training batches, JPEG decoding) run end to end at toy
sizes and write their reports.

They are timed by hand, not here (speed claims live in results/); this only keeps them from rotting.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_profiling_toy(tmp_path):
    out = tmp_path / "bench.txt"
    script("bench_profiling").main(["--n", "2", "--grid-points", "3", "--reductions", "worst",
                                    "--groups", "1", "--ablation-every", "0", "--out", str(out)])
    text = out.read_text()
    # both fast variants agree with the naive curves (the exact one bitwise)
    exact = next(ln for ln in text.splitlines() if "fast, exact" in ln)
    assert float(exact.split()[-2]) == 0.0
    assert "s = 0 column exactly 0 in every variant: True" in text
    assert "% of profiling time" in text  # the per-layer writes of resumable profiling


def test_bench_profiling_lm_toy(tmp_path):
    out = tmp_path / "lm.txt"
    script("bench_profiling").main(["--model", "lm", "--n", "2", "--batch-size", "2",
                                    "--grid-points", "3", "--reductions", "worst", "--groups",
                                    "1", "--out", str(out)])
    text = out.read_text()
    fast = next(ln for ln in text.splitlines() if "fast (default)" in ln)
    assert float(fast.split()[-2]) < 1e-5  # the blocks-downstream path agrees with the naive one
    assert "28 prunable layers" in text


@pytest.mark.filterwarnings("ignore:rd_curves. the traced graph")
def test_bench_profiling_resnet50_toy(tmp_path):
    out = tmp_path / "r50.txt"
    res = script("bench_profiling_resnet50").main([
        "--device", "cpu", "--n", "1", "--image-size", "32", "--grid-points", "2",
        "--batch-size", "1", "--naive-layers", "1", "--out", str(out)])
    assert res["naive_rel_diff"] < 1e-4  # fast float32 vs naive on the layer timed both ways
    text = out.read_text()
    assert "54 prunable layers" in text and "not checked by this run" in text


def test_bench_batches_smoke(tmp_path):
    out = tmp_path / "batches.txt"
    res = script("bench_batches").main(["--smoke", "--out", str(out)])
    assert min(res["per_sample"], res["memory"], res["resnet32"]) > 0
    text = out.read_text()
    assert text.startswith("$ python experiments/bench_batches.py --smoke")
    assert "in-memory / per-sample:" in text and "smoke run" in text


def test_bench_decode_smoke(tmp_path):
    out = tmp_path / "decode.txt"
    res = script("bench_decode").main(["--smoke", "--out", str(out)])
    assert min(res["decode"], res["decode_resize"], res["official"]) > 0
    assert res["workers"] >= 1
    text = out.read_text()
    assert "ASSUMED GPU training rate 3000 img/s" in text and "smoke run" in text


def test_gpu_lm_check_smoke(tmp_path):
    out = tmp_path / "lm.json"
    report = script("gpu_lm_check").main(["--device", "cpu", "--smoke", "--out", str(out)])
    assert report["max_rel_diff_fast_vs_naive"] < 1e-5
    assert report["max_rel_diff_grid_batch_8_vs_1"] < 1e-5 and out.exists()


def test_paired_from_runs_matches_a_hand_t_interval(tmp_path):
    """Pairs by seed; leader minus each arm with Student's t (t_0.975,2 = 4.302653); arms whose
    seeds trained different dense models are refused."""
    import pandas as pd

    rows = [("a", 0, 99.0, 98.0), ("a", 1, 98.0, 97.0), ("a", 2, 97.0, 96.0),
            ("b", 0, 98.0, 98.0), ("b", 1, 97.5, 97.0), ("b", 2, 95.0, 96.0)]
    runs = pd.DataFrame(rows, columns=["method", "seed", "top1", "dense_top1"])
    runs["target"], runs["run_dir"] = 95.0, [f"r{i}" for i in range(len(runs))]
    path = tmp_path / "runs.csv"
    runs.to_csv(path, index=False)
    out = tmp_path / "paired.md"
    script("paired_from_runs").main([str(path), "--out", str(out)])
    d = [1.0, 0.5, 2.0]  # a - b per seed
    mean, sd = sum(d) / 3, (sum((x - 7 / 6) ** 2 for x in d) / 2) ** 0.5
    half = 4.302653 * sd / 3 ** 0.5
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| b |"))
    assert f"+{mean:.2f} [{mean - half:+.2f}, {mean + half:+.2f}] | 3 | tied" in row
    runs.loc[3, "dense_top1"] = 90.0  # seed 0's b run on another dense model
    runs.to_csv(path, index=False)
    with pytest.raises(SystemExit, match="different dense models"):
        script("paired_from_runs").main([str(path)])


@pytest.mark.parametrize("overrides", [
    ["model.config.num_hidden_layers=1", "model.config.hidden_size=32",
     "model.config.intermediate_size=64", "dataset.tokenizer=byte", "dataset.vocab_size=257",
     "dataset.seq_len=32", "dataset.calib_size=4", "dataset.calib_len=32",
     "dataset.eval_tokens=1024", "recipe.dense_steps=2", "recipe.batch_size=4"],
    ["experiment=quickstart", "dataset=synthetic", "dataset.image_size=16",
     "dataset.train_size=64", "dataset.test_size=32", "dataset.calib_size=8",
     "recipe.dense_steps=2", "recipe.batch_size=16"],
], ids=["lm", "quickstart"])
def test_bench_estimators_toy(tmp_path, monkeypatch, overrides):
    """Every row starts from the exact reference, also where the model's config defaults to
    another estimator (the LM's local one): the first row is the exact curves, the rest count
    fewer FLOPs than it."""
    monkeypatch.setenv("RDPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench.txt"
    bench = script("bench_estimators")
    monkeypatch.setattr(bench, "ESTIMATORS", {k: bench.ESTIMATORS[k] for k in (
        "exact", "exact, 1/2 tokens", "exact, 3 points", "local, 2 anchors")})
    bench.main([*overrides, "rd.grid_points=5", "--threads", "1", "--out", str(out)])
    rows = {ln[:44].strip(): ln[44:].split() for ln in out.read_text().splitlines()
            if not ln.startswith("#") and not ln.startswith("estimator")}
    assert list(rows) == ["exact", "exact, 1/2 tokens", "exact, 3 points", "local, 2 anchors"]
    assert rows["exact"][1] == "1.0" and rows["exact"][-2:] == ["0.000", "0.000"]
    assert all(float(r[1]) > 1.0 for k, r in rows.items() if k != "exact")
