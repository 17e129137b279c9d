"""Fused forward and hand-written backward of the neighbourhood-softmax (NCA) family of losses.

Private engine behind :class:`~metriclearn.losses.NeighborhoodSoftmaxLoss` and
:class:`~metriclearn.losses.CacheLoss`. A batch ``x`` (B, D) is scored against the columns
``z = [x; refs]`` (N = B + M, D), where ``refs`` are detached reference embeddings (a cache; M may be 0).

Logits. For squared Euclidean distance with temperature T,
``s_ij = -|x_i - z_j|² / T + |x_i|² / T = (2 x_i·z_j - |z_j|²) / T``: the row constant ``|x_i|²/T``
cancels in every softmax, so it is never computed and one GEMM with a bias row gives the whole
(B, N) matrix. For cosine distance the inputs arrive unit-normalised and ``s_ij = x_i·z_j / T``
(``-(1 - cos)/T`` up to the same row constant). In both cases ``s = alpha · x zᵀ - c |z|²`` with
``(alpha, c) = (2/T, 1/T)`` or ``(1/T, 0)``. An anchor's own column (and any excluded reference
slot, and with ``sides`` every batch column of the anchor's own side) is set to -inf, so ``exp`` gives an
exact zero and never a ``log(0)``.

Loss. With ``W = softmax(s)`` row-wise, ``p_i`` the mass on the positives (same label) and
``n_i`` the mass on the negatives, both summed directly,
``loss_i = -log p_i = log(1 + n_i / p_i)``, which is accurate both when ``p_i → 1`` and when it
is small. Rows whose positive mass falls below ``sqrt(tiny)`` of the dtype (a tiny temperature,
positives far away) are recomputed in the log domain with two log-sum-exps, so there is no
underflow to ``log(0)`` at any temperature.

Gradient. ``∂loss_i/∂s_ij = W_ij - [y_j = y_i] W_ij / p_i``: ``W_ij`` on the negatives and
``-W_ij n_i / p_i`` on the positives (no cancellation). The forward writes this matrix ``G`` over
the softmax in place and keeps it; the backward only scales it by the upstream gradient ``g`` and
multiplies: with ``A = diag(g) G``,
``∂L/∂x = alpha (A_bb + A_bbᵀ) x + alpha diag(g) G_br refs - 2c colsum(A_bb) ⊙ x``,
where ``bb`` is the batch block and ``br`` the reference block. Gradients never reach ``refs``.

Cost: one (B, N) GEMM forward and one backward (the batch block is symmetrised by a transpose
into a padded buffer instead of a second GEMM), one fused softmax and five streaming passes. One
fresh (B, N) matrix per call: the logits, turned in place into the softmax and then into the
gradient, which the backward reads as is; the positive mask lives in a reused scratch matrix.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import Tensor

_scratch = threading.local()


def scratch(rows: int, cols: int, like: Tensor, slot: int = 0) -> Tensor:
    """A (rows, cols) matrix for temporaries that die inside one forward or one backward call.

    On CPU a fresh multi-megabyte tensor is usually new memory from the OS, and first touching it
    costs a page fault per 4 KiB (thousands per step at B=2048; see BENCHMARKS.md). So the largest matrix used
    so far in each ``slot`` is kept per thread and dtype and handed out again (two slots are in use
    at once in the backward). Other devices have caching allocators and get a fresh tensor. Never
    keep the result beyond the call.
    """
    if like.device.type != "cpu":
        return like.new_empty((rows, cols))
    buffers = _scratch.__dict__.setdefault("buffers", {})
    flat = buffers.get((like.dtype, slot))
    if flat is None or flat.numel() < rows * cols:
        flat = buffers[(like.dtype, slot)] = torch.empty(rows * cols, dtype=like.dtype)
    return flat[: rows * cols].view(rows, cols)


def pairwise_logits(x: Tensor, z: Tensor, inv_t: float, sqeuclidean: bool) -> Tensor:
    """Logits ``s_ij`` of every row of ``x`` against every row of ``z`` (see the module docstring).

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> pairwise_logits(x, x, 1.0, True)  # -|x_i - x_j|² + |x_i|²
    tensor([[  0., -25.],
            [  0.,  25.]])
    """
    if sqeuclidean:
        bias = torch.linalg.vector_norm(z, dim=1).square_().mul_(-inv_t).unsqueeze(0)  # (1, N) one fused pass
        return torch.addmm(bias, x, z.T, alpha=2.0 * inv_t)  # (B, N)
    return torch.mm(x * inv_t, z.T)  # (B, N)


def scaled_symmetric(g_bb: Tensor, row_scale: Tensor) -> tuple[Tensor, Tensor]:
    """``A = diag(row_scale) g_bb`` and ``A + Aᵀ`` (both in scratch memory) without a second GEMM.

    ``A`` is written into a buffer whose rows are padded by 16 elements: reading ``Aᵀ`` walks
    columns, and with a power-of-two row length (B = 512, 1024, 2048) every element of a column
    falls into the same cache set, which makes a plain ``a + a.T`` several times slower than the
    GEMM it is meant to save. Padded, it costs a few streaming passes.

    >>> a, sym = scaled_symmetric(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 10.0]))
    >>> sym
    tensor([[ 2., 32.],
            [32., 80.]])
    """
    n = g_bb.shape[0]
    a = scratch(n, n + 16, g_bb)[:, :n]  # (B, B) view with padded row stride
    torch.mul(g_bb, row_scale.unsqueeze(1), out=a)
    return a, torch.add(a, a.T, out=scratch(n, n, g_bb, slot=1))  # (B, B), (B, B)


def _exact_rows(logits: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Loss and ``∂loss/∂s`` of a few rows in the log domain (positive mass below the float range)."""
    lse_all = torch.logsumexp(logits, 1, keepdim=True)  # (R, 1)
    pos_logits = logits.masked_fill(~pos, -math.inf)  # (R, N)
    lse_pos = torch.logsumexp(pos_logits, 1, keepdim=True)  # (R, 1)
    grad = torch.exp(logits - lse_all).sub_(torch.exp(pos_logits - lse_pos))  # (R, N)
    return (lse_all - lse_pos).squeeze(1), grad


