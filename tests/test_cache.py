"""Caches: keys follow content, writes are atomic, corruption is detected and recomputed."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from rdprune import cache


def test_digest_follows_content():
    a = {"w": torch.ones(3), "cfg": {"lr": 0.1, "steps": [1, 2]}}
    reordered = {"cfg": {"steps": [1, 2], "lr": 0.1}, "w": torch.ones(3)}
    assert cache.digest(a) == cache.digest(reordered)
    changed = [
        {"w": torch.ones(3).double(), "cfg": a["cfg"]},
        {"w": torch.tensor([1.0, 1.0, 1.0 + 1e-7]), "cfg": a["cfg"]},
        {"w": torch.ones(1, 3), "cfg": a["cfg"]},
        {"w": torch.ones(3), "cfg": {"lr": 0.1, "steps": [2, 1]}},
        {"w": torch.ones(3), "cfg": {"lr": "0.1", "steps": [1, 2]}},
    ]
    assert len({cache.digest(a), *map(cache.digest, changed)}) == 1 + len(changed)
    assert cache.digest(np.zeros(2)) != cache.digest(np.zeros(2, dtype=np.float32))
    assert cache.digest(torch.tensor(3)) != cache.digest(torch.tensor(4))  # 0-dim tensors


def test_round_trip_and_corruption(tmp_path, caplog):
    path = tmp_path / "x.pt"
    cache.save(path, {"a": torch.arange(10)})
    assert torch.equal(cache.load(path)["a"], torch.arange(10))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        assert cache.try_load(path) is None
    assert "corrupted cache file" in caplog.text and not path.exists()
    cache.save(path, {"a": torch.arange(10)})
    flipped = bytearray(path.read_bytes())
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(cache.CorruptCacheError, match="checksum"):
        cache.load(path)


def test_cached_recomputes_corrupted_and_reuses_valid(tmp_path):
    path, calls = tmp_path / "s.pt", []

    def compute():
        calls.append(1)
        return len(calls)

    assert cache.cached(path, compute) == (1, False)
    assert cache.cached(path, compute) == (1, True)
    path.write_bytes(b"garbage")
    assert cache.cached(path, compute) == (2, False)


def test_failed_write_leaves_no_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.save(tmp_path / "y.pt", Unpicklable())
    assert list(tmp_path.iterdir()) == []


def test_concurrent_callers_compute_once(tmp_path):
    path, calls, results = tmp_path / "c.pt", [], []
    started = threading.Event()

    def compute():
        calls.append(1)
        started.set()
        threading.Event().wait(0.3)
        return "value"

    threads = [threading.Thread(target=lambda: results.append(cache.cached(path, compute)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False, True, True]
