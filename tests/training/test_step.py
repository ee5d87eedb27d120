"""Tests of crossreid.training.step: positives within PK batches."""

from __future__ import annotations

import pytest
import torch

from crossreid.errors import TrainingError
from crossreid.training.step import positive_permutation


@pytest.mark.parametrize("pids", [[0, 0, 1, 1], [3, 3, 3, 3, 7, 7, 7, 7], [5, 2, 5, 2, 2, 5]])
def test_positive_permutation_pairs_each_anchor_with_another_image_of_its_identity(pids):
    pids = torch.tensor(pids)
    for seed in range(5):
        perm = positive_permutation(pids, torch.Generator().manual_seed(seed))
        assert torch.equal(pids[perm], pids)
        assert not torch.any(perm == torch.arange(len(pids)))
        assert sorted(perm.tolist()) == list(range(len(pids)))


def test_positive_permutation_needs_two_images_per_identity():
    with pytest.raises(TrainingError, match="identity 9 has a single image"):
        positive_permutation(torch.tensor([1, 1, 9]))