def _masked_logits(
    x: Tensor, z: Tensor, rows: Tensor | None, exclude: Tensor | None, inv_t: float, sqeuclidean: bool,
    sides: Tensor | None = None,
) -> Tensor:
    """Logits of the anchors ``x[rows]`` (all when None) with -inf on their own column and excluded slots,
    and with ``sides`` (B,) on every batch column of the anchor's own side."""
    b = x.shape[0]
    anchors = x if rows is None else x[rows]  # (R, D)
    logits = pairwise_logits(anchors, z, inv_t, sqeuclidean)  # (R, N)
    if sides is not None:
        own = sides if rows is None else sides[rows]  # (R,)
        logits[:, :b].masked_fill_(own[:, None] == sides[None, :], -math.inf)  # (R, B) the own column included
    if rows is None:
        logits[:, :b].diagonal().fill_(-math.inf)  # an anchor is not its own neighbour
        if exclude is not None:
            logits[exclude[0], b + exclude[1]] = -math.inf
        return logits
    logits[torch.arange(rows.shape[0], device=x.device), rows] = -math.inf
    if exclude is not None:
        local = torch.full((b,), -1, dtype=torch.long, device=x.device)  # anchor -> row of `logits`
        local[rows] = torch.arange(rows.shape[0], device=x.device)
        keep = local[exclude[0]] >= 0  # (K,)
        logits[local[exclude[0, keep]], b + exclude[1, keep]] = -math.inf
    return logits


