"""The report on a fixture of fake run directories with known numbers: exact table contents."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rdprune.report import build as report

LAYERS = [("conv1", "Conv2d", (16, 3, 3, 3)), ("layer1.conv", "Conv2d", (16, 16, 3, 3)),
          ("layer2.conv", "Conv2d", (32, 16, 3, 3)), ("fc", "Linear", (10, 32))]
SIZES = [int(np.prod(s)) for _, _, s in LAYERS]  # 432, 2304, 4608, 320
#: kept weights per layer by method (digits, 90%): ours keeps conv1 half, lamp a quarter
KEPT = {"ours": [216, 230, 230, 160], "lamp": [108, 230, 322, 80],
        "global_magnitude": [432, 230, 230, 80]}


def _record(model, dataset, method, schedule, sparsity, seed, experiment="sweep", **extra):
    """What :func:`rdprune.run.spec.record` writes for a run (run.json, metrics.json)."""
    rd = {"calibration": "data", "grid_points": 101, "reduction": "worst", "batch_size": 256,
          "tol": 1e-3, "calib_seed": 0}
    rec = {"model": model, "dataset": dataset, "method": method,
           "options": rd if method.startswith("ours") else {}, "criterion": "magnitude",
           "schedule": schedule, "finetune": "adamw", "experiment": experiment, "seed": seed,
           "target_sparsity": sparsity, "target_flops_kept": None, "precision": "32",
           "config_id": f"{model}-{method}"}
    rec.update(extra)
    return rec


def _job_dir(path, record, failed: str | None = None):
    """A job that did not finish: run.json, and FAILED with ``failed`` as its message."""
    (path / ".hydra").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(record))
    if failed is not None:
        (path / "FAILED").write_text(failed + "\n")


def make_run(path, *, method, sparsity, seed, top1, dense, model="resnet32", dataset="digits",
             schedule="oneshot", distortion=0.1, achieved=None, flops=0.1, curves=False,
             experiment="sweep", rounds=None, dense_key=None):
    """A complete fake run: .hydra/, metrics.json, layers.csv (and rd_curves.npz, rounds.csv)."""
    (path / ".hydra").mkdir(parents=True)
    kept = KEPT.get(method, [max(1, round(n * (1 - sparsity))) for n in SIZES])
    rows = ["name,type,shape,weights,kept,sparsity,dense_macs"]
    for (name, kind, shape), n, k in zip(LAYERS, SIZES, kept):
        rows.append(f"{name},{kind},{'x'.join(map(str, shape))},{n},{k},{1 - k / n},{n * 64}")
    (path / "layers.csv").write_text("\n".join(rows) + "\n")
    metrics = {
        **_record(model, dataset, method, schedule, sparsity, seed, experiment),
        "achieved_sparsity": sparsity if achieved is None else achieved, "flops_kept": flops,
        "dense_top1": dense, "pruned_top1": top1 - 20, "top1": top1,
        "joint_distortion_mean": distortion / 10, "joint_distortion_worst": distortion,
        "num_layers": 4, "num_weights": sum(SIZES), "kept_weights": sum(kept),
        "dense_key": dense_key or f"dense-{seed}", "protocol": {"protocol": "none", "differences": []},
        "rounds": rounds or [{"round": 1}], "seconds": {"dense": 1.0, "allocate": 0.5},
        "wall_seconds": 3.0, "some_future_key": "ignored gracefully", "nested_future": {"a": 1},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    if rounds:
        cols = list(rounds[0])
        (path / "rounds.csv").write_text("\n".join(
            [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rounds]) + "\n")
    if curves:
        grid = np.linspace(0, 1, 11)
        curve = np.array([grid ** 2 * (i + 1) for i in range(4)])
        np.savez(path / "rd_curves.npz", curves=curve, grid=grid,
                 layers=np.array([n for n, _, _ in LAYERS]), chosen=np.array(kept) / SIZES)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Fake logs: a digits sweep (3 methods x 2 sparsities x seeds, one failed, one incomplete,
    one method missing 90%, an older duplicate) and two CIFAR-10 iterative runs."""
    root = tmp_path_factory.mktemp("logs")
    sweep = root / "sweep" / "multiruns" / "2024-01-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    top1 = {("ours", 0.5): [95.0, 96.0], ("ours", 0.9): [90.0, 91.0, 92.0],
            ("lamp", 0.5): [96.0, 97.0, 98.0], ("lamp", 0.9): [88.0, 89.0],
            ("global_magnitude", 0.5): [94.25]}
    worst = {("ours", 0.9): [0.1, 0.2, 0.3], ("lamp", 0.9): [0.5, 0.7]}
    job = 0
    for (method, s), values in top1.items():
        for seed, v in enumerate(values):
            d = worst.get((method, s), [1.0] * 3)[seed]
            make_run(sweep / f"{job}_method={method},seed={seed},sparsity={s}", method=method,
                     sparsity=s, seed=seed, top1=v, dense=97.5, distortion=d)
            job += 1
    _job_dir(sweep / f"{job}_method=lamp,seed=2,sparsity=0.9",
             _record("resnet32", "digits", "lamp", "oneshot", 0.9, 2),
             failed="RuntimeError: out of memory while profiling")
    _job_dir(sweep / f"{job + 1}_method=ours,seed=2,sparsity=0.5",
             _record("resnet32", "digits", "ours", "oneshot", 0.5, 2))
    # a job that failed before its record: no cell, but listed with its message
    early = sweep / f"{job + 2}_method=ours,seed=3,sparsity=0.5"
    (early / ".hydra").mkdir(parents=True)
    (early / "FAILED").write_text("UserError: seed must be an integer, got 'x'\n")
    # an older re-run of ours@90% seed 0 with a different result: superseded by the sweep's
    old = root / "sweep" / "runs" / "old"
    make_run(old, method="ours", sparsity=0.9, seed=0, top1=10.0, dense=97.5)
    os.utime(old / "metrics.json", (1e9, 1e9))
    for seed, v in enumerate([90.5, 91.1]):
        make_run(root / "cifar" / "runs" / f"seed{seed}", method="ours", sparsity=0.95602,
                 seed=seed, top1=v, dense=94.0, model="resnet32", dataset="cifar10",
                 schedule="iterative", achieved=0.956, flops=0.035, curves=True,
                 experiment="cifar", rounds=[
                     dict(round=1, target_sparsity=0.5, achieved_sparsity=0.5,
                          pruned_top1=80.0 + seed, top1=92.0 + seed),
                     dict(round=2, target_sparsity=0.95602, achieved_sparsity=0.956,
                          pruned_top1=50.0, top1=v)])
    add = root / "additivity" / "2024-01-02"
    (add / ".hydra").mkdir(parents=True)
    (add / "additivity.csv").write_text(
        "kind,layers,sparsity,sum_single,joint\n"
        "consecutive,conv1+layer1.conv,0.1,0.001,0.0011\n"
        "consecutive,conv1+layer1.conv,0.5,0.02,0.019\n"
        "consecutive,layer1.conv+layer2.conv,0.8,0.5,0.55\n")
    return root


