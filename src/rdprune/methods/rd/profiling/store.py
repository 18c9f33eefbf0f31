"""Resumable profiling: each layer's curve is stored as soon as it is measured.

Profiling one model can take tens of minutes (ResNet-50 on 256 ImageNet images, a ViT, a language
model, any model on a CPU partition), longer than a preemptible job may run. So the curves of one
curve set (one model state, calibration set, grid, reduction: one content hash, ``key``) are kept
per layer under ``<cache_dir>/curves/<key>/<layer index>.pt`` (atomic, checksummed:
:func:`rdprune.cache.save`) while they are measured, and assembled into ``<key>.pt`` when the set is
complete. A killed job loses at most the layer in flight; a stop signal (SIGUSR2 before a SLURM
time limit, SIGTERM on preemption, Ctrl-C) ends profiling after the layer in flight, once its row
is stored, and is then handed on (:mod:`rdprune.training.preemption`: submitit requeues the job, Ctrl-C
raises KeyboardInterrupt), so a rerun or requeue measures only the missing layers.

Several processes may profile the same set at once (a SLURM array of shards, two jobs of a sweep
that share a dense model): a layer is measured under a per-layer lock taken without waiting, so a
layer another process is measuring is skipped and picked up from the store afterwards (or measured
here if that process died). A shard (``rd.shards`` = N, ``rd.shard`` = k) measures only its share of
the layers, balanced by their estimated cost (:func:`shard_layers`). Rows do not depend on which
process measured them: the curves equal a single job's bitwise (same device and threads).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rdprune import cache
from rdprune.training.preemption import Guard

log = logging.getLogger(__name__)

#: ``(layer index, row, seconds)`` -> None: called after each measured layer
OnRow = Callable[[int, np.ndarray, float], None]


def shard_layers(costs: Sequence[float], shards: int, shard: int) -> list[int]:
    """The layers (indices) shard ``shard`` of ``shards`` measures: a greedy balance of ``costs``.

    Layers are dealt in decreasing cost (ties by index) to the shard with the least cost so far
    (ties by shard number): every shard computes the same partition, whatever order they start in.
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    load = [0.0] * shards
    owner = {}
    for li in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        k = min(range(shards), key=lambda j: (load[j], j))
        owner[li] = k
        load[k] += costs[li]
    return sorted(li for li, k in owner.items() if k == shard)


class CurveStore:
    """The per-layer rows of one curve set, and the assembled set.

    Args:
        root: the ``curves`` stage folder of the cache (None: nothing is stored; every layer is
            measured in this process, as without a cache).
        key: the curve set's content hash.
        num_layers: number of rows of the set.
    """

    def __init__(self, root: Path | None, key: str, num_layers: int) -> None:
        self.root, self.key, self.num_layers = root, key, num_layers
        self.folder = root / key if root is not None else None

    @property
    def path(self) -> Path | None:
        """The assembled set's file."""
        return self.root / f"{self.key}.pt" if self.root is not None else None

    def assembled(self) -> dict[str, Any] | None:
        """The complete set (``curves``, ``seconds``), if it was assembled before."""
        return cache.try_load(self.path) if self.path is not None else None

    def rows(self) -> dict[int, tuple[np.ndarray, float]]:
        """Rows stored so far: ``{layer index: (row, seconds)}``."""
        if self.folder is None or not self.folder.is_dir():
            return {}
        out = {}
        for li in range(self.num_layers):
            item = cache.try_load(self.folder / f"{li}.pt")
            if item is not None:
                out[li] = (np.asarray(item["row"], dtype=np.float64), float(item["seconds"]))
        return out

    def put(self, li: int, row: np.ndarray, seconds: float) -> None:
        if self.folder is not None:
            cache.save(self.folder / f"{li}.pt", {"row": np.asarray(row), "seconds": seconds})

    @contextlib.contextmanager
    def claim(self, li: int):
        """Yield True while this process holds layer ``li``'s lock (False: another process has it,
        or the store is read-only: then nothing can be written anyway, and True is yielded)."""
        if self.folder is None:
            yield True
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            f = open(self.folder / f"{li}.lock", "a+")  # noqa: SIM115 - closed below
        except OSError:
            yield True
            return
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def wait(self, li: int) -> None:
        """Block until no process holds layer ``li``'s lock."""
        if self.folder is None:
            return
        with open(self.folder / f"{li}.lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def assemble(self, rows: dict[int, tuple[np.ndarray, float]]) -> dict[str, Any]:
        """Store the complete set (every row present) and remove the per-layer files."""
        curves = np.stack([rows[li][0] for li in range(self.num_layers)])
        result = {"curves": curves, "seconds": sum(s for _, s in rows.values())}
        if self.path is not None and cache.writable(self.root):
            cache.save(self.path, result)
            for li in range(self.num_layers):
                for suffix in (".pt", ".lock"):
                    (self.folder / f"{li}{suffix}").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()
        return result


class Sink:
    """What the curve functions ask before and tell after each layer (``sink=`` argument).

    :meth:`take` says whether to measure a layer here; :meth:`put` stores its row, then hands
    on a stop signal that arrived meanwhile (the guard must be entered by the caller).
    """

    def __init__(self, store: CurveStore, wanted: Collection[int], guard: Guard) -> None:
        self.store, self.wanted, self.guard = store, set(wanted), guard
        self.measured: list[int] = []
        self._held: dict[int, contextlib.ExitStack] = {}

    def take(self, li: int) -> bool:
        if li not in self.wanted:
            return False
        stack = contextlib.ExitStack()
        if not stack.enter_context(self.store.claim(li)):
            stack.close()
            return False  # another process is measuring it
        self._held[li] = stack
        return True

    def put(self, li: int, row: np.ndarray, seconds: float) -> None:
        try:
            self.store.put(li, row, seconds)
        finally:
            self._held.pop(li).close()
        self.measured.append(li)
        if self.guard.pending:
            log.warning("RD profiling: stopped after layer %d of %d (%d measured here, each "
                        "stored)", li + 1, self.store.num_layers, len(self.measured))
            self.guard.hand_on()

    def release(self) -> None:
        """Drop the lock of a layer whose measurement failed."""
        for stack in self._held.values():
            stack.close()
        self._held.clear()


def profile(
    store: CurveStore, measure: Callable[[Sink], None], wanted: Collection[int] | None = None
) -> tuple[dict[int, tuple[np.ndarray, float]], list[int]]:
    """Measure the rows of ``wanted`` layers (default: all) that the store lacks.

    Args:
        store: where rows are kept.
        measure: runs the curve function with the given sink (it measures the layers the sink
            lets it and reports each row to it).
        wanted: the layers this process is responsible for (a shard's share).

    Returns:
        ``(rows, measured)``: every stored row of the set (all of ``wanted`` at least), and the
        layers measured by this process.
    """
    wanted = set(range(store.num_layers)) if wanted is None else set(wanted)
    measured: list[int] = []
    start = time.perf_counter()
    while True:
        rows = store.rows()
        missing = wanted - set(rows)
        if not missing:
            break
        with Guard() as guard:
            sink = Sink(store, missing, guard)
            try:
                measure(sink)
            finally:
                sink.release()
                measured += sink.measured
        if store.folder is None:  # nothing stored: the sink's rows are the result
            raise RuntimeError("profile() needs a store with a folder")
        for li in missing - set(sink.measured):  # held by another process: wait for it
            store.wait(li)
    if measured:
        log.info("RD curves: %d of %d layers measured here in %.1fs, %d from the store",
                 len(measured), len(wanted), time.perf_counter() - start,
                 len(wanted) - len(measured))
    return rows, measured
