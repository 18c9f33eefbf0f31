"""One GPU check, at most 8 minutes on one H200: profiling, training steps, quickstart, cost.

Usage:
    python experiments/gpu_check.py --device cuda           # the check -> results/gpu_check.md
    python experiments/gpu_check.py --device cpu --smoke    # < 1 minute, tiny sizes (tested)

Parts, each under its own time cap within ``--budget`` seconds (a step past its cap is stopped
and reported; a failing step is reported and the next one runs; the report is rewritten after
every step, so whatever was reached is kept):

1. RD profiling of ResNet-50 at 224x224 (54 layers x 101 points x 256 images) in float32 and
   bf16 with the bf16 curves' distance to float32 (target: <= 60 s, within 1%), and the naive
   scheme on a few layers for the ratio; through ``bench_profiling_resnet50.py``'s functions.
2. Training step time of every paper model at its recipe batch size (from the composed
   experiment configs) in float32 and bf16, random init, with the production data path:
   :func:`rdprune.training.train.fit` over in-memory splits (CIFAR models: generated CIFAR through
   :func:`rdprune.data.cifar_splits`, crop + flip + normalise; ImageNet models: synthetic
   224x224 tensors, as ImageNet itself is decoded from files, see ``bench_decode.py``). Data wait
   = time inside the batch iterator / wall time (target < 10%). For ResNet-32 bf16 also batches
   built on the device and a fixed device batch, to bound the whole data cost.
3. The quickstart end to end (``python run.py experiment=quickstart device=...``, temp dirs).
4. Cost to reproduce each paper experiment (``conf/experiment/*_cifar10_*``, ``*_imagenet_*``):
   optimizer steps per run and per sweep (always, from the configs), and GPU-hours from the
   measured step and profiling times.

The script is ~550 lines, one file on purpose: its parts share the caps, the measured figures
and the report, and the device machine runs it as one command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # model -> the paper experiment whose recipe it runs
    "resnet32": "resnet32_cifar10_iterative", "vgg16": "vgg16_cifar10_iterative",
    "densenet121": "densenet121_cifar10_iterative",
    "efficientnet_b0": "efficientnet_b0_cifar10_iterative",
    "resnet50": "resnet50_imagenet_oneshot", "vgg16_bn": "vgg16_bn_imagenet_iterative",
}
CAPS = {"profiling": 190.0, "training": 170.0, "quickstart": 80.0}  # seconds per part
STEP_CAPS = {"fp32": 80.0, "bf16": 70.0, "naive": 35.0}  # seconds per profiling step


def script(name: str):
    """A module of ``experiments/`` (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CapReached(BaseException):
    """A step ran past its cap (not an Exception: library code must not swallow it)."""


class Clock:
    """A deadline (of the run, or of a part within it); :meth:`cap` bounds one step by SIGALRM.

    ``save`` (inherited by a part's clock) writes the report; :func:`attempt` calls it after
    every step, so a check killed from outside still leaves what it measured.
    """

    def __init__(self, seconds: float, parent: Clock | None = None, save=None) -> None:
        self.deadline = time.monotonic() + seconds
        self.save = save or (parent.save if parent else lambda: None)
        if parent is not None:
            self.deadline = min(self.deadline, parent.deadline)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def cap(self, seconds: float):
        seconds = min(seconds, self.left())
        if seconds <= 0:
            raise CapReached

        def fire(signum, frame):
            raise CapReached

        previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def attempt(record: dict, key: str, clock: Clock, seconds: float, fn):
    """``fn()`` under a cap of ``seconds`` (within ``clock``); if it is stopped or fails, the
    reason goes to ``record[key]`` and the result is None."""
    start, cap = time.perf_counter(), max(0.0, min(seconds, clock.left()))
    try:
        with clock.cap(cap):
            return fn()
    except CapReached:
        record[key] = f"stopped at its {cap:.3g} s cap"
    except Exception as e:  # noqa: BLE001 - reported, and the check goes on
        traceback.print_exc()
        record[key] = f"failed after {time.perf_counter() - start:.0f} s: {type(e).__name__}: " \
                      f"{str(e).splitlines()[0] if str(e) else ''}"
    finally:
        clock.save()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# 1. profiling


def profiling(args, device: torch.device, clock: Clock, rec: dict) -> None:
    bench = script("bench_profiling_resnet50")
    from rdprune.pruning.layers import find_prunable
    from rdprune.methods.rd.profiling import gaussian_inputs

    n, size, points, naive_layers = (1, 32, 2, 1) if args.smoke else (256, 224, 101, 2)
    rec["setting"] = (f"{n} N(0, 1) images 3x{size}x{size}, grid linspace(0, 1, {points}), "
                      f"ResNet-50 {args.weights or 'random init, BN statistics warmed'}")
    with clock.cap(clock.left()):
        model = bench.build_model(args.weights, size, 0, device)
        x = gaussian_inputs(n, (3, size, size), 1, device=device)
        names = list(find_prunable(model, x[:1]))
        rec["layers"] = f"3 of {len(names)}" if args.smoke else str(len(names))
        names = names[:3] if args.smoke else names
        grid = np.linspace(0.0, 1.0, points)
        common = dict(reduction="worst", batch_size=n)
        bench.time_curves(copy.deepcopy(model), x, names[:1], grid[:3], **common)  # warm-up
    # a fresh copy per step: a step stopped mid-way cannot leave the next one a modified model
    fp32 = attempt(rec, "fp32", clock, STEP_CAPS["fp32"], lambda: bench.time_curves(
        copy.deepcopy(model), x, names, grid, **common))
    if fp32:
        rec["fp32"] = fp32[1]
    bf16 = attempt(rec, "bf16", clock, STEP_CAPS["bf16"], lambda: bench.time_curves(
        copy.deepcopy(model), x, names, grid, dtype=torch.bfloat16, **common))
    if bf16:
        rec["bf16"] = bf16[1]
        if fp32:
            rec["bf16_rel_diff"] = float(bench.relative_diff(bf16[0], fp32[0]).max())
    naive = attempt(rec, "naive", clock, STEP_CAPS["naive"], lambda: bench.time_naive(
        copy.deepcopy(model), x, names, naive_layers, grid, **common))
    if naive:
        rec["naive"] = naive[3]
        rec["naive_note"] = (f"{len(naive[0])} of them timed ({naive[2]:.1f} s), scaled to "
                             f"{len(names)}")


# --------------------------------------------------------------------------------------------
# 2. training


class TimedData:
    """Splits whose batch iterator records the time spent producing batches (the data wait)."""

    def __init__(self, data, device: torch.device | None = None) -> None:
        self.data, self.device, self.wait = data, device, 0.0

    def __getattr__(self, name):
        return getattr(self.data, name)

    def train_batches(self, *args, **kwargs):
        if self.device is not None:
            kwargs["device"] = self.device
        batches = self.data.train_batches(*args, **kwargs)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch


class FixedData(TimedData):
    """One batch, already on the device, every step: training without any data work."""

    def train_batches(self, batch_size, seed, start, stop, *rest, **kwargs):
        x, y = next(self.data.train_batches(batch_size, seed, 0, 1))
        x, y = x.to(self.device), y.to(self.device)
        for _ in range(start, stop):
            yield x, y


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def step_time(model, data, cfg, device, precision: str, batch: int, args) -> dict:
    """ms/step, images/s and data-wait share of ``fit`` on ``data`` (warm-up steps untimed)."""
    from hydra.utils import instantiate

    from rdprune.training.train import fit

    def run(steps: int) -> float:
        sync(device)
        start = time.perf_counter()
        fit(model, data, steps=steps, batch_size=batch, device=device, precision=precision,
            optimizer=instantiate(cfg.finetune.optimizer), progress=False, log_every=10**9)
        sync(device)
        return time.perf_counter() - start

    warm = 1 if args.smoke else 3
    estimate = run(warm) / warm
    steps = 2 if args.smoke else int(np.clip(args.step_seconds / estimate, 5, 100))
    data.wait = 0.0
    seconds = run(steps)
    return {"ms": 1000 * seconds / steps, "ips": steps * batch / seconds,
            "wait": data.wait / seconds, "steps": steps}


def training(args, device: torch.device, clock: Clock, rec: dict) -> None:
    from hydra.utils import instantiate

    from rdprune.data import synthetic
    from rdprune.pruning.layers import find_prunable

    cifar = script("bench_batches").generated_cifar
    for name in args.models:
        cfg = attempt(rec, name, clock, 30,
                      lambda name=name: compose([f"experiment={MODELS[name]}"]))
        if cfg is None:
            continue
        imagenet = cfg.dataset.name == "imagenet"
        batch = 2 if args.smoke else int(cfg.recipe.batch_size)
        size = 224 if imagenet and not args.smoke else 32
        row = rec.setdefault(name, {"batch": batch, "input": f"3x{size}x{size}"})

        def build(cfg=cfg, imagenet=imagenet, batch=batch, size=size, row=row):
            torch.manual_seed(0)
            model = instantiate(cfg.model, **({"weights": None} if imagenet else {})).to(device)
            row["layers"] = len(find_prunable(model, torch.zeros(1, 3, size, size, device=device)))
            data = (synthetic(name="synthetic", num_classes=10, channels=3, image_size=size,
                              train_size=max(4 * batch, 64), test_size=1, noise=1.0,
                              calib_size=1, data_seed=0, num_workers=0, eval_batch_size=256)
                    if imagenet
                    else cifar(max(20 * batch, 200)))
            return model, data

        built = attempt(row, "status", clock, 60, build)  # random init: no download needed
        if built is None:
            continue
        model, data = built
        variants = [("32", TimedData(data)), ("bf16", TimedData(data))]
        if name in ("resnet32", "resnet50"):  # the smallest and the largest batch of images
            variants += [("bf16 on device", TimedData(data, device)),
                         ("bf16 fixed batch", FixedData(data, device))]
        for label, timed in variants:
            precision = label.split()[0]
            result = attempt(row, label, clock, CAPS["training"] / 12, lambda: step_time(
                model, timed, cfg, device, precision, batch, args))
            if result:
                row[label] = result
        del built, model, data, variants, timed


# --------------------------------------------------------------------------------------------
# 3. quickstart


def quickstart(args, device: torch.device, clock: Clock, rec: dict) -> None:
    tiny = ["recipe.dense_steps=2", "recipe.finetune_steps=2", "rd.grid_points=3",
            "dataset.calib_size=16"] if args.smoke else []
    command = ["python", "run.py", "experiment=quickstart", f"device={device}", *tiny]
    rec["command"] = " ".join(command)
    with tempfile.TemporaryDirectory(prefix="rdprune-gpucheck-") as tmp:
        env = {**os.environ, "RDPRUNE_CACHE_DIR": f"{tmp}/cache", "RDPRUNE_LOG_DIR": f"{tmp}/logs",
               "RDPRUNE_DATA_DIR": f"{tmp}/data", "OMP_WAIT_POLICY": "PASSIVE"}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, *command[1:], f"hydra.run.dir={tmp}/run"],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired as e:
            raise CapReached from e
        rec["wall"] = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
        rec["metrics"] = json.loads((Path(tmp) / "run" / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------
# 4. cost to reproduce, and the report

RD_METHODS = ("ours", "ours_zerodata")  # the sweep values that profile RD curves every round


def cost_rows(state: dict) -> list[dict]:
    """Per paper experiment: optimizer steps per run and per sweep, and GPU-hours if measured.

    A sweep runs every combination of its ``hydra.sweeper.params``; the dense model is trained
    once per combination of the non-method keys (its cache key ignores the method).
    """
    from omegaconf import OmegaConf

    from rdprune.run.spec import finetunes, targets, trains_dense

    rows = []
    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        if not ("_cifar10_" in path.stem or "_imagenet_" in path.stem):
            continue
        cfg = compose([f"experiment={path.stem}"])
        params = OmegaConf.to_container(cfg.hydra.sweeper.params or {})
        sweep = {k: str(v).split(",") for k, v in params.items()}
        methods = sweep.get("method", [cfg.method.name])
        jobs = int(np.prod([len(v) for v in sweep.values()]))
        r = cfg.recipe
        row = {"experiment": path.stem, "model": cfg.model_name, "batch": r.batch_size,
               "rounds": len(targets(cfg)), "ft": r.finetune_steps if finetunes(cfg) else 0,
               "dense": r.dense_steps if trains_dense(cfg) else 0,
               "jobs": jobs, "denses": jobs // len(methods),
               "rd_jobs": jobs * sum(m in RD_METHODS for m in methods) // len(methods)}
        row["run"] = row["dense"] + row["rounds"] * row["ft"]
        row["sweep"] = row["denses"] * row["dense"] + jobs * row["rounds"] * row["ft"]
        for precision in ("32", "bf16"):
            row[precision] = gpu_hours(state, cfg, row, precision)
        rows.append(row)
    return rows


def gpu_hours(state: dict, cfg, row: dict, precision: str) -> tuple[float, float] | None:
    """``(hours of one run of ours, hours of the sweep)`` from times measured on a GPU, or None.

    Profiling per round: measured for ResNet-50; otherwise the naive scheme's bound, one forward
    (a third of a training step) of every calibration image per layer and grid point.
    """
    measured = state.get("training", {}).get(row["model"], {}).get(precision)
    if not (state.get("cuda") and isinstance(measured, dict)):
        return None
    step = measured["ms"] / 1000
    prof = state.get("profiling", {})
    label = "fp32" if precision == "32" else "bf16"
    if row["model"] == "resnet50" and isinstance(prof.get(label), float):
        profile = prof[label]
    else:
        layers = state["training"][row["model"]]["layers"]
        profile = layers * cfg.rd.grid_points * cfg.dataset.calib_size / (3 * measured["ips"])
    train = row["rounds"] * row["ft"] * step
    run = row["dense"] * step + train + row["rounds"] * profile
    sweep = (row["denses"] * row["dense"] * step + row["jobs"] * train
             + row["rd_jobs"] * row["rounds"] * profile)
    return run / 3600, sweep / 3600


def fmt(value, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value or "-")


def render(state: dict) -> str:
    """The Markdown report of what ``state`` holds so far."""
    lines = ["# GPU check", "", f"`{' '.join(state['argv'])}` - {state['started']}, "
             f"{state['device']}, torch {state['torch']}", ""]
    if state["smoke"]:
        lines += ["**SMOKE RUN** (tiny sizes, CPU): this tests the script; no figure below "
                  "measures anything.", ""]
    for name, section in (("profiling", profiling_section), ("training", training_section),
                          ("quickstart", quickstart_section), ("cost", cost_table)):
        if name in state:
            lines += section(state)
    return "\n".join(lines) + "\n"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def profiling_section(state: dict) -> list[str]:
    prof = state["profiling"]
    fp32, bf16, diff = (prof.get(k) for k in ("fp32", "bf16", "bf16_rel_diff"))
    best = [t for t, ok in ((fp32, True), (bf16, diff is not None and diff <= 0.01))
            if isinstance(t, float) and ok]
    ratio = prof["naive"] / fp32 if isinstance(prof.get("naive"), float) and best else None
    target = (verdict(min(best) <= 60) if state["cuda"] and best else "not checked by this run")
    return [f"## 1. RD profiling, ResNet-50 ({prof.get('status', 'running')})", "",
            f"{prof.get('layers', '?')} layers, {prof.get('setting', '')}.", "",
            "| | seconds | |", "|---|---|---|",
            f"| rd_curves float32 | {fmt(fp32)} | |",
            f"| rd_curves bf16 autocast | {fmt(bf16)} | max per-layer relative difference to "
            f"float32 {fmt(diff, '.2e')} (target <= 1%) |",
            f"| naive float32, all layers | {fmt(prof.get('naive'))} | "
            f"{prof.get('naive_note', '')}; naive / fast float32 {fmt(ratio, '.2f')}x |", "",
            f"Best admissible time (bf16 only if within 1%): {fmt(min(best) if best else None)} "
            f"s; target <= 60 s on one H200: {target}.", ""]


def training_section(state: dict) -> list[str]:
    train = state["training"]
    lines = [f"## 2. Training step time ({train.get('status', 'running')})", "",
             "`rdprune.training.train.fit`, random init, the recipe's batch size and fine-tuning optimizer; "
             "data wait = time inside the batch iterator / wall time (target < 10%).", "",
             "| model | input | batch | precision | ms/step | images/s | data wait |",
             "|---|---|---|---|---|---|---|"]
    waits, floors = [], []
    for name, row in train.items():
        if name == "status":
            continue
        if not isinstance(row, dict):  # its config did not compose
            lines.append(f"| {name} | | | | {row} | | |")
            continue
        for label in [k for k in row if k[:2] in ("32", "bf")] or ["status"]:
            m = row.get(label)
            if isinstance(m, dict):
                cells = [fmt(m["ms"]), fmt(m["ips"], ",.0f"), f"{100 * m['wait']:.1f}%"]
                if label in ("32", "bf16"):
                    waits.append((m["wait"], f"{name} {label}"))
            else:
                cells = [str(m), "", ""]
            lines.append(f"| {name} | {row['input']} | {row['batch']} | {label} | "
                         + " | ".join(cells) + " |")
        ms = {k: row[k]["ms"] for k in ("bf16", "bf16 on device", "bf16 fixed batch")
              if isinstance(row.get(k), dict)}
        if len(ms) == 3:
            floor = ms["bf16 fixed batch"]
            floors.append(f"{name}: {100 * (1 - floor / ms['bf16']):.1f}% built on the CPU, "
                          f"{100 * (1 - floor / ms['bf16 on device']):.1f}% built on the device")
    lines.append("")
    if waits:
        worst = max(waits)
        target = verdict(worst[0] < 0.10) if state["cuda"] else "not checked by this run"
        lines += [f"Largest data wait: {100 * worst[0]:.1f}% ({worst[1]}); target < 10% on one "
                  f"H200: {target}.", ""]
    lines += ["`bf16 on device`: batches built on the GPU (`Splits.train_batches(..., "
              "device=...)`); `bf16 fixed batch`: one batch already on the GPU, no data work "
              "(the floor). Whole data cost per step, host-to-device copy included, = 1 - "
              "floor / step time: " + ("; ".join(floors) or "-") + ".", ""]
    return lines


def quickstart_section(state: dict) -> list[str]:
    quick = state["quickstart"]
    lines = [f"## 3. Quickstart end to end ({quick.get('status', 'running')})", "",
             f"`{quick.get('command', '')}` (temporary cache and log directories)", ""]
    if "metrics" in quick:
        m = quick["metrics"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in m.get("seconds", {}).items())
        lines += [f"Wall time {quick['wall']:.0f} s (the whole process); dense top-1 "
                  f"{m['dense_top1']:.2f} %, after pruning {m['pruned_top1']:.2f} %, final "
                  f"{m['top1']:.2f} % at sparsity {100 * m['achieved_sparsity']:.2f} %; seconds "
                  f"per stage: {stages}.", ""]
    return lines


def cost_table(state: dict) -> list[str]:
    rows = state["cost"].get("rows", [])
    lines = ["## 4. Cost to reproduce the paper", "",
             "Optimizer steps from the configs: per run = dense + rounds x fine-tune steps; per "
             "sweep (`-m`, all of `hydra.sweeper.params`) = jobs x rounds x fine-tune steps + one "
             "dense training per seed (cached across methods). GPU-hours add profiling per round "
             "for the jobs of `ours`/`ours_zerodata` (ResNet-50: measured; others: the naive "
             "scheme's bound); evaluation and data loading not included; `-`: no step time "
             "measured on a GPU.", "",
             "| experiment | batch | rounds | FT steps/round | dense steps | steps/run | jobs | "
             "steps/sweep | GPU-h/run fp32 | GPU-h/sweep fp32 | GPU-h/sweep bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h32, h16 = r["32"] or (None, None), r["bf16"] or (None, None)
        lines.append(f"| {r['experiment']} | {r['batch']} | {r['rounds']} | {r['ft']:,} | "
                     f"{r['dense']:,} | {r['run']:,} | {r['jobs']} | {r['sweep']:,} | "
                     f"{fmt(h32[0])} | {fmt(h32[1])} | {fmt(h16[1])} |")
    return [*lines, ""]


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:i] (the check) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU test of the script)")
    p.add_argument("--budget", type=float, default=440.0,
                   help="seconds for all parts (start-up and CUDA init come on top)")
    p.add_argument("--models", default=None,
                   help="comma-separated paper models (default: all; --smoke: resnet32,resnet50)")
    p.add_argument("--step-seconds", type=float, default=3.0, help="timed fit per measurement")
    p.add_argument("--weights", default=None, help="ResNet-50 weights for profiling (hub cache)")
    p.add_argument("--parts", default="profiling,training,quickstart,cost")
    p.add_argument("--out", default="results/gpu_check.md", help="report file")
    args = p.parse_args(argv)
    default = "resnet32,resnet50" if args.smoke else ",".join(MODELS)
    args.models = [m for m in (args.models or default).split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {"argv": ["python", "experiments/gpu_check.py", *(argv if argv is not None
                                                             else sys.argv[1:])],
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
             "torch": torch.__version__, "smoke": args.smoke, "started": time.strftime("%F %T"),
             "cuda": device.type == "cuda" and not args.smoke}  # GPU-hours only from a real check
    clock = Clock(args.budget, save=lambda: out.write_text(render(state)))
    parts = {"profiling": profiling, "training": training, "quickstart": quickstart,
             "cost": lambda *_, rec: rec.update(rows=cost_rows(state))}
    for name in args.parts.split(","):
        rec = state.setdefault(name, {})
        start = time.perf_counter()
        part = Clock(CAPS.get(name, 60.0), clock)
        try:
            parts[name](args, device, part, rec=rec)
            rec["status"] = f"done in {time.perf_counter() - start:.0f} s"
        except CapReached:
            rec["status"] = f"stopped at its {CAPS.get(name, 60.0):.0f} s cap"
        except Exception as e:  # noqa: BLE001 - reported; the other parts still run
            traceback.print_exc()
            rec["status"] = f"failed: {type(e).__name__}: {e}".splitlines()[0]
        clock.save()
        print(f"{name}: {rec['status']}", file=sys.stderr, flush=True)
    print(f"wrote {out}", file=sys.stderr)
    return state


if __name__ == "__main__":
    main()