def lines_of(markdown: str, title: str) -> list[str]:
    """The table lines of the Markdown section ``title``."""
    section = markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("|")]


def test_runs_of_several_dense_models_are_replicates_not_reruns(tmp_path):
    """One config and seed on two dense models (an experiment's ``replicate``): both count; a
    later run on one of them supersedes only that one's older run."""
    for i, (dense, top1) in enumerate([("d0", 50.0), ("d1", 60.0), ("d0", 55.0)]):
        make_run(tmp_path / "runs" / f"r{i}", method="ours", sparsity=0.5, seed=0, top1=top1,
                 dense=97.0, dense_key=dense)
        os.utime(tmp_path / "runs" / f"r{i}" / "metrics.json", (1e9 + i, 1e9 + i))
    runs, _ = report.collect([tmp_path])
    kept = runs[~runs.superseded]
    assert sorted(zip(kept.dense_key, kept.top1)) == [("d0", 55.0), ("d1", 60.0)]
    assert runs.loc[runs.superseded, "top1"].tolist() == [50.0]


def test_collect_counts_runs_failed_incomplete_and_duplicates(logs):
    runs, failed = report.collect([logs])
    assert len(runs) == 14 and runs["superseded"].sum() == 1
    assert runs.loc[runs.superseded, "top1"].tolist() == [10.0]
    assert {"some_future_key", "seconds_dense", "num_rounds"} <= set(runs.columns)
    placed = [f for f in failed if "method" in f]
    assert sorted((f["status"], f["method"], f["target"], f["seed"]) for f in placed) == [
        ("failed", "lamp", 90.0, 2), ("incomplete", "ours", 50.0, 2)]
    msg = next(f for f in placed if f["status"] == "failed")
    assert msg["message"] == "RuntimeError: out of memory while profiling"
    (early,) = [f for f in failed if "method" not in f]
    assert early["message"] == ("UserError: seed must be an integer, got 'x' (before the run's "
                                "record was written)")


