"""Additivity of per-layer pruning distortions (the paper's Figure 1).

The allocation of the paper rests on one property: the output distortion of pruning several layers
at once is close to the sum of the distortions of pruning each of them alone. This module measures
both sides on a model: for each chosen subset of prunable layers and each sparsity (the same
magnitude sparsity in every layer of the subset) it prunes the subset temporarily, runs the
inputs, and compares the logits with the reference logits; single-layer distortions are measured
once per (layer, sparsity) and reused by every subset that contains the layer. The model's weights
are restored after every measurement.

Distortions are those of :func:`rdprune.methods.rd.distortion.joint`: ``mean`` (mean over samples and
logits of the squared logit error) and ``worst`` (max over samples of the per-sample mean).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rdprune import cache, keys

from rdprune.methods.rd import distortion
from rdprune.pruning.criteria import Criterion
from rdprune.pruning.masks import apply_masks
from rdprune.training.preemption import STOP_SIGNALS, Guard
from rdprune.progress import bar as progress_bar
from rdprune.training.train import predict

#: the distortions recorded (keys of :func:`rdprune.methods.rd.distortion.joint`)
METRICS = distortion.REDUCTIONS


@contextlib.contextmanager
def pruned(layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Zero the masked weights of ``layers`` inside the block; restore the exact weights after."""
    saved = {name: layers[name].weight.detach().clone() for name in masks}
    try:
        apply_masks(layers, masks)
        yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                layers[name].weight.copy_(w)


