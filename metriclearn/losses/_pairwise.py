"""Squared Euclidean distances between two sets of row vectors (shared by the distance-based losses).

Example
-------
>>> import torch
>>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0]]))
tensor([[ 0.],
        [25.]])
"""

from __future__ import annotations

from torch import Tensor


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i − b_j||²`` for every pair of rows, as one matrix product (no (A, B, D) temporary).

    Uses ``||a||² + ||b||² − 2 a·b`` clamped at 0 (round-off can make it slightly negative); the
    gradient is that of the exact expression, so it is smooth even for duplicate rows.
    """
    a_sq = a.pow(2).sum(dim=1, keepdim=True)  # (A, 1)
    b_sq = b.pow(2).sum(dim=1).unsqueeze(0)  # (1, B)
    return (a_sq + b_sq).addmm(a, b.T, alpha=-2.0).clamp(min=0.0)  # (A, B)
