r"""Hold a batch's centroid still in the backward pass: the gradient loses its common part over the batch.

A loss against *detached* neighbours (a cache of earlier embeddings) pushes the batch away from them
with no reaction on them, so the pushes add up to a net force on the batch. Through a shared encoder
that net force moves every embedding in one common direction; the cache refills with the moved
embeddings and the push repeats — the embeddings bunch up (BENCHMARKS.md, text fine-tuning (b2), and
``benchmarks/bench_cache_collapse.py``). In-batch terms have no net force: every push on one row has
an equal and opposite one on another.

:func:`recenter_gradient` is the identity forward. Backward, for rows ``x`` that the encoder made
directly it removes the mean,

.. math::

    g_i \;\mapsto\; g_i - \frac{1}{B} \sum_{j=1}^{B} g_j,

the exact gradient of :math:`\ell(x - \bar{x} + \mathrm{sg}(\bar{x}))` (:math:`\bar{x}` the batch mean,
sg a stop-gradient): the loss sees the batch's shape but cannot move its centroid. For unit rows
``u_i = z_i / |z_i|`` (an encoder that normalises), the gradient reaching the encoder's ``z`` is
:math:`P_i g_i / |z_i|` with :math:`P_i = I - u_i u_i^\top`, so a plain mean removal is undone there.
``unit=True`` removes instead the common vector :math:`m` for which :math:`\sum_i P_i (g_i - m) = 0`,

.. math::

    m = A^{-1} \sum_i P_i g_i, \qquad A = \sum_i P_i = B I - U^\top U,

solved as a :math:`D \times D` system, or when :math:`B \le D` as the :math:`B \times B` one of the
Woodbury identity, :math:`A^{-1} = \frac{1}{B}\big(I + U^\top (B I - U U^\top)^{-1} U\big)`: no net
force on ``z`` when its rows have equal norms (nearly so otherwise). A ridge of :math:`10^{-6} B` keeps the
solve finite when the rows nearly coincide (then the net force is removed to that relative precision).

Example
-------
>>> import torch
>>> x = torch.randn(4, 3, requires_grad=True)
>>> (recenter_gradient(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
>>> torch.allclose(x.grad, torch.zeros(4, 3))  # a common push: removed
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _RecenterGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, unit: bool) -> Tensor:  # (B, D) -> (B, D)
        ctx.unit = unit
        if unit:
            ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # (B, D)
        if not ctx.unit:
            return grad - grad.mean(dim=0, keepdim=True), None
        (u,) = ctx.saved_tensors
        u32, u, g = u.to(grad.dtype), u.double(), grad.double()  # (B, D) each
        b, d = u.shape
        # s and the solve in float64, so rows that nearly coincide (a near-singular A) leave m finite; the one
        # O(B·D·min(B, D)) product stays in the input precision (its rounding is far below the ridge)
        s = g.sum(0) - u.T @ (u * g).sum(1)  # (D,) sum_i P_i g_i
        ridge = 1e-6 * b  # A is singular only along a direction every row shares (all rows alike, or B = 1)
        if b <= d:  # the smaller system: (B, B) by Woodbury
            gram = torch.eye(b, dtype=u.dtype, device=u.device) * (b + ridge) - (u32 @ u32.T).double()  # (B, B)
            m = (s + u.T @ torch.linalg.solve(gram, u @ s)) / (b + ridge)  # (D,) (A + ridge I)^-1 s
        else:  # (D, D) directly
            a = torch.eye(d, dtype=u.dtype, device=u.device) * (b + ridge) - (u32.T @ u32).double()  # (D, D)
            m = torch.linalg.solve(a, s)  # (D,)
        return (g - m).to(grad.dtype), None


def recenter_gradient(x: Tensor, unit: bool = False) -> Tensor:
    """``x`` (B, D) unchanged; its gradient loses its common part over the rows (``unit``: of unit rows)."""
    return _RecenterGradient.apply(x, unit)


def is_unit(x: Tensor) -> bool:
    """True when every row of ``x`` (B, D) has norm 1 to the precision of its dtype (an encoder normalised it)."""
    tol = max(1e-4, 8 * torch.finfo(x.dtype).eps)
    return bool(((x.detach().float().norm(dim=1) - 1).abs() <= tol).all())
