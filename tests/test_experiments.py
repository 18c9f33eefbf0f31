"""Every experiment config runs end to end, shrunk to a handful of steps on synthetic data, and
every sweep it declares composes: no config rots."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from rdprune.run.spec import profiles, targets
from rdprune.run.pipeline import run, setup

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


#: a language model's experiment, shrunk: the offline corpus, bytes, a 2-block LLaMA, no hub
LM_SHRINK = ["device=cpu", "threads=1", "dataset.corpus=stdlib", "dataset.calib_corpus=null",
             "dataset.tokenizer=byte", "dataset.vocab_size=257", "dataset.seq_len=32",
             "dataset.calib_size=4", "dataset.calib_len=32", "dataset.eval_tokens=1024",
             "dataset.eval_batch_size=8", "model.name=null", "model.weights=null",
             "+model.config={model_type: llama, hidden_size: 32, intermediate_size: 64, "
             "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4}",
             "recipe.dense_steps=2", "recipe.batch_size=4", "rd.grid_points=3", "rd.batch_size=4"]


def shrink(cfg) -> list[str]:
    """Overrides that make ``cfg`` a few seconds of CPU work on synthetic data (a language
    model: on a little text)."""
    if cfg.dataset.name == "text":
        return [o.replace("+model.config", "model.config") if "config" in cfg.model else o
                for o in LM_SHRINK] + (["device=cpu"] if cfg.device != "cpu" else [])
    size = {"lenet5": 28, "vgg16": 32, "vgg16_bn": 32}.get(cfg.model_name, 16)
    out = [
        "device=cpu", "threads=1", "dataset=synthetic", f"dataset.image_size={size}",
        "dataset.train_size=64", "dataset.test_size=32", "dataset.calib_size=8",
        "recipe.dense_steps=2", "recipe.batch_size=16",
    ]
    if cfg.recipe.finetune_steps > 0:
        out.append("recipe.finetune_steps=2")
    if cfg.model.get("weights"):
        out.append("model.weights=null")  # no download here: train the 2 dense steps
    if cfg.model_name == "vgg16_bn":
        # same factory and recipe; a 138M-weight VGG only makes the smoke test slow on a CPU
        out.append("model.name=resnet18")
    if cfg.schedule.name == "iterative":
        out.append("recipe.rounds=2")
    if profiles(cfg):
        out.append("rd.grid_points=3")
    if cfg.finetune.name == "admm":
        out += ["finetune.admm.iters=1", "finetune.admm.steps_per_iter=2"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_shrunk(tmp_path, name):
    cfg = compose_config([f"experiment={name}"], tmp_path)
    assert cfg.name == name
    metrics = run(compose_config([f"experiment={name}", *shrink(cfg)], tmp_path))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["experiment"] == name and saved["model"] == cfg.model_name
    # the rounds are the schedule's exactly, and each reaches its target (never under budget;
    # the shape-based baselines round each layer on its own: one weight per layer)
    shrunk = compose_config([f"experiment={name}", *shrink(cfg)], tmp_path)
    assert [r["target_sparsity"] for r in metrics["rounds"]] == targets(shrunk)
    slack = metrics["num_layers"] / metrics["num_weights"]
    for r in metrics["rounds"]:
        assert r["achieved_sparsity"] >= r["target_sparsity"] - slack
    assert 0.0 <= metrics["top1"] <= 100.0


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_declared_sweeps_set_up(name, tmp_path):
    """Each value of each swept key makes a job that passes every up-front check (config,
    data, model, method, recipes): a sweep never fails on a config detail after hours of work."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    params = OmegaConf.to_container(params) if params is not None else {}
    for key, values in params.items():
        for value in str(values).split(","):
            chosen = [f"experiment={name}", f"{key}={value}"]
            job = compose_config([*chosen, *shrink(compose_config(chosen, tmp_path))], tmp_path)
            OmegaConf.to_container(job, resolve=True)  # every interpolation resolves
            run = setup(job)
            arrived = OmegaConf.select(run.cfg, key)
            if isinstance(arrived, DictConfig):  # a group: the option's config, named by it
                arrived = arrived.name
            assert str(arrived) == value, (key, value, arrived)


def test_the_sharding_example_of_the_docs_launches_one_job_per_shard():
    """docs/slurm.md's job-array command on top of its experiment's own sweep: 4 jobs, all
    profiling shards (the experiment's 5 methods x 3 seeds pinned by the command)."""
    import re
    import shlex

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    text = (CONF.parent / "docs" / "slurm.md").read_text()
    command = re.search(r"python run\.py -m launcher=slurm ([^#`]*?rd\.shards[^#]*?)# one array",
                        text, re.S)
    args = [a for a in shlex.split(command.group(1).replace("\\\n", " "))
            if "=" in a and not a.startswith(("hydra.", "launcher"))]
    experiment = next(a.split("=")[1] for a in args if a.startswith("experiment="))
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    sweep = [f"{k}={v}" for k, v in params.items()] + [a for a in args if not
                                                       a.startswith("experiment=")]
    jobs = [j for b in BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(sweep), None) for j in b]
    assert len(jobs) == 4 and all("method=ours" in j for j in jobs)


@pytest.mark.parametrize("name", ["lm_text_oneshot", "lm_estimators", "digits_estimators"])
def test_an_experiment_pinned_to_exact_curves_inherits_no_estimator_modifier(tmp_path, name):
    """The language models' default estimator (local, 3 anchors, 1/8 of the tokens) must not
    leak into an experiment that pins the exact curves: rd.points / tokens / precision left over
    from the model config would make 'exact' measure 3 points on 1/8 of the tokens (it did:
    lm_text_oneshot's committed 54.862 became 54.49)."""
    cfg = compose_config([f"experiment={name}"], tmp_path)
    assert cfg.rd.estimator == "exact"
    assert (cfg.rd.points, cfg.rd.tokens, cfg.rd.precision) == (None, None, None)
