"""Neighbourhood-softmax loss: NCA (Goldberger et al. 2004) over a batch, fused and stable."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metriclearn._checks import check_bool, check_choice, check_positive_float
from metriclearn.losses._softmax_kernel import NeighborhoodSoftmaxFunction, label_codes
from metriclearn.losses.base import MetricLoss

DISTANCES = ("sqeuclidean", "cosine")


class NeighborhoodSoftmaxLoss(MetricLoss):
    r"""Each anchor's softmax over the other batch members by -distance/T; -log of the same-label mass.

    For anchor :math:`i` with label :math:`y_i`,

    .. math::

        p_{ij} = \frac{\exp(-d(x_i, x_j) / T)}{\sum_{k \ne i} \exp(-d(x_i, x_k) / T)}, \qquad
        \ell_i = -\log \sum_{j \ne i,\; y_j = y_i} p_{ij},

    and the loss is the mean of :math:`\ell_i` over the anchors that have at least one positive
    (``reduction="sum"`` adds them, ``"none"`` returns the (B,) values, 0 where none). With
    ``distance="sqeuclidean"`` (:math:`d = \lVert x_i - x_j \rVert^2`) and ``T=1`` this is exactly
    NCA; ``"cosine"`` uses :math:`d = 1 - \cos(x_i, x_j)`.

    **Pair data** (``sides`` given: 0 for an anchor, 1 for a positive or a negative; the
    :class:`~metriclearn.training.Trainer` passes them for pair data, whose labels are the pair ids):
    by default every other text of the batch is a candidate — the other anchors too — which is
    SimCLR's NT-Xent. With ``same_side=False`` a row is scored only against the batch rows of the
    other side: an anchor against the positives and negatives, a positive against the anchors — the
    symmetric InfoNCE of CLIP, i.e. sentence-transformers' ``MultipleNegativesRankingLoss`` plus its
    backward direction (negatives have no positive and are candidates only). Which form retrieves
    better depends on the data (BENCHMARKS.md, "Text fine-tuning" (b4)).

    A batch where no anchor has a positive (B=1, all labels distinct) gives a zero that is still
    connected to the graph, so ``backward()`` yields zero gradients. A batch of one class gives 0
    (every neighbour is a positive). The computation is one (B, B) GEMM, a fused softmax and a
    hand-written backward (:mod:`metriclearn.losses._softmax_kernel`); it is stable at any temperature
    (no ``log(0)``: rows whose positives underflow are redone with log-sum-exps). Half-precision
    input is computed in float32. Double backward is not supported and raises.

    Parameters
    ----------
    temperature:
        T > 0; smaller is sharper.
    distance:
        ``"sqeuclidean"`` or ``"cosine"``.
    reduction:
        ``"mean"``, ``"sum"`` or ``"none"`` (see :class:`~metriclearn.losses.base.MetricLoss`).
    same_side:
        False: score a row only against the batch rows of the other side (needs ``sides``; pair data).

    References
    ----------
    J. Goldberger, S. Roweis, G. Hinton, R. Salakhutdinov. "Neighbourhood Components Analysis".
    NeurIPS 2004.
    A. Radford et al. "Learning Transferable Visual Models From Natural Language Supervision" (CLIP's
    symmetric loss). ICML 2021.

    Examples
    --------
    >>> import torch
    >>> loss = NeighborhoodSoftmaxLoss()
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    >>> value = loss(x, torch.tensor([0, 0, 1]))  # anchor 2 has no positive and is left out
    >>> expected = (torch.log1p(torch.tensor(-8.0).exp()) + torch.log1p(torch.tensor(-9.0).exp())) / 2
    >>> torch.allclose(value, expected)  # anchor 0: d01=1, d02=9; anchor 1: d10=1, d12=10
    True
    >>> value.backward(); x.grad.shape
    torch.Size([3, 2])

    Two pairs (anchors 0, 1; positives 2, 3), anchors scored against the positives only and positives
    against the anchors:

    >>> pairs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    >>> clip = NeighborhoodSoftmaxLoss(0.5, "cosine", same_side=False)
    >>> value = clip(pairs, torch.tensor([0, 1, 0, 1]), sides=torch.tensor([0, 0, 1, 1]))
    >>> logits = F.normalize(pairs[:2], dim=1) @ F.normalize(pairs[2:], dim=1).T / 0.5  # anchors x positives
    >>> reference = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.T, torch.arange(2))) / 2
    >>> torch.allclose(value, reference)
    True
    """

    uses_sides = True

    def __init__(self, temperature: float = 1.0, distance: str = "sqeuclidean", reduction: str = "mean",
                 same_side: bool = True) -> None:
        super().__init__(reduction=reduction)
        self.temperature = check_positive_float(temperature, "temperature")
        self.distance = check_choice(distance, DISTANCES, "distance")
        self.same_side = check_bool(same_side, "same_side")

    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None,
                sides: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = F.normalize(embeddings, dim=1) if self.distance == "cosine" else embeddings  # (B, D)
        codes, positives = label_codes(labels, labels[:0], x.dtype)  # (B,), (B,)
        if self.same_side:
            sides = None
        elif sides is None:
            raise ValueError("same_side=False scores each row against the other side's rows and needs sides "
                             "(pair data: 0 anchor, 1 positive or negative), got none; class data has no sides")
        else:  # positives only on the other side
            other = sides[:, None] != sides[None, :]  # (B, B)
            positives = ((labels[:, None] == labels[None, :]) & other).sum(1)  # (B,)
        counted = positives > 0  # (B,)
        refs = x.new_empty((0, x.shape[1]))  # no extra columns
        per_anchor = NeighborhoodSoftmaxFunction.apply(
            x, refs, codes, counted, None, 1.0 / self.temperature, self.distance == "sqeuclidean", sides
        )  # (B,)
        return per_anchor, counted

    def extra_repr(self) -> str:
        side = "" if self.same_side else ", same_side=False"
        return f"temperature={self.temperature}, distance={self.distance!r}{side}, {super().extra_repr()}"
