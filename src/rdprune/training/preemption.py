"""Preemption-safe training stages: a stop signal ends at a checkpoint of the last whole step.

A scheduler warns a job before it stops it: SLURM sends SIGUSR2 ``signal_delay_s`` seconds
before the time limit when the job was submitted by submitit (``--signal=USR2@...``), SIGTERM when
it is preempted; a user presses Ctrl-C (SIGINT). While a training stage runs (inside
:class:`Guard`), such a signal is only *recorded*: the training loop finishes the step in flight
(a signal can never leave a half-updated optimizer state behind), writes its checkpoint, then
calls :meth:`Guard.hand_on`, which passes the signal to the handler that was installed before the
stage: submitit's (checkpoints the Hydra job, requeues it with ``scontrol requeue`` and exits),
Python's (``KeyboardInterrupt``), or the default action (the process ends by the signal, as it
would have without the guard). The requeued or rerun job resumes from that checkpoint and so loses
at most the step that was in flight.

If the handler returns instead (submitit only logs SIGTERM: SLURM kills the job after its grace
time), the stage goes on and checkpoints after every further step, so the kill that follows still
costs at most one step. A second identical signal before the stage has handed on the first (Ctrl-C
pressed twice) is handed on at once, without waiting for the step. Signals that were ignored
(``SIG_IGN``) stay ignored; outside the main thread no handler can be installed and the guard does
nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: the signals that stop a training stage at its next step boundary
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StageInterrupted(Exception):
    """A training stage stopped at a step boundary on a signal (raised in DDP workers only)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)  # args = (signum,): pickles to the parent as it is
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class Guard:
    """Defers stop signals to the next step boundary for the duration of a ``with`` block.

    Args:
        signals: the signals to defer.
        on_signal: called (in the signal handler) with the signal number when one arrives, e.g.
            to forward it to worker processes.
        escalate: hand a repeated signal on at once (a user's second Ctrl-C). Worker processes,
            which may get a signal both from the scheduler and from their parent, pass False.
    """

    def __init__(
        self,
        signals: Sequence[int] = STOP_SIGNALS,
        on_signal: Callable[[int], None] | None = None,
        escalate: bool = True,
    ) -> None:
        self.signals, self.on_signal, self.escalate = tuple(signals), on_signal, escalate
        self.previous: dict[int, Any] = {}
        self.pending: list[int] = []
        self.draining = False  # a handed-on signal's handler returned: the end is near

    def __enter__(self) -> Guard:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal() works in the main thread only
        for signum in self.signals:
            previous = signal.getsignal(signum)
            # SIG_IGN: nobody wants it; None: a handler installed outside Python, not restorable
            if previous is signal.SIG_IGN or previous is None:
                continue
            self.previous[signum] = previous
            signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        # a signal still pending here is the owner's to hand on (or, in a worker, to drop)
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum in self.pending and self.escalate:
            self._call_previous(signum, frame)  # asked twice: no waiting for the step
            return
        if signum not in self.pending:
            self.pending.append(signum)
        if self.on_signal is not None:
            self.on_signal(signum)

    def hand_on(self) -> None:
        """Pass the recorded signals to the handlers installed before the guard, in order.

        Called once the checkpoint is written. Whatever those handlers raise (``SystemExit``
        after a requeue, ``KeyboardInterrupt``) propagates; if they all return, the stage goes
        on in draining mode (:attr:`draining`: a checkpoint after every step).
        """
        pending, self.pending = self.pending, []
        for signum in pending:
            log.warning("%s: step finished, checkpoint written; handing the signal on",
                        signal.Signals(signum).name)
            self._call_previous(signum, None)
        self.draining = self.draining or bool(pending)

    def _call_previous(self, signum: int, frame: FrameType | None) -> None:
        # a signal this guard did not take (ignored here, reported by a worker): nothing to do
        previous = self.previous.get(signum, signal.SIG_IGN)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # the default action (terminate, for these signals) as if there had been no guard
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
