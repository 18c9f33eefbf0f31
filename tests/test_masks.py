"""Magnitude masks: the k smallest magnitudes go, zeros first, ties by position; exact counts."""

from __future__ import annotations

import pytest
import torch

from rdprune.pruning.masks import (
    MaskViolationError,
    check_masks,
    magnitude_mask,
    magnitude_order,
    num_pruned,
)


def reference_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The definition: remove the first k entries of a stable sort by magnitude."""
    k = num_pruned(weight.numel(), sparsity)
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[magnitude_order(weight)[:k]] = False
    return mask.view_as(weight)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_linear_time_mask_equals_the_stable_sort_definition(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    # few distinct values: many ties, zeros and sign flips (|w| ties across signs)
    w = torch.randint(-4, 5, (7, 5, 3), generator=g).float() / 4
    mask = magnitude_mask(w, sparsity)
    assert torch.equal(mask, reference_mask(w, sparsity))
    assert int((~mask).sum()) == num_pruned(w.numel(), sparsity)


def test_zeros_go_first_and_rounding():
    w = torch.tensor([0.0, 3.0, -1.0, 0.0, 2.0])
    assert magnitude_mask(w, 0.4).tolist() == [False, True, True, False, True]
    assert num_pruned(5, 0.5) == 3 and num_pruned(5, 0.1) == 1 and num_pruned(10, 0.05) == 1


def test_check_masks_catches_a_revived_weight():
    layer = torch.nn.Linear(4, 3)
    mask = magnitude_mask(layer.weight, 0.5)
    with torch.no_grad():
        layer.weight.mul_(mask)
    check_masks({"fc": layer}, {"fc": mask})
    with torch.no_grad():
        layer.weight[~mask] = 1.0
    with pytest.raises(MaskViolationError, match="6 pruned weights of layer fc"):
        check_masks({"fc": layer}, {"fc": mask})