def softmax_loss_grad_(logits: Tensor, x: Tensor, z: Tensor, codes: Tensor, counted: Tensor, exclude: Tensor | None,
                       inv_t: float, sqeuclidean: bool, sides: Tensor | None = None) -> Tensor:
    """Per-anchor loss ``-log p_i`` (B,) of masked ``logits`` (B, N), turned in place into ``G = ∂loss_i/∂s_ij``.

    ``G = W - [y_j = y_i] W / p_i`` with ``W = softmax(logits)`` (module docstring); rows whose positive mass
    underflows are redone in the log domain from ``x``, ``z`` and ``sides`` (so those must be the logits'
    inputs and masks), rows not ``counted`` get loss 0 and gradient 0. Shared by
    :class:`NeighborhoodSoftmaxFunction` and the fused neighbourhood + uniformity kernel
    (:mod:`metriclearn.losses._neighborhood_uniformity`).

    >>> logits = torch.tensor([[-math.inf, 0.0, 0.0], [0.0, -math.inf, 0.0], [0.0, 0.0, -math.inf]])
    >>> codes, counted = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([True, True, False])
    >>> x = torch.eye(3)
    >>> softmax_loss_grad_(logits, x, x, codes, counted, None, 1.0, False)  # p = 1/2 for anchors 0 and 1
    tensor([0.6931, 0.6931, 0.0000])
    >>> logits[0]  # G: -W n / p = -1/2 on the positive, W = 1/2 on the negative
    tensor([ 0.0000, -0.5000,  0.5000])
    """
    grad = torch.softmax(logits, 1, out=logits)  # (B, N) W in place, becomes G below
    # The positive mask is written as 0/1 floats into a reused scratch matrix (no bool→float
    # copy, no fresh (B, N) buffer) and then multiplied by W in place.
    b, n_cols = logits.shape
    pos_w = torch.eq(codes[:b, None], codes[None, :], out=scratch(b, n_cols, x)).mul_(grad)  # (B, N)
    p = pos_w.sum(1)  # (B,)
    grad.sub_(pos_w)  # (B, N) W on negatives
    n = grad.sum(1)  # (B,)
    tiny = torch.finfo(x.dtype).tiny
    ratio = n / p.clamp_min(tiny)  # (B,)
    grad.addcmul_(pos_w, ratio.neg().unsqueeze(1))  # (B, N) G = W - [pos] W / p
    loss = torch.log1p(ratio)  # (B,)
    del pos_w

    weak = counted & (p < math.sqrt(tiny))  # positives underflow: redo those rows in the log domain
    if bool(weak.any()):
        rows = weak.nonzero().squeeze(1)  # (R,)
        pos = codes[rows, None] == codes[None, :]  # (R, N)
        loss[rows], grad[rows] = _exact_rows(_masked_logits(x, z, rows, exclude, inv_t, sqeuclidean, sides), pos)
    if not bool(counted.all()):
        loss.masked_fill_(~counted, 0.0)
        grad[~counted] = 0.0  # rows without a positive take no part (and may hold NaN)
    return loss


