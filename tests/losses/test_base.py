"""The MetricLoss template: validate → compute → reduce → update, with optional sample ids."""

from __future__ import annotations

import pytest
import torch

from metriclearn.losses import CacheLoss, MetricLoss, NeighborhoodSoftmaxLoss


class _Recorder(MetricLoss):
    """Per-anchor loss = the anchor's id (or its label without ids); records what update() saw."""

    uses_ids = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def compute(self, embeddings, labels, ids=None):
        values = (ids if ids is not None else labels).to(embeddings.dtype) + 0 * embeddings.sum(1)
        return values, labels > 0

    def update(self, embeddings, labels, ids):
        self.seen.append((labels.tolist(), None if ids is None else ids.tolist()))


def test_ids_reach_compute_and_update_after_validation() -> None:
    loss = _Recorder()
    e = torch.zeros(4, 2)
    labels = torch.tensor([0, 1, 2, 2])
    assert loss(e, labels, torch.tensor([10, 20, 30, 40])).item() == pytest.approx((20 + 30 + 40) / 3)
    assert loss(e, labels).item() == pytest.approx((1 + 2 + 2) / 3)
    assert loss.seen == [([0, 1, 2, 2], [10, 20, 30, 40]), ([0, 1, 2, 2], None)]
    with pytest.raises(ValueError, match="ids must be non-negative sample ids, got -1"):
        loss(e, labels, torch.tensor([0, 1, -1, 3]))
    with pytest.raises(ValueError, match="ids"):
        loss(e, labels, torch.tensor([0, 1, 2]))


def test_losses_without_ids_ignore_them_and_give_the_same_value() -> None:
    torch.manual_seed(0)
    e, labels = torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = NeighborhoodSoftmaxLoss()
    assert torch.equal(loss(e, labels, torch.arange(8)), loss(e, labels))


def test_cache_loss_excludes_an_anchors_own_cached_copy_through_the_base_forward() -> None:
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 0, 1])
    ids = torch.arange(4)
    loss = CacheLoss(dim=2, size=8)
    loss(e, labels, ids)  # fills the cache with these four samples
    assert loss.cache_ids[:4].tolist() == [0, 1, 2, 3]
    loss.eval()
    # the same samples again: with ids each anchor skips its own copy, so the result is that of a
    # batch + cache without self-matches, i.e. larger than when the (perfect) own copy counts
    assert loss(e, labels, ids) > loss(e, labels)
