"""ADMM weight pruning (Zhang et al., ECCV 2018, arXiv 1804.03294) before hard pruning.

Given per-layer target sparsities from any allocation, the constrained problem
``min loss(W) s.t. layer i keeps at most kept_i weights`` is split as ``W_i = Z_i`` and solved
approximately by alternating

* W-step: ``steps_per_iter`` optimizer steps on ``loss(W) + sum_i rho/2 ||W_i - Z_i + U_i||_F^2``,
* Z-step: ``Z_i = project(W_i + U_i, kept_i)`` (the ``kept_i`` largest magnitudes, rest zero),
* U-step: ``U_i += W_i - Z_i`` (scaled dual variable),

then ``rho *= rho_growth``. The model is trained in place but *not* hard-pruned here: the caller
prunes it with :func:`rdprune.pruning.masks.magnitude_masks` (whose choice :func:`project` reproduces
exactly) and retrains with the masks fixed (:func:`rdprune.training.train.fit`).

The W-steps run in the shared training loop (:func:`rdprune.training.loop.run_steps`) with the penalty as
a :class:`rdprune.training.loop.Penalty` whose per-step hook (:meth:`~rdprune.training.loop.Penalty.after_step`)
does the Z- and U-steps after the last step of every iteration, whatever the logging interval, so
the phase is deterministic on CPU like :func:`rdprune.training.train.fit` (batches are a function of
``(seed, global step)``, the model's randomness is reseeded at every step) and a phase killed and
restarted from its checkpoint (saved after every ADMM iteration, and on a stop signal after the
step in flight) ends bitwise-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdprune.data import Splits
from rdprune.errors import UserError
from rdprune.training.loop import run_steps
from rdprune.pruning.masks import magnitude_mask_count, num_pruned

log = logging.getLogger(__name__)

#: the residuals of an ADMM iteration, in its history rows
RESIDUALS = ("primal_residual", "primal_residual_rel", "dual_residual")


def project(w: torch.Tensor, keep: int) -> torch.Tensor:
    """Euclidean projection onto ``{at most keep non-zeros}``: the Z-step of ADMM.

    Keeps exactly the ``keep`` largest-magnitude entries of ``w`` and zeros the rest. Ties are
    broken as in :func:`rdprune.pruning.masks.magnitude_order` (already-zero and earlier entries go
    first), so the kept positions are those :func:`rdprune.pruning.masks.magnitude_mask` keeps at
    sparsity ``1 - keep / w.numel()``.

    Args:
        w: any tensor (not modified; the result is detached).
        keep: number of entries kept, in ``[0, w.numel()]``.

    Returns:
        A new tensor shaped like ``w``: ``w`` on the kept positions, exactly 0 elsewhere.
    """
    n = w.numel()
    if not 0 <= keep <= n:
        raise ValueError(f"keep must be in [0, {n}], got {keep}")
    w = w.detach()
    return torch.where(magnitude_mask_count(w, n - keep), w, torch.zeros_like(w))


def _norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """Frobenius norm over several tensors together (a Python float)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t.float())) ** 2 for t in tensors.values()))


def _check_args(layers: Mapping[str, nn.Module], sparsities: Sequence[float], iters: int,
                steps_per_iter: int, rho: float, rho_growth: float) -> None:
    if len(sparsities) != len(layers):
        raise ValueError(f"{len(sparsities)} sparsities for {len(layers)} layers")
    if iters < 0:
        raise UserError(f"ADMM iters must be >= 0, got {iters}")
    if steps_per_iter < 1:
        raise UserError(f"ADMM steps_per_iter must be >= 1, got {steps_per_iter}")
    if not (rho > 0 and math.isfinite(rho)):
        raise UserError(f"ADMM rho must be positive and finite, got {rho}")
    if not (rho_growth > 0 and math.isfinite(rho_growth)):
        raise UserError(f"ADMM rho_growth must be positive and finite (1.0: constant), "
                        f"got {rho_growth}")