class NeighborhoodSoftmaxFunction(torch.autograd.Function):
    """Per-anchor loss ``-log p_i`` (zero where ``counted`` is False); see the module docstring.

    ``apply(x, refs, codes, counted, exclude, inv_t, sqeuclidean[, sides])``: x (B, D) the scored rows and
    first B columns; refs (M, D) detached extra columns; codes (N,) float label codes of
    ``[x; refs]`` (:func:`label_codes`); counted (B,) bool, the anchors that have a positive (among the
    columns they are scored against); exclude (2, K) long or None, (anchor, slot) pairs of reference slots
    that are not the anchor's neighbour (a few per anchor, see :func:`matching_slots`); inv_t = 1/T;
    sqeuclidean: the distance (else cosine on unit-normalised inputs); sides (B,) long or None: a row is
    not scored against the batch rows of its own side (pair data: anchors only against positives and
    negatives, and these only against anchors).
    Double backward is not supported: a backward with ``create_graph=True`` raises ``RuntimeError``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        refs: Tensor,
        codes: Tensor,
        counted: Tensor,
        exclude: Tensor | None,
        inv_t: float,
        sqeuclidean: bool,
        sides: Tensor | None = None,
    ) -> Tensor:
        z = torch.cat([x, refs]) if refs.shape[0] else x  # (N, D)
        grad = _masked_logits(x, z, None, exclude, inv_t, sqeuclidean, sides)  # (B, N) logits, G after the next line
        loss = softmax_loss_grad_(grad, x, z, codes, counted, exclude, inv_t, sqeuclidean, sides)  # (B,)
        ctx.save_for_backward(x, z, grad)  # z holds a snapshot of refs: the cache may change before backward
        ctx.alpha = (2.0 if sqeuclidean else 1.0) * inv_t
        ctx.col_coef = 2.0 * inv_t if sqeuclidean else 0.0
        return loss

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: this backward is not itself differentiable
            raise RuntimeError(
                "the neighbourhood-softmax losses have a hand-written first-order backward; "
                "double backward (create_graph=True) is not supported"
            )
        x, z, grad = ctx.saved_tensors
        b = x.shape[0]
        refs = z[b:]  # (M, D)
        scaled, symmetric = scaled_symmetric(grad[:, :b], upstream)  # (B, B) A_bb = diag(g) G_bb, A_bb + A_bbᵀ
        gx = torch.mm(symmetric, x)  # (B, D)
        if refs.shape[0]:
            to_refs = torch.mm(grad[:, b:], refs)  # (B, D) G_br refs
            gx.addcmul_(to_refs, upstream.unsqueeze(1))
        gx.mul_(ctx.alpha)
        if ctx.col_coef:
            gx.addcmul_(scaled.sum(0).unsqueeze(1), x, value=-ctx.col_coef)
        return gx, None, None, None, None, None, None, None


def label_codes(labels: Tensor, ref_labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Compact float codes of ``[labels; ref_labels]`` and each anchor's number of positives.

    Returns ``(codes (N,), positives (B,))``: equal labels get equal codes stored as ``dtype``
    (comparing floats into a float mask is ~3× faster than comparing int64 into a bool one), and
    ``positives[i]`` counts the *other* batch members and references with anchor i's label — from
    label counts, not from a (B, N) mask. Small labels (the usual 0..K-1) are their own codes and
    are counted with ``bincount``; others are renumbered by ``torch.unique``. Codes are exact in
    float32 below 2**24 and fall back to float64 above.

    >>> label_codes(torch.tensor([4, 7, 4, 9]), torch.tensor([9, 4]), torch.float32)
    (tensor([4., 7., 4., 9., 9., 4.]), tensor([2, 0, 2, 1]))
    >>> label_codes(torch.tensor([10**9, 7, 10**9]), torch.tensor([7]), torch.float32)  # renumbered
    (tensor([1., 0., 1., 0.]), tensor([1, 1, 1]))
    """
    b = labels.shape[0]
    everything = torch.cat([labels, ref_labels])  # (N,) non-negative
    top = int(everything.max())
    if top < min(2**24, 4 * everything.shape[0] + 1024):
        counts = torch.bincount(everything, minlength=top + 1)  # (top + 1,)
        return everything.to(dtype), counts[labels] - 1
    _, inverse, counts = torch.unique(everything, return_inverse=True, return_counts=True)
    exact = dtype if counts.shape[0] < 2**24 or dtype == torch.float64 else torch.float64
    return inverse.to(exact), counts[inverse[:b]] - 1


def matching_slots(ids: Tensor, slot_ids: Tensor) -> Tensor:
    """(2, K) long: the (anchor, slot) pairs with ``ids[anchor] == slot_ids[slot]``.

    A sort of the slots and two binary searches per anchor, O((B + M) log M) — no (B, M) comparison;
    each anchor matches only the few slots holding its own earlier copies.

    >>> matching_slots(torch.tensor([7, 3, 9]), torch.tensor([3, 7, 5, 7]))
    tensor([[0, 0, 1],
            [1, 3, 0]])
    """
    sorted_ids, order = torch.sort(slot_ids, stable=True)  # (M,), (M,)
    first = torch.searchsorted(sorted_ids, ids)  # (B,)
    matches = torch.searchsorted(sorted_ids, ids, right=True) - first  # (B,) copies per anchor
    anchors = torch.repeat_interleave(torch.arange(ids.shape[0], device=ids.device), matches)  # (K,)
    starts = torch.repeat_interleave(first - (matches.cumsum(0) - matches), matches)  # (K,)
    return torch.stack([anchors, order[starts + torch.arange(anchors.shape[0], device=ids.device)]])
