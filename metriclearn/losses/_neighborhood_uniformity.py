"""The default objective's two terms from one Gram matrix: cosine neighbourhood softmax + uniformity, fused.

``metriclearn train``'s default objective is ``neighborhood + uniformity:0.05``
(:class:`~metriclearn.losses.NeighborhoodSoftmaxLoss` with ``distance="cosine"`` and
:class:`~metriclearn.losses.UniformityLoss`). Both start from the unit vectors ``z_i = x_i / max(‖x_i‖, ε)``
and the Gram matrix ``S = z zᵀ``:

* neighbourhood: logits ``S / T`` (diagonal -inf), per-anchor ``ℓ_i = -log Σ_{j≠i, y_j=y_i} softmax_ij``,
  with ``G = ∂ℓ_i/∂s_ij`` built in place by :func:`~metriclearn.losses._softmax_kernel.softmax_loss_grad_`;
* uniformity: ``U = log (1/(B(B-1))) Σ_{i≠j} exp(2t S_ij - 2t)`` (Wang & Isola 2020), with weights
  ``E_ij = exp(2t (S_ij - max_{k≠l} S_kl))`` and their sum ``Σ``.

Computed apart, each term runs its own normalisation, its own (B, D) × (D, B) GEMM forward and its own
product backward. Here one GEMM gives ``S`` and, with upstream gradients ``g`` (B,) on the ℓ_i and ``u`` on U,
``∂L/∂S`` symmetrised is ``K = (A + Aᵀ)/T + (4t u / Σ) E`` with ``A = diag(g) G``, so ``∂L/∂z = K z`` is one
GEMM backward, and ``∂L/∂x = (∂L/∂z − z (z·∂L/∂z)) / ‖x‖`` (``∂L/∂z / ε`` where ``‖x‖ < ε``, as
``F.normalize``). Two (B, B) matrices are kept for the backward (``G`` and ``E``), as apart.

References: J. Goldberger et al., "Neighbourhood Components Analysis", NeurIPS 2004; T. Wang, P. Isola,
"Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere", ICML 2020.

Example
-------
>>> import torch
>>> from metriclearn.losses import NeighborhoodSoftmaxLoss, UniformityLoss
>>> nb, un = NeighborhoodSoftmaxLoss(0.15, "cosine"), UniformityLoss()
>>> x, y = torch.randn(12, 4, dtype=torch.float64), torch.tensor([0, 1, 2] * 4)
>>> fused = neighborhood_and_uniformity(nb, un, x, y)
>>> all(torch.allclose(a, b) for a, b in zip(fused, (nb(x, y), un(x))))
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from metriclearn.losses._softmax_kernel import label_codes, scaled_symmetric, softmax_loss_grad_
from metriclearn.losses.neighborhood import NeighborhoodSoftmaxLoss
from metriclearn.losses.uniformity import _EPS, UniformityLoss


def can_fuse(neighborhood: nn.Module, uniformity: nn.Module) -> bool:
    """Whether the pair is exactly a cosine :class:`NeighborhoodSoftmaxLoss` and a :class:`UniformityLoss`.

    Subclasses are not fused (they may change ``compute`` or ``forward``).

    >>> can_fuse(NeighborhoodSoftmaxLoss(distance="cosine"), UniformityLoss())
    True
    >>> can_fuse(NeighborhoodSoftmaxLoss(), UniformityLoss())  # squared Euclidean: another Gram matrix
    False
    >>> can_fuse(NeighborhoodSoftmaxLoss(distance="cosine", same_side=False), UniformityLoss())  # masks by side
    False
    """
    return (type(neighborhood) is NeighborhoodSoftmaxLoss and neighborhood.distance == "cosine"
            and neighborhood.same_side and type(uniformity) is UniformityLoss)


def neighborhood_and_uniformity(
    neighborhood: NeighborhoodSoftmaxLoss, uniformity: UniformityLoss, embeddings: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """``(neighborhood(embeddings, labels), uniformity(embeddings))`` from one Gram matrix (see the module).

    Equal to the two calls (same validation, reduction and errors); a batch of one falls back to them.
    """
    if not can_fuse(neighborhood, uniformity):
        raise TypeError(f"cannot fuse {type(neighborhood).__name__} with {type(uniformity).__name__}: "
                        f"needs NeighborhoodSoftmaxLoss(distance='cosine') and UniformityLoss")
    x, labels = neighborhood.validate(embeddings, labels)  # (B, D) float, (B,) long
    if x.shape[0] < 2:
        return neighborhood(embeddings, labels), uniformity(embeddings)
    codes, positives = label_codes(labels, labels[:0], x.dtype)  # (B,), (B,)
    counted = positives > 0  # (B,)
    per_anchor, uniform = _NeighborhoodUniformity.apply(x, codes, counted, 1.0 / neighborhood.temperature,
                                                        uniformity.t)  # (B,), ()
    value = neighborhood.reduce(per_anchor, counted)
    neighborhood.update(x, labels, None)
    return value, uniform


class _NeighborhoodUniformity(torch.autograd.Function):
    """``apply(x, codes, counted, inv_t, t)`` → (per-anchor neighbourhood losses (B,), uniformity ()).

    x (B, D), B ≥ 2, unnormalised; codes (B,) float label codes; counted (B,) bool; inv_t = 1/T; t the
    uniformity scale.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, codes: Tensor, counted: Tensor, inv_t: float, t: float
                ) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1)
        z = x / norm.clamp_min(_EPS)  # (B, D)
        gram = torch.mm(z, z.T)  # (B, B) S, the one GEMM
        weights = gram.mul(2.0 * t)  # (B, B) 2t S
        weights.diagonal().fill_(-math.inf)
        top = weights.max()  # () 2t max_{i≠j} S_ij
        total = weights.sub_(top).exp_().sum()  # E (B, B), 0 on the diagonal; () Σ
        uniform = top + torch.log(total) - 2.0 * t - math.log(b * (b - 1))  # ()
        logits = gram.mul_(inv_t)  # (B, B) S/T in place
        logits.diagonal().fill_(-math.inf)  # an anchor is not its own neighbour
        per_anchor = softmax_loss_grad_(logits, z, z, codes, counted, None, inv_t, False)  # (B,); logits → G
        ctx.save_for_backward(z, norm, logits, weights, total)
        ctx.inv_t, ctx.t = inv_t, t
        return per_anchor, uniform

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, upstream: Tensor, upstream_uniform: Tensor
                 ) -> tuple[Tensor, None, None, None, None]:
        z, norm, grad, weights, total = ctx.saved_tensors
        _, kernel = scaled_symmetric(grad, upstream)  # (B, B) A + Aᵀ, A = diag(g) G (scratch memory)
        coef = upstream_uniform * (4.0 * ctx.t) / total  # () a tensor: no host-device sync
        kernel.mul_(ctx.inv_t).addcmul_(weights, coef)  # (B, B) K
        grad_z = torch.mm(kernel, z)  # (B, D)
        radial = (grad_z * z).sum(dim=1, keepdim=True)  # (B, 1)
        inside = norm >= _EPS
        grad_x = torch.where(inside, (grad_z - z * radial) / norm.clamp_min(_EPS), grad_z / _EPS)  # (B, D)
        return grad_x, None, None, None, None