def random_subsets(n_layers: int, sizes: Sequence[int], count: int, seed: int
                   ) -> list[tuple[int, ...]]:
    """``count`` distinct random subsets of layer indices per size (sorted); one if size >= all.

    A size of at least ``n_layers`` means every layer (a single subset). When a size has fewer
    than ``count`` distinct subsets, all of them are returned.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[int, ...]] = []
    for size in sizes:
        if size >= n_layers:
            out.append(tuple(range(n_layers)))
            continue
        seen: set[tuple[int, ...]] = set()
        limit = count * 100  # small sizes may have fewer than `count` distinct subsets
        while len(seen) < count and limit:
            seen.add(tuple(sorted(int(i) for i in rng.choice(n_layers, size, replace=False))))
            limit -= 1
        out.extend(sorted(seen))
    return out


def num_forwards(subsets: Sequence[tuple[int, ...]], sparsities: Sequence[float]) -> int:
    """Forward passes over the inputs that :func:`measure` will run (reference included)."""
    used = {i for s in subsets for i in s}
    return 1 + len(sparsities) * (len(used) + len(subsets))


def measure(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    inputs: torch.Tensor,
    subsets: Sequence[tuple[str, tuple[int, ...]]],
    sparsities: Sequence[float],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
    cache_dir: Path | None = None,
    units: Sequence[Sequence[int]] | None = None,
    criterion: Criterion | None = None,
) -> list[dict[str, Any]]:
    """Joint distortion of each subset vs the sum of its single-unit distortions.

    With ``cache_dir``, every measurement (a single layer or a subset at one sparsity) is stored
    under ``cache_dir/additivity/<digest of model, inputs and layers>/`` as soon as it is done,
    and a stop signal (SIGUSR2, SIGTERM, Ctrl-C) ends the study after the measurement in flight
    (:mod:`rdprune.training.preemption`): a rerun measures only what is missing.

    Args:
        model: the network; its weights are unchanged on return (also on error).
        layers: its prunable layers, in order (indices in ``subsets`` refer to this order).
        inputs: the calibration inputs; the reference is the model's current logits on them.
        subsets: ``(kind, unit indices)`` pairs, e.g. ``("pair", (3, 4))``.
        sparsities: sparsities (fraction of weights removed, in [0, 1]), each applied to every
            layer of a subset.
        batch_size: inputs per forward batch.
        device: where the forward passes run.
        progress: show a progress bar.
        cache_dir: the stage cache (None: nothing stored).
        units: what a subset's indices count: lists of layer indices (a language model's
            decoder blocks); default: each layer alone.
        criterion: which weights of a layer go (default magnitude).

    Returns:
        One row per (subset, sparsity): kind, layers ("3;4"), size, sparsity, then for each
        metric ``m`` of :data:`METRICS`: ``sum_single`` / ``joint`` (mean) and
        ``sum_single_worst`` / ``joint_worst``.
    """
    names = list(layers)
    units = [list(u) for u in units] if units is not None else [[i] for i in range(len(names))]
    criterion = criterion or Criterion()
    reference = predict(model, inputs, batch_size, device)
    singles: dict[tuple[int, float], dict[str, float]] = {}
    masks: dict[tuple[int, float], torch.Tensor] = {}

    def mask(i: int, s: float) -> torch.Tensor:
        if (i, s) not in masks:
            masks[i, s] = criterion.mask(names[i], layers[names[i]], s)
        return masks[i, s]

    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / "additivity" / keys.key(
            "additivity", {"criterion": criterion.name}, weights=cache.state_digest(model),
            inputs=inputs, layers=names, stats=criterion.stats)

    def measured(pruned_layers: list[int], s: float) -> dict[str, float]:
        with pruned(layers, {names[i]: mask(i, s) for i in pruned_layers}):
            return distortion.joint(reference, predict(model, inputs, batch_size, device))

    def run(indices: tuple[int, ...], s: float) -> dict[str, float]:
        pruned_layers = sorted(i for u in indices for i in units[u])
        if folder is None:
            return measured(pruned_layers, s)
        name = "-".join(map(str, pruned_layers))
        if len(name) > 96:  # a file name has 255 bytes: many layers go by their digest
            name = f"{len(pruned_layers)}layers-{cache.digest(pruned_layers)[:16]}"
        item = folder / f"{name}_{s!r}.pt"
        value, _ = cache.cached(item, lambda: measured(pruned_layers, s))
        if guard.pending:  # stored: hand a stop signal on now
            guard.hand_on()
        return value

    rows = []
    bar = progress_bar(total=num_forwards([ix for _, ix in subsets], sparsities) - 1,
                       desc="additivity", disable=not progress)
    with Guard(signals=STOP_SIGNALS if folder is not None else ()) as guard:
        for s in sparsities:
            for kind, indices in subsets:
                for i in indices:
                    if (i, s) not in singles:
                        singles[i, s] = run((i,), s)
                        bar.update(1)
                joint = run(indices, s)
                bar.update(1)
                row: dict[str, Any] = {"kind": kind, "layers": ";".join(map(str, indices)),
                                       "size": len(indices), "sparsity": s}
                for m in METRICS:
                    suffix = "" if m == "mean" else f"_{m}"
                    row[f"sum_single{suffix}"] = sum(singles[i, s][m] for i in indices)
                    row[f"joint{suffix}"] = joint[m]
                rows.append(row)
    bar.close()
    return rows


def agreement(sum_single: np.ndarray, joint: np.ndarray) -> dict[str, float]:
    """How well ``sum_single`` predicts ``joint``: Pearson r (log10 and linear), ratio quantiles.

    Log-scale correlation uses only pairs where both are positive. Ratios are ``joint / sum``.
    """
    x, y = np.asarray(sum_single, float), np.asarray(joint, float)
    pos = (x > 0) & (y > 0)

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    ratio = y[x > 0] / x[x > 0]
    q = np.quantile(ratio, [0.1, 0.5, 0.9]) if len(ratio) else [float("nan")] * 3
    return {
        "n": int(len(x)),
        "pearson_log": pearson(np.log10(x[pos]), np.log10(y[pos])),
        "pearson_lin": pearson(x, y),
        "median_ratio": float(q[1]),
        "p10_ratio": float(q[0]),
        "p90_ratio": float(q[2]),
    }
