"""Content-addressed, crash-safe caching of expensive stages.

Every expensive stage (dense training, RD profiling, allocation, fine-tuning) stores its result
under ``<cache_dir>/<stage>/<key>.pt``, where ``key`` is a digest of *everything the result depends
on* (configs, weights, masks, calibration data, ...), so a changed input can never silently reuse a
stale result, and a killed or requeued job picks up every stage that already finished.

Files are written to a temporary file in the same directory and renamed (atomic on POSIX), and
carry a checksum of their payload: a truncated or corrupted file is detected on load, reported in
one warning line and recomputed. A per-file lock (``fcntl.flock``) makes concurrent jobs that need
the same result wait for the one computing it instead of computing it twice.

A cache can be shared by a lab: files get the permissions the umask allows (``0o666 & ~umask``,
e.g. group-readable under umask 002), and a cache directory this process cannot write (a
read-only copy of finished results) still serves every result it holds; only a missing result is
an error (:class:`ReadOnlyCacheError`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import xxhash
from omegaconf import DictConfig, ListConfig, OmegaConf

from rdprune.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAGIC = b"RDPRUNE-CACHE-2\n"
_DIGEST_BYTES = 16  # xxh3-128 of the payload


def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` into hash ``h`` unambiguously (type-tagged, length-prefixed)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, float) and not math.isfinite(obj):
        h.update(f"F{obj!r}".encode())
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        s = json.dumps(obj)
        h.update(f"S{len(s)}:{s}".encode())
    else:
        raise TypeError(f"cannot hash object of type {type(obj).__name__}")


def digest(*parts: Any) -> str:
    """Stable hex digest of configs, tensors, arrays, mappings and plain values.

    Tensors are hashed by dtype, shape and exact bytes; mappings in sorted-key order; configs
    after resolving interpolations. Two calls agree iff their inputs are equal.
    """
    h = xxhash.xxh3_128()  # fast non-cryptographic 128-bit hash: ~1 GB in 0.2 s
    _feed(h, list(parts))
    return h.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """Digest of a module's parameters and buffers (its ``state_dict``)."""
    return digest(dict(module.state_dict()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` atomically: temp file in the same directory, fsync, rename.

    The file gets ``0o666 & ~umask`` (``mkstemp`` alone would make it private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(xxhash.xxh3_128(payload).digest())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class CorruptCacheError(Exception):
    """A cache file exists but its checksum or contents are invalid."""


def load(path: str | os.PathLike) -> Any:
    """Load a file written by :func:`save`; raise CorruptCacheError if it does not verify."""
    data = Path(path).read_bytes()
    head = len(_MAGIC) + _DIGEST_BYTES
    if len(data) < head or not data.startswith(_MAGIC):
        raise CorruptCacheError(f"{path}: not a cache file or truncated header")
    payload = data[head:]
    if xxhash.xxh3_128(payload).digest() != data[len(_MAGIC) : head]:
        raise CorruptCacheError(f"{path}: checksum mismatch (truncated or corrupted)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCacheError(f"{path}: {e}") from e


def try_load(path: str | os.PathLike) -> Any | None:
    """Load ``path`` if it exists and verifies; a bad file is reported, removed, and ignored."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path)
    except CorruptCacheError as e:
        log.warning("corrupted cache file, recomputing: %s", e)
        with contextlib.suppress(OSError):  # gone already, or a read-only cache
            path.unlink()
        return None


class ReadOnlyCacheError(UserError):
    """A result is missing from a cache directory this process cannot write."""


#: errors that mean "this process may not write here" (not a bug, not a full disk)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def writable(directory: str | os.PathLike) -> bool:
    """Whether files can be created in ``directory``, probed with a real (removed) file.

    A missing directory is probed in its nearest existing ancestor (where it would be created),
    so the probe leaves nothing behind.
    """
    probe = Path(directory).expanduser().absolute()
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    if not probe.is_dir():
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".rdprune-probe."):
            pass
    except OSError:
        return False
    return True


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock tied to ``path`` (a sibling ``.lock`` file) for the block.

    Yields True with the lock held, or False when the directory is read-only (nothing can be
    written there, so there is nothing to serialise).
    """
    lock_path = Path(f"{path}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")  # noqa: SIM115 - closed below
    except OSError as e:
        if e.errno not in _READ_ONLY:
            raise
        yield False
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached(path: str | os.PathLike, compute: Callable[[], T]) -> tuple[T, bool]:
    """Return the result stored at ``path``, or compute, store and return it.

    Concurrent callers with the same ``path`` serialise on a lock, so the result is computed once.
    In a directory this process cannot write, a stored result is served as it is.

    Returns:
        ``(result, hit)`` with ``hit`` True when it came from disk.

    Raises:
        ReadOnlyCacheError: the result is missing and the directory is read-only.
    """
    with locked(path) as can_write:
        obj = try_load(path)
        if obj is not None:
            return obj, True
        if not can_write:
            raise ReadOnlyCacheError(
                f"{path} is not in the cache and its directory is read-only: point "
                "paths.cache_dir (RDPRUNE_CACHE_DIR) at a writable directory"
            )
        obj = compute()
        save(path, obj)
        return obj, False
