"""Exact k-nearest-neighbour search with blocked BLAS matrix products and ``torch.topk``.

This is the ground truth that approximate indexes (IVF, HNSW, PQ) are measured against, computed
independently of faiss (torch's matrix product and selection), in the spirit of faiss's
``contrib/exhaustive_search.py``.

Scores are computed tile by tile, ``block_size`` entries of the (Q, N) score matrix at a time, and
each tile's top k is merged into a running top k, so memory stays bounded for any Q and N (the same
scheme as faiss's ``contrib/exhaustive_search.py``):

- ``"l2"``: squared Euclidean distance ``‖q‖² + ‖x‖² − 2·q·x`` (clamped at 0), smallest first;
- ``"ip"``: inner product ``q·x``, largest first;
- ``"cosine"``: inner product of L2-normalised rows, largest first (zero rows stay zero; rows of any finite
  magnitude, 1e-30 or 1e20 alike, are normalised exactly: see :mod:`metriclearn._scale`).

``"l2"`` and ``"ip"`` take rows of L2 norm up to 1e18 (:func:`metriclearn._scale.check_norm_range`).

Where the reference holds fewer than k rows, the missing neighbours have index −1 and distance +inf
(``"l2"``) or −inf (``"ip"``, ``"cosine"``).

Example
-------
>>> import numpy as np
>>> x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
>>> D, I = exact_search(np.array([[0.9, 0.0]], dtype=np.float32), x, k=2)
>>> print(I, D.round(2))
[[1 0]] [[0.01 0.81]]
>>> exact_search(x[:1], x[:1], k=2, metric="ip")[1].tolist()
[[0, -1]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from metriclearn._checks import check_choice, check_matrix, check_positive_int
from metriclearn._scale import check_norm_range, unit_rows

if TYPE_CHECKING:
    import torch

METRICS = ("l2", "ip", "cosine")
DEFAULT_BLOCK_SIZE = 1 << 23  # score-matrix entries per tile (32 MiB of float32)
_MAX_QUERY_BLOCK = 4096


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` with every row scaled to unit L2 norm (all-zero rows stay zero), at any finite scale.

    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    return unit_rows(x)


def missing_distance(metric: str) -> float:
    """The distance reported for a missing neighbour: +inf for ``"l2"``, −inf for similarities."""
    return float("inf") if metric == "l2" else float("-inf")


def exact_search(
    queries: Any,
    reference: Any,
    k: int,
    metric: str = "l2",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    reference_sq_norms: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of ``reference`` for every row of ``queries``.

    Parameters
    ----------
    queries : array (Q, d)
    reference : array (N, d)
    k : int
        Neighbours per query; k > N pads with index −1 and distance ±inf.
    metric : {"l2", "ip", "cosine"}
        ``"l2"`` returns squared distances (ascending); ``"ip"``/``"cosine"`` similarities (descending).
    block_size : int
        Entries of the (Q, N) score matrix computed at once (memory bound: 4 bytes each).
    reference_sq_norms : array (N,), optional
        Precomputed ``‖x‖²`` of the reference rows (``"l2"`` only), to skip a pass over them.

    Returns
    -------
    D : float32 array (Q, k)
    I : int64 array (Q, k), row positions in ``reference``.
    """
    import torch  # here, not at module level: the CLI lists METRICS without importing torch

    metric = check_choice(metric, METRICS, "metric")
    k = check_positive_int(k, "k")
    block_size = check_positive_int(block_size, "block_size")
    xq = check_matrix(queries, "queries", allow_empty=True)
    xb = check_matrix(reference, "reference", dim=xq.shape[1], allow_empty=True)
    check_norm_range(xq, "queries", metric), check_norm_range(xb, "reference", metric)
    if metric == "cosine":
        xq, xb = normalize_rows(xq), normalize_rows(xb)
    norms = None if reference_sq_norms is None else torch.as_tensor(reference_sq_norms, dtype=torch.float32)
    q, x = torch.from_numpy(xq), torch.from_numpy(xb)
    return exact_topk(q, x, k, l2=metric == "l2", reference_sq_norms=norms, block_size=block_size)


def exact_topk(
    q: torch.Tensor,
    x: torch.Tensor,
    k: int,
    *,
    l2: bool,
    reference_sq_norms: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_search` on already validated float32 CPU tensors ``q`` (Q, d) and ``x`` (N, d).

    ``l2=True`` ranks by squared L2 distance, ``False`` by inner product (normalise first for cosine).
    """
    import torch

    n, nq = x.shape[0], q.shape[0]
    D = np.full((nq, k), float("inf") if l2 else float("-inf"), dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return D, I
    if l2 and reference_sq_norms is None:
        reference_sq_norms = _sq_norms(x)  # (N,)
    kk = min(k, n)
    bq = min(nq, _MAX_QUERY_BLOCK)
    bn = max(kk, block_size // bq)
    with torch.no_grad():
        for i0 in range(0, nq, bq):
            qb = q[i0 : i0 + bq]  # (b, d)
            best_s, best_i = None, None
            for j0 in range(0, n, bn):
                xt = x[j0 : j0 + bn].T  # (d, m)
                if l2 and reference_sq_norms is not None:  # ‖x‖² − 2 q·x: ‖q‖² (per row) is added after selection
                    s = torch.addmm(reference_sq_norms[j0 : j0 + bn], qb, xt, beta=1, alpha=-2)  # (b, m)
                else:
                    s = qb @ xt  # (b, m)
                s, idx = torch.topk(s, min(kk, s.shape[1]), dim=1, largest=not l2)  # (b, ≤kk)
                idx += j0
                if best_s is not None and best_i is not None:
                    s, pos = torch.topk(torch.cat([best_s, s], 1), kk, dim=1, largest=not l2)  # (b, kk)
                    idx = torch.gather(torch.cat([best_i, idx], 1), 1, pos)  # (b, kk)
                best_s, best_i = s, idx
            assert best_s is not None and best_i is not None  # n > 0: at least one block
            if l2:
                best_s = (best_s + _sq_norms(qb)[:, None]).clamp_min_(0)  # (b, kk)
            D[i0 : i0 + bq, :kk] = best_s.numpy()
            I[i0 : i0 + bq, :kk] = best_i.numpy()
    return D, I


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise squared L2 norms (n,) of an (n, d) tensor."""
    import torch

    return torch.einsum("ij,ij->i", x, x)  # (n,)