def test_baseline_table_exact(logs):
    runs, failed = report.collect([logs])
    tables = report.baseline_table(runs, "top1", failed)
    assert set(tables) == {"resnet32_digits_oneshot_adamw", "resnet32_cifar10_iterative_adamw"}
    md = report.to_markdown(tables["resnet32_digits_oneshot_adamw"])
    # bold and ≈ follow the tie rule over runs sharing seed and dense model (dense-<seed>):
    # 90%: ours - lamp = 2, 2 (seeds 0, 1): interval [2, 2] excludes 0, ours best (bold);
    # 50%: lamp - ours = 1, 1 excludes 0, but lamp - global_magnitude is one pair without
    # per-sample data (no interval): lamp, the leader, and global_magnitude are tied
    assert lines_of(md, "resnet32 / digits / oneshot / adamw") == [
        "| Method | 50% | 90% |",
        "|---|---:|---:|",
        "| ours | 95.50 ± 0.71 | **91.00 ± 1.00** |",
        "| lamp | ≈ 97.00 ± 1.00 | 88.50 ± 0.71 |",
        "| global_magnitude | ≈ 94.25 | missing |",
    ]
    assert "Student t over n=2 paired seeds" in md and "in bold only when the 95% interval" in md
    assert "missing: no completed run for global_magnitude @ 90%." in md
    assert "ours @ 50% (1), lamp @ 90% (1)" in md
    data = tables["resnet32_digits_oneshot_adamw"].data
    gap = data[(data.method == "global_magnitude") & (data.target_sparsity == 90)]
    assert gap.seeds.tolist() == [0] and gap["mean"].isna().all()  # missing, not 0

    dist = report.baseline_table(runs, "joint_distortion_worst", failed)
    md = report.to_markdown(dist["resnet32_digits_oneshot_adamw"])
    rows = lines_of(md, "resnet32 / digits / oneshot / adamw")
    # 90%: ours - lamp = -0.4, -0.5: mean -0.45, sd 0.0707, t(0.975, 1) = 12.706 -> half 0.635,
    # [-1.085, 0.185] includes 0: tied; 50%: every distortion is 1, differences 0: all tied
    assert rows[2] == "| ours | ≈ 1 | ≈ 0.2 |"  # lower is better, no evidence either way
    assert rows[3] == "| lamp | ≈ 1 | ≈ 0.6 |"
    assert rows[4] == "| global_magnitude | ≈ 1 | missing |"
    assert "lower is better" in md


def test_paper_table_matches_published(logs):
    runs, failed = report.collect([logs])
    table = report.paper_table(runs, failed)
    md = report.to_markdown(table)
    assert ("| ResNet-32 | CIFAR-10 | ours | iterative | adamw | 95.60 | 3.50 | 90.80 ± 0.42 | "
            "94.00 | -3.20 | 2 | 95.5 | 3.59 | 90.83 ± 0.24 | 93.99 | -3.16 |") in md
    assert ("| Digits | ours | oneshot | adamw | 90.00 | 10.00 | 91.00 ± 1.00 | 97.50 | -6.50 | "
            "3 | – | – | – | – | – |") in md
    assert "| 88.50 ± 0.71 | 97.50 | -9.00 | 2 (1 failed) |" in md
    assert "| 94.25 | 97.50 | -3.25 | 1 |" in md  # a single seed: no ±
    row = table.data[table.data.dataset == "cifar10"].iloc[0]
    assert row["diff"] == pytest.approx(90.8 - 94.0) and row["paper_top1"] == 90.83


