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


def squared_distances(a: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """``scale · ||a_i − b_j||²`` for every pair of rows, as one matrix product (no (A, B, D) temporary).

    Uses ``scale · (||a||² + ||b||² − 2 a·b)`` clamped at 0 (round-off can push it across); the gradient
    is that of the exact expression, so it is smooth even for duplicate rows. ``scale`` (e.g. ``−1/T``
    for logits) is folded into the product, saving a pass over the (A, B) result.
    """
    a_sq = a.pow(2).sum(dim=1, keepdim=True) * scale  # (A, 1)
    b_sq = b.pow(2).sum(dim=1).unsqueeze(0) * scale  # (1, B)
    out = (a_sq + b_sq).addmm(a, b.T, alpha=-2.0 * scale)  # (A, B)
    return out.clamp(min=0.0) if scale > 0 else out.clamp(max=0.0)
