"""Up-front checks of a composed run config, before any expensive stage and whatever is cached.

Every check raises :class:`~rdprune.errors.UserError` with one line that names the setting and
how to fix it; ``run.py`` prints it as ``error: ...`` and exits with code 2. Settings are checked
by doing the cheap version of what the run will do with them: every key of the dataset, model
and method configs is matched against its factory's parameters (none is silently dropped),
optimizers are built on a dummy parameter, the learning-rate schedule is stepped once, the
device and ``devices`` are resolved against this machine, the cache directory is probed with a
real write, a checkpoint is loaded, and the model is run on one input (a too-small input names
the smallest size that works). A cached stage can therefore never hide a bad setting. Legal but
unreasonable values only warn. (Over 300 lines: one check per setting, all in one place.)
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig
from torch import nn

from rdprune.cache import writable
from rdprune.run.spec import profiles
from rdprune import tasks
from rdprune.errors import UserError, UserFileNotFoundError, one_line
from rdprune.training.loop import PRECISIONS
from rdprune.pruning.criteria import CRITERIA
from rdprune.training.train import SCHEDULES, lr_schedule

log = logging.getLogger(__name__)

#: input sides tried when a model rejects its input, to name the smallest that works
PROBE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(name: str, value: Any, *, lo: float, hi: float, lo_open: bool = False,
            hi_open: bool = False, integer: bool = False, what: str = "") -> None:
    """``value`` is a finite number (an integer if asked) in the interval, else a UserError."""
    kind = "an integer" if integer else "a number"
    if hi == math.inf:
        bounds = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    ok_type = _is_int(value) if integer else (
        isinstance(value, numbers.Real) and not isinstance(value, bool))
    if not ok_type or not math.isfinite(float(value)):
        raise UserError(f"{name} must be {kind} {bounds}{what}, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise UserError(f"{name} must be {bounds}{what}, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Types and ranges of every top-level, recipe and RD setting (no I/O)."""
    _number("sparsity", cfg.sparsity, lo=0.0, hi=1.0, hi_open=True,
            what=" (fraction of weights removed)")
    if cfg.get("flops_kept") is not None:
        _number("flops_kept", cfg.flops_kept, lo=0.0, hi=1.0, lo_open=True,
                what=" (fraction of the dense conv/linear MACs kept)")
    if not _is_int(cfg.seed):
        raise UserError(f"seed must be an integer, got {cfg.seed!r}")
    r = cfg.recipe
    _number("recipe.batch_size", r.batch_size, lo=1, hi=math.inf, integer=True)
    _number("recipe.dense_steps", r.dense_steps, lo=0, hi=math.inf, integer=True)
    _number("recipe.finetune_steps", r.finetune_steps, lo=0, hi=math.inf, integer=True)
    _number("recipe.prune_amount", r.prune_amount, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    _number("recipe.rounds", r.rounds, lo=1, hi=math.inf, integer=True)
    for stage in ("dense", "finetune"):
        kind = r.get(f"{stage}_schedule")
        if kind not in SCHEDULES:
            raise UserError(f"recipe.{stage}_schedule must be one of {', '.join(SCHEDULES)}, "
                            f"got {kind!r}")
    _number("checkpoint_every", cfg.checkpoint_every, lo=1, hi=math.inf, integer=True)
    _number("dataset.calib_size", cfg.dataset.calib_size, lo=1, hi=math.inf, integer=True)
    if str(cfg.precision) not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (float32 or bfloat16 "
                        f"autocast), got {cfg.precision!r}")
    if cfg.get("threads") is not None:
        _number("threads", cfg.threads, lo=1, hi=math.inf, integer=True)
    _number("rd.shards", cfg.rd.shards, lo=1, hi=math.inf, integer=True)
    if cfg.rd.shard is not None:
        _number("rd.shard", cfg.rd.shard, lo=0, hi=cfg.rd.shards - 1, integer=True,
                what=f" (one of rd.shards={cfg.rd.shards} shards)")
        if not profiles(cfg):
            raise UserError(f"rd.shard profiles RD curves: method {cfg.method.name} has none "
                            "(use method=ours, ours_zerodata or ours_block)")
    tasks.check_config(cfg.model.get("_target_"), cfg.dataset.get("_target_"), cfg.model_name,
                       cfg.dataset.name)
    if cfg.prune.criterion not in CRITERIA:
        raise UserError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got "
                        f"{cfg.prune.criterion!r}")