def test_layer_table_and_latex_escaping(logs):
    runs, _ = report.collect([logs])
    tables = report.layer_table(runs)
    t = tables["resnet32_digits_oneshot_adamw_s90"]
    assert list(t.cells.columns) == ["Layer", "Type", "Shape", "Weights", "ours", "lamp"]
    assert t.cells.iloc[0].tolist() == ["conv1", "Conv2d", "16x3x3x3", "432", "50.00", "75.00"]
    assert t.cells.iloc[-1].tolist()[:4] == ["all layers", "", "", "7664"]
    assert t.cells.iloc[-1, 4] == f"{100 * (1 - 836 / 7664):.2f}"
    tex = report.to_latex(report.baseline_table(runs)["resnet32_digits_oneshot_adamw"])
    assert r"global\_magnitude & $\approx$ 94.25 & missing \\" in tex
    assert r"\textbf{91.00 $\pm$ 1.00}" in tex and r"50\% & 90\%" in tex
    body = [ln for ln in tex.splitlines() if not ln.startswith(r"\label")]  # labels may hold _
    assert r"\toprule" in body and r"\bottomrule" in body
    assert not any("_" in ln.replace(r"\_", "") for ln in body)
    assert report.tex_escape("a_b & 5% #1 {x} ~^\\") == (
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}")


def test_rounds_table_exact(logs):
    runs, _ = report.collect([logs])
    rounds = report.load_rounds(runs)
    assert sorted(set(rounds["run_dir"])) == sorted(  # one-round runs have no round table
        runs.loc[runs.schedule == "iterative", "run_dir"])
    tables = report.rounds_table(rounds)
    assert list(tables) == ["resnet32_cifar10_iterative_adamw_s95.602"]
    lines = lines_of(report.to_markdown(tables["resnet32_cifar10_iterative_adamw_s95.602"]),
                     "resnet32 / cifar10 / iterative / adamw to 95.6%")
    assert lines[0] == "| Method | r1 (50%) | r2 (95.6%) |"
    # seeds 0, 1: after prune 80, 81 -> mean 80.5; after fine-tune 92, 93 -> 92.50 ± 0.71
    assert lines[2] == "| ours | 80.50 → 92.50 ± 0.71 | 50.00 → 90.80 ± 0.42 |"
    tex = report.to_latex(tables["resnet32_cifar10_iterative_adamw_s95.602"])
    assert r"80.50 $\rightarrow$ 92.50 $\pm$ 0.71" in tex and "→" not in tex


