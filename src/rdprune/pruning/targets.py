"""Pruning schedules: the global sparsity targets of successive rounds.

- ``oneshot``: one round straight to the target sparsity.
- ``iterative`` (the LAMP protocol used by the paper): round t removes a fraction ``amount`` of the
  weights still remaining, i.e. cumulative target ``1 - (1 - amount)^t``, for ``rounds`` rounds or
  until the target sparsity is reached (the last round is clipped to it), whichever comes first.
Each round the method re-allocates on the current (masked, fine-tuned) model; pruned weights stay
pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rdprune.errors import UserError


def iterative_targets(amount: float, rounds: int, sparsity: float) -> list[float]:
    """Cumulative targets ``1 - (1 - amount)^t``, clipped to ``sparsity``, at most ``rounds``."""
    if not 0.0 < amount < 1.0:
        raise UserError(f"schedule.amount must be in (0, 1), got {amount}")
    if rounds < 1:
        raise UserError(f"schedule.rounds must be at least 1, got {rounds}")
    targets = []
    for t in range(1, rounds + 1):
        target = min(1.0 - (1.0 - amount) ** t, sparsity)
        targets.append(target)
        if target >= sparsity:
            break
    return targets


def schedule_targets(schedule: Mapping[str, Any], sparsity: float) -> list[float]:
    """The per-round global sparsity targets of ``schedule`` (a ``conf/schedule`` config)."""
    if schedule["name"] == "oneshot":
        return [float(sparsity)]
    if schedule["name"] == "iterative":
        return iterative_targets(float(schedule["amount"]), int(schedule["rounds"]), sparsity)
    raise UserError(f"unknown schedule {schedule['name']!r}: use oneshot or iterative")
