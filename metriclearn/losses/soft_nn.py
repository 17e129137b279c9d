"""Soft Nearest Neighbor loss (Frosst, Papernot & Hinton, ICML 2019).

For a batch ``x_1..x_B`` with labels ``y`` and temperature ``T``:

    l_i = −log( Σ_{j≠i, y_j=y_i} exp(−||x_i − x_j||² / T)  /  Σ_{k≠i} exp(−||x_i − x_k||² / T) )
    loss = mean of l_i over the anchors i that have at least one positive (j ≠ i with y_j = y_i)

Reference: N. Frosst, N. Papernot, G. Hinton, "Analyzing and Improving Representations with the Soft
Nearest Neighbor Loss", ICML 2019, eq. (1).

Example
-------
>>> import torch
>>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
>>> loss = SoftNearestNeighborLoss(temperature=1.0)
>>> round(loss(x, torch.tensor([0, 0, 1, 1])).item(), 4)  # tight, well-separated classes: small
0.0005
>>> round(loss(x, torch.tensor([0, 1, 0, 1])).item(), 4)  # same points, entangled labels: large
8.0005
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metriclearn._checks import check_positive_float
from metriclearn.losses._pairwise import squared_distances
from metriclearn.losses._softmax_kernel import NeighborhoodSoftmaxFunction, label_codes
from metriclearn.losses.base import MetricLoss


class SoftNearestNeighborLoss(MetricLoss):
    """Soft Nearest Neighbor loss: −log of the softmax mass (by −squared distance / T) on same-class points.

    Parameters
    ----------
    temperature:
        ``T > 0`` in ``exp(−||x_i − x_j||² / T)`` (the initial value when ``learn_temperature``).
    learn_temperature:
        Make ``T`` a trainable parameter, stored as ``log T`` (so it stays positive). The paper picks,
        at each step, the temperature that *minimises* the loss (so the measured entanglement does
        not hinge on a hand-set scale); with this option the optimizer does that jointly with the
        model. Only use it when the loss is minimised: the paper also *maximises* the SNN of hidden
        layers as a regulariser, and under a negative weight a jointly trained ``T`` would move the
        wrong way (there, optimise ``log_temperature`` in a separate minimisation step).
    reduction:
        ``"mean"`` (default), ``"sum"`` or ``"none"``, see :class:`~metriclearn.losses.base.MetricLoss`.

    Notes
    -----
    Anchors without a positive (the only member of their class in the batch, or a batch of one) have
    an undefined ``log 0`` term; they are left out of the mean, as every loss of the package does.
    When no anchor has a positive the loss is a graph-connected zero.

    The value is the same as :class:`~metriclearn.losses.NeighborhoodSoftmaxLoss` with
    ``distance="sqeuclidean"`` (i.e. NCA): the two differ in intent and options — this one is the
    entanglement measure of Frosst et al., usually added as a regulariser with a learned temperature.
    With a fixed temperature it runs on the same fused kernel (one GEMM, hand-written backward; no
    double backward); with ``learn_temperature=True`` it is computed with plain autograd, so T gets
    its gradient.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        temperature = check_positive_float(temperature, "temperature")
        self.learn_temperature = bool(learn_temperature)
        self.fixed_temperature = temperature  # used as an exact Python float unless learned
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> Tensor | float:
        """The current temperature ``T`` (a 0-d trainable tensor when ``learn_temperature``)."""
        return self.log_temperature.exp() if self.learn_temperature else self.fixed_temperature

    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.learn_temperature:  # the same value as NCA at temperature T: use the fused kernel
            codes, positives = label_codes(labels, labels[:0], embeddings.dtype)  # (B,), (B,)
            counted = positives > 0  # (B,)
            refs = embeddings.new_empty((0, embeddings.shape[1]))  # no extra columns
            per_anchor = NeighborhoodSoftmaxFunction.apply(
                embeddings, refs, codes, counted, None, 1.0 / self.fixed_temperature, True
            )  # (B,)
            return per_anchor, counted
        batch = embeddings.shape[0]
        eye = torch.eye(batch, dtype=torch.bool, device=embeddings.device)  # (B, B)
        positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye  # (B, B)
        has_pos = positives.any(dim=1)  # (B,)
        if not bool(has_pos.any()):  # B = 1 or all singletons: nothing counts
            return embeddings.sum(dim=1) * 0.0, has_pos
        inv_t = (-self.log_temperature).exp().to(embeddings.dtype)
        logits = squared_distances(embeddings, embeddings) * -inv_t  # (B, B)
        # An anchor without positives keeps its own diagonal entry as a stand-in, so that no row is all
        # −inf (that would give NaN gradients); such anchors do not count and get no gradient.
        stand_in = positives | (eye & ~has_pos.unsqueeze(1))  # (B, B)
        all_lse = logits.masked_fill(eye, float("-inf")).logsumexp(dim=1)  # (B,) finite since B ≥ 2
        pos_lse = logits.masked_fill(~stand_in, float("-inf")).logsumexp(dim=1)  # (B,)
        per_anchor = all_lse - pos_lse  # (B,)
        return per_anchor, has_pos

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature):.4g}, "
            f"learn_temperature={self.learn_temperature}, {super().extra_repr()}"
        )
