"""Complement entropy of Complement Objective Training (COT, Chen et al., ICLR 2019).

For logits ``z_i`` (one row of K class scores), ``ŷ_i = softmax(z_i)`` and ground truth ``g = y_i``,
the *complement distribution* spreads the mass that is not on ``g`` over the other classes:

    p̃_ij = ŷ_ij / (1 − ŷ_ig)                        for j ≠ g   (normalised by 1 − ŷ_g)
    H_i  = −Σ_{j≠g} p̃_ij log p̃_ij                   (complement entropy, 0 ≤ H_i ≤ log(K − 1))
    loss = −(1/B) Σ_i H_i / K

COT *maximises* the complement entropy (it flattens the wrong classes, so no wrong class stands
out), so the loss to minimise is its negative. The scale follows the authors' implementation
(github.com/henry8527/COT, ``ComplementEntropy``: the sum of ``p̃ log p̃`` divided by the batch size
and by the number of classes K — not by K − 1, nor by log(K − 1)); eq. (2) of the paper has the
1/N but not the 1/K. The official code adds 1e-7 to 1 − ŷ_g and 1e-10 inside the log; this one
needs neither: ŷ_ij / (1 − ŷ_ig) is exactly the softmax of the non-target logits, so

    H_i = logsumexp_{j≠g} z_ij − Σ_{j≠g} p̃_ij z_ij,

which is exact and finite even when ŷ_g rounds to 1. It also shows that the loss does not depend on
the target logit at all: COT pairs it with cross-entropy (alternating steps, or a sum).

Reference: H.-Y. Chen, P.-H. Wang, C.-H. Liu, S.-C. Chang, J.-Y. Pan, Y.-T. Chen, W. Wei, D.-C. Juan,
"Complement Objective Training", ICLR 2019.

Example
-------
>>> import torch
>>> loss = ComplementEntropyLoss(num_classes=3)
>>> loss(torch.tensor([[4.0, 1.0, 1.0]]), torch.tensor([0]))  # wrong classes flat: −log(2)/3
tensor(-0.2310)
>>> loss(torch.tensor([[4.0, 9.0, 1.0]]), torch.tensor([0]))  # one wrong class stands out
tensor(-0.0010)
"""

from __future__ import annotations

import torch
from torch import Tensor

from metriclearn._checks import check_positive_int
from metriclearn.losses.base import MetricLoss


class ComplementEntropyLoss(MetricLoss):
    """Negative normalised complement entropy of the softmax of ``logits (B, K)`` (COT).

    Parameters
    ----------
    num_classes:
        K ≥ 2, the width of the logits; labels must lie in ``[0, K)``.
    reduction:
        ``"mean"`` (default), ``"sum"`` or ``"none"``, see :class:`~metriclearn.losses.base.MetricLoss`.

    Notes
    -----
    Call it as ``loss(logits, labels)``: the first argument is the output of a linear classification
    head (B, K), not an embedding. Every sample counts (there is no positive to miss), so a batch of
    one sample or of one class is fine. With K = 2 the complement holds one class and the loss is 0.
    """

    def __init__(self, num_classes: int, reduction: str = "mean") -> None:
        num_classes = check_positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 for a complement distribution, got {num_classes}")
        super().__init__(reduction=reduction, num_classes=num_classes)

    def validate(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits, labels = super().validate(embeddings, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} columns but num_classes={self.num_classes}; "
                "ComplementEntropyLoss takes the (B, K) logits of a classification head, not embeddings"
            )
        return logits, labels

    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = embeddings  # (B, K)
        target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)  # (B, K)
        complement = logits.masked_fill(target, float("-inf"))  # (B, K) the target drops out
        log_norm = complement.logsumexp(dim=1)  # (B,)
        probs = (complement - log_norm.unsqueeze(1)).exp()  # (B, K) p̃, exactly 0 at the target
        entropy = log_norm - (probs * logits.masked_fill(target, 0.0)).sum(dim=1)  # (B,)
        return entropy / -logits.shape[1], torch.ones_like(labels, dtype=torch.bool)  # K = num_classes (validated)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {super().extra_repr()}"