def admm_phase(
    model: nn.Module,
    data: Splits,
    layers: Mapping[str, nn.Module],
    sparsities: Sequence[float],
    *,
    iters: int,
    steps_per_iter: int,
    rho: float,
    rho_growth: float = 1.0,
    batch_size: int,
    optimizer: Callable[..., torch.optim.Optimizer],
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    precision: str = "32",
    desc: str = "ADMM",
    progress: bool = True,
    log_every: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place with ADMM towards per-layer sparsities; one row per iteration.

    A layer whose sparsity keeps all its weights has no constraint and gets no penalty (a
    penalty would only pull it back to its previous iterate). The optimizer is created once and
    kept across iterations. ``rho`` weighs the penalty of iteration 1 and is multiplied by
    ``rho_growth`` after each iteration; as in the public ADMM code, the scaled dual ``U`` is
    not rescaled when ``rho`` changes.

    Args:
        model: the network (moved to ``device``); left dense, in train mode.
        data: the dataset splits; batches from ``data.train``.
        layers: ``{name: module}`` of the pruned layers (modules of ``model``), in model order.
        sparsities: per-layer fraction of weights removed, in [0, 1], in the order of ``layers``;
            layer i keeps ``n_i - num_pruned(n_i, s_i)`` weights, as the hard-pruning masks do.
        iters: number of ADMM iterations (W-, Z-, U-step each).
        steps_per_iter: optimizer steps per W-step.
        rho: initial penalty weight.
        rho_growth: factor applied to ``rho`` after every iteration (1.0: constant).
        batch_size: samples per step.
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_`` object) for the W-steps.
        seed: seeds the batch order, augmentation and the model's randomness (global step
            ``it * steps_per_iter + k`` like :func:`rdprune.training.train.fit`'s step).
        device: where to train.
        checkpoint: file written after every completed iteration and on a stop signal (after
            the step in flight, :mod:`rdprune.training.preemption`), resumed from if present; calling
            again with a larger ``iters`` continues a finished phase.
        precision: "32" or "bf16" (autocast for the forward; the penalty is in float32).
        desc: progress-bar and log label.
        progress: show a progress bar.
        log_every: steps per history row (default ``steps_per_iter``: one row per iteration).
            The Z- and U-steps follow ``steps_per_iter`` whatever it is: the trajectory does not
            depend on it.

    Returns:
        With the default ``log_every``, one dict per completed iteration (all of them, also
        those done before a resume): ``iter``, ``step`` (global steps done), ``rho`` (used in
        this iteration), ``loss`` (mean training cross-entropy), ``penalty`` (mean
        ``rho/2 sum ||W - Z + U||^2`` of the W-step), ``primal_residual`` (``||W - Z||_F`` over
        all constrained layers), ``primal_residual_rel`` (divided by ``||W||_F``),
        ``dual_residual`` (``rho * ||Z - Z_prev||_F``). With another ``log_every``, one such
        row every ``log_every`` steps and at the end: ``iter`` is the number of iterations
        completed, ``rho`` that of the row's last step, ``loss`` and ``penalty`` the means over
        the row's steps, the residuals those of the last completed iteration (NaN before the
        first).

    Raises:
        TrainingDivergedError: the loss or penalty is NaN/inf (the last checkpoint is kept).
        UserError: bad settings, or a checkpoint written with other settings or more iterations.
    """
    _check_args(layers, sparsities, iters, steps_per_iter, rho, rho_growth)
    if log_every is not None and log_every < 1:
        raise UserError(f"ADMM log_every must be >= 1, got {log_every}")
    device = torch.device(device)
    model.to(device)
    kept = {name: m.weight.numel() - num_pruned(m.weight.numel(), s)
            for (name, m), s in zip(layers.items(), sparsities)}
    # everything the trajectory depends on besides the model and `iters`: a checkpoint written
    # under other settings must not be continued silently
    signature = {"layers": list(layers), "kept": list(kept.values()), "rho": rho,
                 "rho_growth": rho_growth, "steps_per_iter": steps_per_iter,
                 "batch_size": batch_size, "seed": seed, "precision": str(precision)}
    admm = _Admm(layers, kept, rho, rho_growth, iters, steps_per_iter, signature, desc,
                 checkpoint, device)
    model.train()
    return run_steps(
        model, data, steps=iters * steps_per_iter, batch_size=batch_size, optimizer=optimizer,
        seed=seed, device=device, checkpoint=checkpoint, checkpoint_every=steps_per_iter,
        precision=precision, desc=desc, log_every=log_every or steps_per_iter, progress=progress,
        penalty=admm, save_at_end=True,
    )


class _Admm:
    """The ADMM state (Z, U, rho) as the training loop's penalty (:class:`rdprune.training.loop.Penalty`).

    A layer whose sparsity keeps all its weights has no constraint and no penalty.
    """

    def __init__(self, layers: Mapping[str, nn.Module], kept: Mapping[str, int], rho: float,
                 rho_growth: float, iters: int, steps_per_iter: int, signature: dict[str, Any],
                 desc: str, checkpoint: str | Path | None, device: torch.device) -> None:
        self.kept, self.rho_growth = kept, rho_growth
        self.iters, self.steps_per_iter = iters, steps_per_iter
        self.signature, self.desc, self.device = signature, desc, device
        self.source = f"{desc}: checkpoint {checkpoint}"
        self.weights = {name: m.weight for name, m in layers.items()
                        if kept[name] < m.weight.numel()}
        with torch.no_grad():
            self.z = {name: project(w, kept[name]) for name, w in self.weights.items()}
            self.u = {name: torch.zeros_like(w) for name, w in self.weights.items()}
        self.rho, self.iteration = rho, 0
        self.step_rho = rho  # the rho of the last step done
        self.residuals = dict.fromkeys(RESIDUALS, math.nan)  # of the last completed iteration
        self._anchor()

    def _anchor(self) -> None:
        self.anchors = {name: self.z[name] - self.u[name] for name in self.weights}

    def __call__(self) -> torch.Tensor:
        # W is pulled towards Z - U; in float32 whatever the autocast precision of the loss
        penalty = torch.zeros((), device=self.device)
        for name, w in self.weights.items():
            penalty = penalty + (w.float() - self.anchors[name]).pow(2).sum()
        return penalty * (self.rho / 2)

    def after_step(self, step: int) -> None:
        """After the last W-step of an iteration (``step`` a multiple of ``steps_per_iter``):
        Z-step, U-step and residuals; then ``rho *= rho_growth``."""
        self.step_rho = self.rho
        if step % self.steps_per_iter:
            return
        weights = self.weights
        with torch.no_grad():
            z_prev = self.z
            self.z = {name: project(w + self.u[name], self.kept[name])
                      for name, w in weights.items()}
            self.u = {name: self.u[name] + w - self.z[name] for name, w in weights.items()}
            primal = _norm({name: w - self.z[name] for name, w in weights.items()})
            w_norm = _norm(weights)
            dual = self.rho * _norm({name: self.z[name] - z_prev[name] for name in weights})
        self.iteration += 1
        self.residuals = {"primal_residual": primal,
                          "primal_residual_rel": primal / w_norm if w_norm else 0.0,
                          "dual_residual": dual}
        self.rho *= self.rho_growth
        self._anchor()

    def log(self, row: dict[str, float]) -> dict[str, Any]:
        """The history row: the loop's means, the iterations done and the latest residuals."""
        out = {"iter": self.iteration, "step": row["step"], "rho": self.step_rho,
               "loss": row["loss"], "penalty": row["penalty"], **self.residuals}
        log.info("%s iteration %d/%d: rho %.3g loss %.4f primal %.4g (rel %.3g) dual %.4g",
                 self.desc, self.iteration, self.iters, out["rho"], out["loss"],
                 out["primal_residual"], out["primal_residual_rel"], out["dual_residual"])
        return out

    def where(self, step: int) -> str:
        it, k = divmod(step, self.steps_per_iter)
        return (f"iteration {it + 1}/{self.iters}, step {k + 1}/{self.steps_per_iter} "
                f"(global step {step})")

    def state_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "iteration": self.iteration, "rho": self.rho,
                "step_rho": self.step_rho, "residuals": self.residuals,
                "z": {k: v.cpu() for k, v in self.z.items()},
                "u": {k: v.cpu() for k, v in self.u.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["signature"] != self.signature:
            raise UserError(
                f"{self.source} was written with other settings ({state['signature']} vs "
                f"{self.signature}); delete it to start over"
            )
        if state["iteration"] > self.iters:
            raise UserError(
                f"{self.source} already has {state['iteration']} iterations, more than "
                f"iters={self.iters}; delete it to start over"
            )
        self.z = {k: v.to(self.device) for k, v in state["z"].items()}
        self.u = {k: v.to(self.device) for k, v in state["u"].items()}
        self.rho, self.iteration = state["rho"], state["iteration"]
        # older checkpoints lack these: they only fill rows logged mid-iteration
        self.step_rho = state.get("step_rho", self.rho)
        self.residuals = state.get("residuals", dict.fromkeys(RESIDUALS, math.nan))
        self._anchor()
