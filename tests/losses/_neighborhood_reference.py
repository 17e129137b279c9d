"""Slow, obviously-correct references for the losses (float64 autograd, plain-Python log-sum-exp)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def logsumexp(values: list[float]) -> float:
    """log Σ exp(v), shifted by the maximum (plain Python floats)."""
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    if distance == "sqeuclidean":
        return ((a - b) ** 2).sum()
    return 1.0 - torch.dot(a, b) / (a.norm() * b.norm())


def loop_loss(
    x: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    distance: str = "sqeuclidean",
    refs: Tensor | None = None,
    ref_labels: Tensor | None = None,
    exclude: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Per-anchor Python loop: -log of the softmax mass on same-label neighbours (j != i, refs not excluded)."""
    refs = x.new_zeros((0, x.shape[1])) if refs is None else refs
    ref_labels = labels.new_zeros(0) if ref_labels is None else ref_labels
    values = []
    for i in range(x.shape[0]):
        logits, positive = [], []
        for j in range(x.shape[0]):
            if j != i:
                logits.append(-_distance(x[i], x[j], distance) / temperature)
                positive.append(bool(labels[j] == labels[i]))
        for m in range(refs.shape[0]):
            if exclude is None or not bool(exclude[i, m]):
                logits.append(-_distance(x[i], refs[m], distance) / temperature)
                positive.append(bool(ref_labels[m] == labels[i]))
        if not any(positive):
            values.append(None)
            continue
        stacked = torch.stack(logits)
        mask = torch.tensor(positive)
        values.append(torch.logsumexp(stacked, 0) - torch.logsumexp(stacked[mask], 0))
    counted = [v for v in values if v is not None]
    if reduction == "none":
        return torch.stack([x.sum() * 0 if v is None else v for v in values])
    total = sum(counted, x.sum() * 0)
    return total if reduction == "sum" else total / max(len(counted), 1)


def nca_loss(x: Tensor, labels: Tensor) -> Tensor:
    """NCA exactly as Goldberger et al. (2004) write it: p_ij, p_i = sum over C_i, mean of -log p_i."""
    terms = []
    for i in range(x.shape[0]):
        others = [j for j in range(x.shape[0]) if j != i]
        weight = {j: torch.exp(-((x[i] - x[j]) ** 2).sum()) for j in others}
        norm = sum(weight.values())
        same = [j for j in others if labels[j] == labels[i]]
        if same:
            terms.append(-torch.log(sum(weight[j] / norm for j in same)))
    return torch.stack(terms).mean()


def dense_loss(x: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Vectorised float64 sqeuclidean reference (plain autograd) for batches too big for the loop."""
    b = x.shape[0]
    logits = -torch.cdist(x, x).pow(2) / temperature  # (B, B)
    eye = torch.eye(b, dtype=torch.bool)
    logits = logits.masked_fill(eye, -math.inf)
    same = (labels[:, None] == labels[None, :]) & ~eye
    pos = logits.masked_fill(~same, -math.inf)
    keep = same.any(1)
    return (torch.logsumexp(logits, 1) - torch.logsumexp(pos, 1))[keep].mean()