def check_keys(node: DictConfig, where: str, what: str, supplied: tuple[str, ...] = ()) -> None:
    """Every key of the ``_target_`` node ``node`` (at ``where``, e.g. ``"dataset"``) is a
    parameter of its target, and every parameter without a default is set: else a one-line
    UserError naming the key, ``what`` the node is (e.g. ``"dataset digits"``) and the keys its
    target takes. ``supplied``: parameters the caller passes itself (not keys of the node). A
    target with ``**kwargs`` takes any key; nested ``_target_`` nodes are checked likewise.
    Nothing is built or resolved.
    """
    target = node.get("_target_")
    if target is None:
        return
    try:
        factory = get_method(str(target))
        params = inspect.signature(factory).parameters
    except Exception as e:  # noqa: BLE001 - Hydra's import errors vary; one line names the cause
        raise UserError(f"{where}._target_={target} cannot be used ({one_line(e)})") from None
    named = [n for n, p in params.items() if n not in supplied and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    anything = any(p.kind is p.VAR_KEYWORD for p in params.values())
    takes = f"{target} takes {', '.join(named) or 'no keys'}"
    keys = [str(k) for k in node if not (str(k).startswith("_") and str(k).endswith("_"))]
    for key in keys:
        if key not in named and not anything:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f"; did you mean {where}.{close[0]}?" if close else ""
            raise UserError(f"{where}.{key} is not a setting of {what} ({takes}){hint}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and "_target_" in child:
            check_keys(child, f"{where}.{key}", f"{where}.{key}")
    if not node.get("_partial_", False):
        missing = [n for n in named if n not in keys and params[n].default is params[n].empty]
        if missing:
            raise UserError(f"{what} needs {', '.join(f'{where}.{m}' for m in missing)} "
                            f"({takes})")


def check_targets(cfg: DictConfig) -> None:
    """The dataset, model and method configs hold exactly their factories' parameters
    (:func:`check_keys`): a key that would be ignored, or passed to a factory that does not take
    it, is a one-line error before anything is built. A rate-distortion method gets ``options``
    (``rd.*``) from the pipeline."""
    check_keys(cfg.dataset, "dataset", f"dataset {cfg.dataset.get('name')}")
    check_keys(cfg.model, "model", f"model {cfg.get('model_name')}",
               supplied=tasks.for_factory(cfg.model.get("_target_")).model_keys)
    check_method_keys(cfg.method)


def check_method_keys(node: DictConfig) -> None:
    """The method config names a registered method and holds only its settings."""
    from rdprune.methods.registry import info, options

    entry = info(str(node.get("name")))
    allowed = options(entry)
    for key in node:
        if str(key) in ("_target_", "name") or str(key) in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"; did you mean method.{close[0]}?" if close else ""
        takes = f"its settings: {', '.join(allowed)}" if allowed else "it takes no settings"
        rd = "; the RD options are rd.*" if entry.profiles else ""
        raise UserError(f"method.{key} is not a setting of method {entry.name} ({takes}{rd})"
                        f"{hint}")


def resolve_device(name: Any) -> torch.device:
    """``auto`` -> cuda when present, else cpu; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} requested but CUDA is not available: use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are "
                            "visible")
    return device


def check_machine(cfg: DictConfig, device: torch.device) -> None:
    """``devices`` and ``precision`` against this machine (and ``finetune=admm``, one process)."""
    from rdprune.training.distributed import resolve_devices

    world = resolve_devices(cfg.devices, device)
    if world > 1 and cfg.finetune.name == "admm":
        raise UserError(f"finetune=admm runs its ADMM phase in one process, devices={cfg.devices} "
                        "is not supported: use devices=1")
    cores = os.cpu_count() or 1
    if device.type == "cpu" and world > cores:
        raise UserError(f"devices={cfg.devices} on CPU starts {world} training processes but this "
                        f"machine has {cores} cores: use devices=1 (or at most {cores})")
    if world > 1 and cfg.recipe.batch_size % world:
        raise UserError(f"recipe.batch_size={cfg.recipe.batch_size} is not divisible by "
                        f"devices={world}: each device takes an equal share of every batch")
    if str(cfg.precision) == "bf16" and device.type == "cuda" and \
            not torch.cuda.is_bf16_supported():
        raise UserError(f"precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 "
                        "support: use precision=32")


def check_optimizer(name: str, spec: Any, schedule: str, steps: int) -> None:
    """Build the stage's optimizer and schedule on a dummy parameter and take one step."""
    try:
        factory = instantiate(spec) if spec is not None else None
    except Exception as e:  # noqa: BLE001 - any construction failure is a config error
        cause = e.__cause__ or e
        raise UserError(f"{name}.optimizer cannot be built ({one_line(cause)})") from None
    if not callable(factory):
        raise UserError(f"{name}.optimizer must be a _target_ + _partial_ config, got {spec}")
    param = nn.Parameter(torch.zeros(2))
    try:
        opt = factory([param])
        sched = lr_schedule(opt, schedule, steps)
        param.grad = torch.ones(2)
        opt.step()
        sched.step()
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"{name}.optimizer is invalid ({one_line(e)})") from None


def check_cache_dir(path: str) -> Path:
    """The cache directory must be writable, or exist (a read-only cache serves what it holds)."""
    root = Path(path).expanduser().resolve()
    if writable(root):
        return root
    if root.is_dir():
        log.warning("paths.cache_dir %s is read-only: results stored there are used, any missing "
                    "result is an error", root)
        return root
    raise UserError(f"paths.cache_dir={path} cannot be created or written: point it (or "
                    "RDPRUNE_CACHE_DIR) at a writable directory")


def load_state(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a file (``{"model": state_dict}`` accepted), checked to be one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserFileNotFoundError(f"checkpoint not found: {p} (set dense.checkpoint to an "
                                    "existing file)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler fails in many ways on a non-checkpoint
        raise UserError(f"dense.checkpoint {p} is not a PyTorch state_dict file "
                        f"({one_line(e, 80)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"dense.checkpoint {p} holds a {type(state).__name__}, not a state_dict "
                        "({name: tensor})")
    return state


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """``state`` has exactly the keys and shapes of ``model``'s state_dict."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                             f" ({len(keys)})")
        raise UserError(f"checkpoint {path} does not fit this model - " + "; ".join(parts))


def _runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False
    return True


def input_size_error(
    name: str, model: nn.Module, shape: tuple[int, ...], error: BaseException, resizable: bool,
    sizable: bool = False,
) -> UserError:
    """The one-line error for a model that rejects inputs of ``shape`` (C, H, W).

    ``resizable``: the dataset can resize its images (``dataset.image_size``); ``sizable``: the
    model takes size options (``model.kwargs``, e.g. a timm ViT's ``img_size``).
    """
    was_training = model.training
    model.eval()
    try:
        sizes = [s for s in PROBE_SIZES if _runs(model, (shape[0], s, s))]
    finally:
        model.train(was_training)
    got = "x".join(map(str, shape[1:]))
    why = one_line(error)
    if not sizes:
        return UserError(f"model {name} does not run on {got} inputs ({why}), nor on any square "
                         f"size from {PROBE_SIZES[0]} to {PROBE_SIZES[-1]}")
    smallest = sizes[0]
    size_it = f"+model.kwargs.img_size={shape[1]}" if sizable else ""
    if resizable:
        fix = f"set dataset.image_size={smallest}" + (f", or {size_it}" if sizable else "")
    elif sizable:
        fix = f"size the model to this dataset's images: {size_it}"
    else:
        fix = "this dataset's images are not resized: pick a model that takes them"
    # "at least" only when every probed size from there on runs (a ViT runs at one size only)
    needs = "at least" if sizes == [s for s in PROBE_SIZES if s >= smallest] else "e.g."
    return UserError(f"model {name} needs inputs of {needs} {smallest}x{smallest}, got {got} "
                     f"({why}): {fix}")


def warn_profiling_cost(cfg: DictConfig, model: nn.Module,
                        calibration: Callable[[], torch.Tensor], num_layers: int,
                        device: torch.device) -> None:
    """Warn, with the estimated time from one timed forward, when the RD grid is far above the
    official 101 points (``calibration`` is only loaded then)."""
    if not profiles(cfg):
        return
    grid = int(cfg.rd.grid_points)
    if grid <= 1001:  # ten times the official grid: not worth a forward pass to estimate
        return
    calib = calibration()
    chunk = calib[: int(cfg.rd.batch_size)].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            model(chunk)
            per_forward = (time.perf_counter() - start) * math.ceil(len(calib) / len(chunk))
    finally:
        model.train(was_training)
    # the fast path re-runs about half of the network per point on average
    estimate = 0.5 * num_layers * grid * per_forward
    log.warning("rd.grid_points=%d: RD profiling runs %d layers x %d grid points, about %.1f "
                "hours per round on this machine (the official grid has 101 points)", grid,
                num_layers, grid, estimate / 3600)