def test_cli_writes_every_file(logs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main([str(logs), "--out", "results/fixture"]) == 0
    out = tmp_path / "results" / "fixture"
    assert "13 runs, 3 failed (1 of them incomplete), 1 superseded" in capsys.readouterr().out
    for name in ("paper_table", "baselines", "baselines_distortion", "paired", "layer_sparsity",
                 "additivity", "rounds"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    pngs = ["top1_vs_sparsity_resnet32_cifar10.png", "top1_vs_sparsity_resnet32_digits.png",
            "layer_sparsity_resnet32_digits_oneshot_adamw.png", "rd_curves.png", "additivity.png",
            "rounds.png"]
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    readme = (out / "README.md").read_text()
    assert f"python -m rdprune.report {logs} --out results/fixture" in readme
    assert all(f"`{f}`" in readme for f in pngs + ["baselines.md", "failed.md"])
    failed = (out / "failed.md").read_text()
    assert "run: resnet32 / digits / oneshot / adamw / lamp @ 90%, seed 2" in failed
    assert "run: unknown" in failed
    assert "RuntimeError: out of memory while profiling" in failed
    assert "**incomplete**" in failed and "additivity" not in failed
    md = (out / "baselines.md").read_text()
    assert "## resnet32 / digits / oneshot / adamw" in md and "## resnet32 / cifar10" in md


def test_cells_mixing_configs_are_flagged(tmp_path):
    for seed, config_id in enumerate(["a", "b"]):
        make_run(tmp_path / "logs" / f"r{seed}", method="lamp", sparsity=0.5, seed=seed,
                 top1=90.0, dense=95.0)
        _rewrite(tmp_path / "logs" / f"r{seed}", config_id=config_id)
    result = report.write_report([tmp_path / "logs"], tmp_path / "out")
    assert result["runs"]["config_id"].nunique() == 2
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "configs differ beyond the seed" in readme and "lamp / 50.0" in readme


def test_cli_errors(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no run directories" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_path(logs, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "w"
    assert report.main([str(logs / "sweep"), "--out", str(out), "--wandb", "--group", "g"]) == 0
    if mode == "offline":  # the report run holds the tables, written locally for `wandb sync`
        tables = {p.name.split("_")[0] for p in out.glob("wandb/offline-run-*/files/media/table/*")}
        assert {"runs", "paper", "baselines", "paired", "layer", "failed"} <= tables


def test_published_match_tolerance_and_method():
    from rdprune.report.published import match

    assert match("resnet32", "cifar10", "iterative", 95.9).top1 == 90.83
    assert match("resnet32", "cifar10", "iterative", 96.1) is None  # > 0.5 pp away
    assert match("resnet32", "cifar10", "iterative", 95.5, method="lamp") is None
    assert match("resnet50", "imagenet", "oneshot", 50.0) is None  # only the zero-data row
    assert match("resnet50", "imagenet", "oneshot", 50.0, method="ours_zerodata").top1 == 75.13


def test_paper_table_dense_against_published_and_protocol(logs):
    runs, failed = report.collect([logs])
    md = report.to_markdown(report.paper_table(runs, failed))
    header = next(ln for ln in md.splitlines() if ln.startswith("| Model"))
    assert header.endswith("| Paper dense | Paper diff | Dense: measured / paper | Protocol |")
    assert "| FLOPs remaining (%) |" in header
    # measured 94.00 against the published ResNet-32 / CIFAR-10 dense 93.99; digits has no
    # published dense model
    assert "| 93.99 | -3.16 | 94.00 / 93.99 (+0.01) | none |" in md
    assert "| 97.50 | -6.50 | 3 | – | – | – | – | – | – | none |" in md


def _rewrite(path, **fields):
    """Update a fake run's metrics.json (None values: key removed)."""
    m = json.loads((path / "metrics.json").read_text())
    m.update(fields)
    (path / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))


def _options(**rd):
    return {"calibration": "data", "grid_points": 101, "reduction": "worst", "batch_size": 256,
            "tol": 1e-3, "calib_seed": 0, **rd}


@pytest.fixture
def new_keys(tmp_path):
    """Runs with a FLOPs target (flops_kept), the mean-distortion option, recorded protocols."""
    root = tmp_path / "logs"
    protocol = {"protocol": "official", "recipe": "resnet32/cifar10", "differences": [],
                "fixes": ["bug 3: content-hashed caches"]}
    for seed, (top1, kept) in enumerate([(80.0, 0.295), (82.0, 0.305)]):
        path = root / f"flops{seed}"
        make_run(path, method="ours", sparsity=0.9, seed=seed, top1=top1, dense=93.0,
                 dataset="cifar10")
        _rewrite(path, target_sparsity=None, target_flops_kept=0.3, flops_kept=kept,
                 budget_type="flops", protocol=protocol)
    path = root / "mean"
    make_run(path, method="ours", sparsity=0.9, seed=0, top1=85.0, dense=93.0, dataset="cifar10")
    _rewrite(path, options=_options(reduction="mean"), config_id="mean", flops_kept=0.1,
             protocol={**protocol, "protocol": "custom",
                       "differences": ["rd.reduction: mean (official: worst)"]})
    path = root / "lamp"  # a baseline records no RD options: never a variant of lamp
    make_run(path, method="lamp", sparsity=0.9, seed=0, top1=84.0, dense=93.0, dataset="cifar10")
    _rewrite(path, protocol={"protocol": "official", "differences": []})
    path = root / "wanda"  # another criterion is a variant
    make_run(path, method="lamp", sparsity=0.7, seed=0, top1=70.0, dense=93.0, dataset="cifar10")
    _rewrite(path, criterion="wanda", config_id="wanda")
    return root


def test_new_config_keys_flops_targets_and_protocols(new_keys):
    runs, _ = report.collect([new_keys])
    by_dir = {r.run_dir.rsplit("/", 1)[1]: r for r in runs.itertuples()}
    assert by_dir["flops0"].label == "ours (FLOPs target)"
    assert (by_dir["flops0"].target_kind, by_dir["flops0"].target) == ("flops", 30.0)
    assert by_dir["flops0"].flops_kept == pytest.approx(0.295)
    assert by_dir["mean"].label == "ours (mean distortion)" and by_dir["mean"].target == 90.0
    assert by_dir["lamp"].label == "lamp" and by_dir["lamp"].flops_kept == 0.1
    assert by_dir["wanda"].label == "lamp (wanda)"
    assert by_dir["lamp"].protocol == "official" and by_dir["mean"].protocol == "custom"

    table = report.baseline_table(runs)["resnet32_cifar10_oneshot_adamw"]
    assert list(table.cells.columns) == ["Method", "70%", "90%", "FLOPs kept 30%"]
    cells = table.cells.set_index("Method")
    assert cells.loc["ours (FLOPs target)", "FLOPs kept 30%"] == "81.00 ± 1.41"
    assert cells.loc["ours (FLOPs target)", "90%"] == "missing"
    # lamp against ours (mean distortion), 85.00: one pair without per-sample data, tied
    assert cells.loc["lamp", "90%"] == "≈ 84.00"
    assert cells.loc["lamp", "FLOPs kept 30%"] == "missing"
    flops = table.data[table.data.column == "FLOPs kept 30%"]
    assert flops["target_sparsity"].isna().all() and (flops["target_flops_kept"] == 30).all()

    paper = report.paper_table(runs)
    row = paper.data.set_index(["label", "target"]).loc[("ours (FLOPs target)", 30.0)]
    assert row["flops_kept"] == pytest.approx(30.0) and row["protocol"] == "official"
    assert row["published_dense"] == 93.99 and row["dense_gap"] == pytest.approx(-0.99)
    md = report.to_markdown(paper)
    assert "| 30.00 | 81.00 ± 1.41 | 93.00 | -12.00 | 2 |" in md
    assert "| 93.00 / 93.99 (-0.99) | official |" in md
    assert ("Custom protocol, ResNet-32 / CIFAR-10 / ours (mean distortion) @ 90%: "
            "rd.reduction: mean (official: worst).") in md
    assert set(report.layer_table(runs)) == {"resnet32_cifar10_oneshot_adamw_s70",
                                             "resnet32_cifar10_oneshot_adamw_s90",
                                             "resnet32_cifar10_oneshot_adamw_f30"}


def test_mixed_protocols_in_one_cell_are_named(new_keys):
    _rewrite(new_keys / "flops1", protocol={"protocol": "custom", "differences": ["x: 1"]})
    runs, _ = report.collect([new_keys])
    row = report.paper_table(runs).data.set_index(["label", "target"]).loc[
        ("ours (FLOPs target)", 30.0)]
    assert row["protocol"] == "mixed: custom, official"
    assert row["protocol_differences"] == "x: 1"


def test_rounds_of_a_flops_target(tmp_path):
    path = tmp_path / "logs" / "run"
    make_run(path, method="ours", sparsity=0.9, seed=0, top1=80.0, dense=93.0, dataset="cifar10",
             schedule="iterative", rounds=[  # the pipeline's CSV leaves a null sparsity empty
                 dict(round=1, target_sparsity="", target_flops_kept=0.6, achieved_sparsity=0.3,
                      pruned_top1=70.0, top1=85.0),
                 dict(round=2, target_sparsity="", target_flops_kept=0.3, achieved_sparsity=0.6,
                      pruned_top1=60.0, top1=80.0)])
    _rewrite(path, target_sparsity=None, target_flops_kept=0.3, flops_kept=0.3)
    runs, _ = report.collect([tmp_path / "logs"])
    tables = report.rounds_table(report.load_rounds(runs))
    assert list(tables) == ["resnet32_cifar10_iterative_adamw_f30"]
    lines = lines_of(report.to_markdown(tables["resnet32_cifar10_iterative_adamw_f30"]),
                     "resnet32 / cifar10 / iterative / adamw to FLOPs kept 30%")
    assert lines[0] == "| Method | r1 (FLOPs kept 60%) | r2 (FLOPs kept 30%) |"
    assert lines[2] == "| ours (FLOPs target) | 70.00 → 85.00 | 60.00 → 80.00 |"


@pytest.fixture
def paired_logs(tmp_path):
    """Four seeds of ours and lamp at 50% and 90% (dense-<seed>); global_magnitude at 50% with
    one seed; seed 0's runs at 50% save per-sample correctness (1,000 test samples)."""
    root = tmp_path / "logs"
    top1 = {("ours", 0.5): [91.0, 92.0, 93.0, 94.0], ("lamp", 0.5): [90.0, 90.0, 90.0, 91.0],
            ("global_magnitude", 0.5): [89.0],
            ("ours", 0.9): [80.0, 83.0, 81.0, 79.0], ("lamp", 0.9): [81.0, 80.0, 80.0, 81.0]}
    for (method, s), values in top1.items():
        for seed, v in enumerate(values):
            path = root / f"{method}_{s}_{seed}"
            make_run(path, method=method, sparsity=s, seed=seed, top1=v, dense=97.5)
            if s == 0.5 and seed == 0:  # correct on the first 10 * top1 of 1,000 samples
                np.save(path / "test_correct.npy", np.arange(1000) < round(10 * v))
    return root


def test_paired_table_exact(paired_logs):
    runs, _ = report.collect([paired_logs])
    table = report.paired_table(runs)["resnet32_digits_oneshot_adamw"]
    md = report.to_markdown(table)
    # reference: the best baseline per column, lamp (50%: 90.25 > 89; 90%: the only one).
    # 50%: ours - lamp = 1, 2, 3, 3: mean 2.25, sd sqrt(2.75 / 3) = 0.9574, se 0.4787,
    #   t(0.975, 3) = 3.1824 -> half 1.5235: [0.73, 3.77]; global_magnitude - lamp: one pair
    #   with per-sample data: 10 samples only lamp gets right -> -1.00, bootstrap
    # 90%: ours - lamp = -1, 3, 1, -2: mean 0.25, sd sqrt(14.75 / 3) = 2.2174, se 1.1087,
    #   half 3.5283: [-3.28, 3.78], includes 0: ours (leader) and lamp tied
    # tie rule at 50%: ours - lamp excludes 0; ours - global_magnitude (seed 0): 20 samples
    #   only ours gets right, bootstrap about [1.2, 2.9], excludes 0: ours best (bold)
    rows = lines_of(md, "resnet32 / digits / oneshot / adamw")
    assert rows[0] == "| Method | 50% | 90% |"
    assert rows[2] == ("| ours | **Δ +2.25 [+0.73, +3.77] (n=4)** | "
                       "≈ Δ +0.25 [−3.28, +3.78] (n=4) |")
    assert rows[3] == "| lamp | reference: 90.25 | ≈ reference: 80.50 |"
    assert rows[4].startswith("| global_magnitude | Δ −1.00 [−")
    assert rows[4].endswith("] (n=1, bootstrap) | missing |")
    gm = table.data.set_index(["method", "column"]).loc[("global_magnitude", "50%")]
    # -0.1 x Binomial(1000, 0.01): mean -1.0, sd 0.31; 95% of it within about [-1.6, -0.4]
    assert (gm["interval"], gm["samples"], gm["pairs"]) == ("bootstrap", 1000, 1)
    assert -1.8 <= gm["low"] <= -1.5 and -0.6 <= gm["high"] <= -0.3
    assert "Reference: the best baseline of each column" in md and "50%: lamp; 90%: lamp" in md
    assert "Student t over n=4 paired seeds" in md
    assert "bootstrap over 1,000 test samples (one pair; 10,000 resamples" in md
    assert "Tie rule:" in md
    tex = report.to_latex(table)
    assert r"\textbf{$\Delta$ +2.25 [+0.73, +3.77] (n=4)}" in tex
    assert r"$\approx$ $\Delta$ +0.25 [$-$3.28, +3.78] (n=4)" in tex

    base = report.baseline_table(runs)["resnet32_digits_oneshot_adamw"]
    rows = lines_of(report.to_markdown(base), "resnet32 / digits / oneshot / adamw")
    assert rows[2] == "| ours | **92.50 ± 1.29** | ≈ 80.75 ± 1.71 |"
    assert rows[3] == "| lamp | 90.25 ± 0.50 | ≈ 80.50 ± 0.58 |"
    assert rows[4] == "| global_magnitude | 89.00 | missing |"


def test_paired_table_named_reference(paired_logs):
    runs, _ = report.collect([paired_logs])
    cells = report.paired_table(runs, reference="global_magnitude")[
        "resnet32_digits_oneshot_adamw"]
    md = report.to_markdown(cells)
    rows = lines_of(md, "resnet32 / digits / oneshot / adamw")
    # 90% has no global_magnitude run: that column says so (the tie rule still marks ties)
    assert rows[3].startswith("| lamp | Δ +1.00 [+") and rows[3].endswith("| ≈ no reference |")
    assert "No run of the reference global_magnitude at 90%." in md


def test_cli_reference(paired_logs, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(paired_logs), "--out", str(out), "--reference", "ours"]) == 0
    md = (out / "paired.md").read_text()
    rows = lines_of(md, "resnet32 / digits / oneshot / adamw")
    # lamp - ours = -(1, 2, 3, 3) at 50%: the mirror of ours - lamp
    assert rows[2] == "| ours | **reference: 92.50** | ≈ reference: 80.75 |"
    assert rows[3].startswith("| lamp | Δ −2.25 [−3.77, −0.73] (n=4) |")
    assert "Reference: ours in every column." in md
    data = __import__("pandas").read_csv(out / "paired.csv")
    assert set(data["reference"]) == {"ours"}
    assert "`paired.md`" in (out / "README.md").read_text()
    assert report.main([str(paired_logs), "--out", str(tmp_path / "o2"),
                        "--reference", "lmap"]) == 2
    assert "--reference 'lmap' is no method label" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()  # nothing written for a typo


def test_unpaired_runs_are_not_compared(paired_logs):
    path = paired_logs / "erk"  # another dense model: pairs with no run
    make_run(path, method="erk", sparsity=0.9, seed=0, top1=70.0, dense=97.5)
    _rewrite(path, dense_key="another dense model")
    runs, _ = report.collect([paired_logs])
    md = report.to_markdown(report.baseline_table(runs)["resnet32_digits_oneshot_adamw"])
    rows = lines_of(md, "resnet32 / digits / oneshot / adamw")
    assert rows[2:4] == ["| ours | **92.50 ± 1.29** | ≈ 80.75 ± 1.71 |",
                         "| lamp | 90.25 ± 0.50 | ≈ 80.50 ± 0.58 |"]  # erk changes no verdict
    assert rows[5] == "| erk | missing | 70.00 |"
    assert "Not compared with the column's leader (no run sharing its seed and dense model): " \
           "erk @ 90%." in md
    paired = report.to_markdown(report.paired_table(runs)["resnet32_digits_oneshot_adamw"])
    assert "| erk | missing | not paired |" in paired and "erk @ 90%." in paired
