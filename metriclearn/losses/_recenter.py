r"""Hold a batch's centroid still in the backward pass: the gradient minus its mean over the batch.

A loss against *detached* neighbours (a cache of earlier embeddings) pushes the batch away from them
with no reaction on them, so the pushes add up to a net force on the batch. Through a shared encoder
that net force moves every embedding in one common direction; the cache refills with the moved
embeddings and the push repeats — the embeddings bunch up (BENCHMARKS.md, text fine-tuning (b2)).
In-batch terms have no net force: every push on one row has an equal and opposite one on another.

:func:`recenter_gradient` is the identity forward and, backward,

.. math::

    \frac{\partial \ell}{\partial x_i} \;\mapsto\; g_i - \frac{1}{B} \sum_{j=1}^{B} g_j,

the exact gradient of :math:`\ell(x - \bar{x} + \mathrm{sg}(\bar{x}))` (:math:`\bar{x}` the batch mean,
sg a stop-gradient): the loss sees the batch's shape but cannot move its centroid.

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
    def forward(ctx: Any, x: Tensor) -> Tensor:  # (B, D) -> (B, D)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # (B, D)
        return grad - grad.mean(dim=0, keepdim=True)


def recenter_gradient(x: Tensor) -> Tensor:
    """``x`` unchanged; its gradient loses its mean over the rows (dim 0)."""
    return _RecenterGradient.apply(x)
