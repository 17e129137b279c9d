"""Uniformity loss (Wang & Isola 2020): spread the batch over the unit sphere so embeddings do not collapse."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from metriclearn._checks import check_embeddings_tensor, check_labels_tensor, check_positive_float

_EPS = 1e-12  # F.normalize's floor on the norm


class UniformityLoss(nn.Module):
    r"""Log of the mean Gaussian potential between the L2-normalised batch members.

    With :math:`z_i = x_i / \lVert x_i \rVert` the batch on the unit sphere,

    .. math::

        \mathcal{L}_{\text{uniform}} = \log \frac{1}{B(B-1)} \sum_{i \ne j} e^{-t \lVert z_i - z_j \rVert^2},
        \qquad \lVert z_i - z_j \rVert^2 = 2 - 2\, z_i^\top z_j .

    It is lowest when the points are spread evenly over the sphere (its minimiser converges to the
    uniform distribution as B grows) and 0, its maximum, when all points coincide. Labels are not used:
    added to a supervised loss with a small weight (``--loss neighborhood --loss uniformity:0.3``) it
    keeps the spread *within* classes that a pure class-separating loss squeezes out — the directions
    that the training classes do not need but new classes do (see "Evaluating on new classes" in
    docs/training.md and the unseen-class section of BENCHMARKS.md).

    A batch of one sample has no pair and gives a zero that is still connected to the graph. Half
    precision is computed in float32.

    Parameters
    ----------
    t:
        The potential's scale t > 0 (the paper uses t = 2).

    References
    ----------
    T. Wang, P. Isola. "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere". ICML 2020.

    Examples
    --------
    >>> import math, torch
    >>> loss = UniformityLoss(t=2.0)
    >>> loss(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))  # the same point twice: the maximum, log 1
    tensor(0.)
    >>> x = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], requires_grad=True)  # antipodal: |z_i - z_j|^2 = 4
    >>> value = loss(x)
    >>> math.isclose(value.item(), -8.0, abs_tol=1e-6)
    True
    >>> value.backward(); x.grad.shape
    torch.Size([2, 2])
    """

    def __init__(self, t: float = 2.0) -> None:
        super().__init__()
        self.t = check_positive_float(t, "t")

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss of ``embeddings`` (B, D); ``labels`` (B,) are accepted (the objective passes them) and ignored."""
        embeddings = check_embeddings_tensor(embeddings)
        if labels is not None:
            check_labels_tensor(labels, embeddings.shape[0])
        b = embeddings.shape[0]
        if b == 0:
            raise ValueError("embeddings is an empty batch (B=0)")
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        if b == 1:
            return embeddings.sum() * 0.0
        return _Uniformity.apply(embeddings, self.t)

    def extra_repr(self) -> str:
        return f"t={self.t}"


class _Uniformity(torch.autograd.Function):
    """The loss with its gradient written out: one Gram matrix forward, one product backward.

    With p_ij = softmax over the pairs i ≠ j of 2t·z_i·z_j (symmetric), ∂L/∂z = 4t·P z, and through the
    normalisation z = x / max(‖x‖, ε): ∂L/∂x = (∂L/∂z − z (z·∂L/∂z)) / ‖x‖ (∂L/∂z / ε where ‖x‖ < ε).
    Autograd through ``F.normalize``, the product and ``logsumexp`` would run one more (B, B, D) product
    and keep masked (B, B) copies; ``tests/losses/test_uniformity.py`` checks the two agree, and
    ``benchmarks/bench_losses.py`` times them.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, t: float) -> Tensor:
        b = x.shape[0]
        norm = x.norm(dim=1, keepdim=True)  # (B, 1)
        z = x / norm.clamp_min(_EPS)  # (B, D)
        logits = (2.0 * t) * (z @ z.T)  # (B, B): -t |z_i - z_j|^2 + 2t
        logits.diagonal().fill_(float("-inf"))
        top = logits.max()
        weights = torch.exp(logits - top)  # (B, B), 0 on the diagonal
        total = weights.sum()
        ctx.t = t
        ctx.save_for_backward(z, norm, weights, total)
        return top + torch.log(total) - 2.0 * t - math.log(b * (b - 1))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        z, norm, weights, total = ctx.saved_tensors
        grad_z = ((4.0 * ctx.t) * grad / total) * (weights @ z)  # (B, D)
        radial = (grad_z * z).sum(dim=1, keepdim=True)  # (B, 1)
        inside = norm >= _EPS
        grad_x = torch.where(inside, (grad_z - z * radial) / norm.clamp_min(_EPS), grad_z / _EPS)  # (B, D)
        return grad_x, None
