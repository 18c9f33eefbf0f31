"""rdprune.methods.rd.additivity: joint vs single-layer distortions, checked by hand on a small MLP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rdprune.methods.rd.additivity import agreement, measure, num_forwards, random_subsets


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 5))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return model, layers, torch.randn(40, 6)


def by_hand(model, indices, sparsity, inputs):
    """Mean and worst distortion after zeroing the k smallest |w| of each chosen layer, by hand."""
    pruned = copy.deepcopy(model)
    linears = [m for m in pruned if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i in indices:
            w = linears[i].weight
            k = int(np.floor(sparsity * w.numel() + 0.5))
            flat = w.view(-1)
            flat[np.argsort(flat.abs().numpy(), kind="stable")[:k].copy()] = 0.0
        err = (model(inputs).double() - pruned(inputs).double()) ** 2
    per_sample = err.mean(dim=1)
    return float(per_sample.mean()), float(per_sample.max())


def test_joint_and_singles_match_hand_computation(mlp):
    model, layers, x = mlp
    before = copy.deepcopy(model.state_dict())
    rows = measure(model, layers, x, [("subset", (0, 2)), ("pair", (1, 2))], [0.3, 0.7],
                   batch_size=16, progress=False)
    assert len(rows) == 4
    for row in rows:
        idx = tuple(int(i) for i in row["layers"].split(";"))
        s = row["sparsity"]
        mean, worst = by_hand(model, idx, s, x)
        assert row["joint"] == pytest.approx(mean, rel=1e-5)
        assert row["joint_worst"] == pytest.approx(worst, rel=1e-5)
        singles = [by_hand(model, (i,), s, x) for i in idx]
        assert row["sum_single"] == pytest.approx(sum(m for m, _ in singles), rel=1e-5)
        assert row["sum_single_worst"] == pytest.approx(sum(w for _, w in singles), rel=1e-5)
        assert row["joint"] > 0
    # the model comes back bit-identical
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_single_layer_joint_equals_sum_exactly(mlp):
    model, layers, x = mlp
    rows = measure(model, layers, x, [("single", (i,)) for i in range(3)], [0.1, 0.5, 1.0],
                   progress=False)
    for row in rows:
        assert row["joint"] == row["sum_single"]
        assert row["joint_worst"] == row["sum_single_worst"]


def test_subsets_forwards_and_agreement():
    subsets = random_subsets(34, [3, 5, 10, 34], 20, seed=0)
    assert len(subsets) == 61 and subsets == random_subsets(34, [3, 5, 10, 34], 20, seed=0)
    assert subsets[-1] == tuple(range(34))
    assert all(len(set(s)) == len(s) and list(s) == sorted(s) for s in subsets)
    assert len(random_subsets(3, [2], 20, seed=0)) == 3  # only 3 distinct pairs exist
    assert num_forwards([(0, 1), (1, 2)], [0.1, 0.5]) == 1 + 2 * (3 + 2)
    stats = agreement(np.array([1.0, 2.0, 4.0]), np.array([2.0, 4.0, 8.0]))
    assert stats["pearson_log"] == pytest.approx(1.0) and stats["median_ratio"] == 2.0


class Requeued(Exception):
    """Stands for submitit's handler, which requeues the job and exits."""


def test_a_stop_signal_ends_after_the_measurement_in_flight_and_the_rerun_resumes(
        mlp, tmp_path, monkeypatch):
    import os
    import signal

    from rdprune.methods.rd import additivity

    model, layers, x = mlp
    subsets, sparsities = [("pair", (0, 1)), ("pair", (1, 2))], [0.3, 0.7]
    reference = measure(model, layers, x, subsets, sparsities, progress=False)
    forwards, signalled = [], []
    predict = additivity.predict

    def counting(*args, **kwargs):  # every forward over the inputs, the reference included
        forwards.append(1)
        if len(forwards) == 4 and not signalled:  # in the 3rd measurement: a SLURM warning
            signalled.append(1)
            os.kill(os.getpid(), signal.SIGUSR2)
        return predict(*args, **kwargs)

    def requeue(signum, frame):
        raise Requeued

    monkeypatch.setattr(additivity, "predict", counting)
    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(Requeued):
            measure(model, layers, x, subsets, sparsities, progress=False, cache_dir=tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(list(tmp_path.glob("additivity/*/*.pt"))) == 3  # the one in flight was stored
    forwards.clear()
    rows = measure(model, layers, x, subsets, sparsities, progress=False, cache_dir=tmp_path)
    assert rows == reference
    # the reference pass, then what was missing: (2 singles + 2 pairs) x 2 sparsities - 3 stored
    assert len(forwards) == 1 + num_forwards([(0, 1), (1, 2)], sparsities) - 1 - 3


def test_a_subset_of_many_layers_is_cached_under_a_short_name(tmp_path):
    """84 linears (the 12-block LM's) in one subset: the joined indices would pass the 255-byte
    file-name limit; the measurement is stored under a digest and read back equal."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(84)])
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    x = torch.randn(8, 4)
    subsets = [("all", tuple(range(84)))]
    fresh = measure(model, layers, x, subsets, [0.5], progress=False)
    stored = measure(model, layers, x, subsets, [0.5], progress=False, cache_dir=tmp_path)
    names = [p.name for p in tmp_path.glob("additivity/*/*.pt")]
    assert stored == fresh and max(len(n) for n in names) < 120
    assert sum(n.startswith("84layers-") for n in names) == 1
    again = measure(model, layers, x, subsets, [0.5], progress=False, cache_dir=tmp_path)
    assert again == fresh
