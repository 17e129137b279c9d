"""Per-item retrieval for the explorer: each item's k nearest neighbours, the top-1 failures and per-class scores.

Leave-one-out among the ``n`` given items, ranked exactly as :func:`metriclearn.metrics.retrieval_metrics`
ranks them (its ``_nearest``: faiss exhaustive search, ties by lower index), so for a query ``i``

- ``neighbours[i, 0]`` is the item ``retrieval_metrics`` calls its nearest, and the **top-1 failures** are
  exactly the queries it counts as precision@1 misses: ``R_i ≥ 1`` (another item of its class exists) and
  ``y[neighbours[i, 0]] ≠ y_i``; ``precision_at_1 = 1 − #failures / #queries with R ≥ 1``;
- the **margin** of a failure is ``d(i, nearest same-class item) − d(i, top-1 neighbour) ≥ 0``: how much
  nearer the wrong item is than the closest right one (worst = largest, listed first);
- distances are Euclidean (``metric="l2"``) or ``1 − cos`` (``"cosine"``), recomputed in float64;
- per class: size, precision@1 (over its queries with R ≥ 1), MAP@R (Musgrave et al. 2020, from
  ``retrieval_metrics`` on the class's queries against all items); the **confused pairs** count top-1
  failures ``a → b`` and ``b → a`` for each unordered pair of classes.

Example
-------
>>> import numpy as np
>>> x = np.array([[0.0], [0.1], [0.25], [1.0], [1.1], [0.22]], dtype=np.float32)
>>> y = np.array([0, 0, 0, 1, 1, 1])
>>> r = item_retrieval(x, y, k=2)
>>> r.neighbours[:, 0].tolist(), r.failures.tolist()
([1, 0, 5, 4, 3, 2], [5, 2])
>>> [round(m, 3) for m in r.margins.tolist()]
[0.75, 0.12]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metriclearn._checks import check_choice, check_matrix, check_positive_int
from metriclearn.metrics import _nearest, _prepare, retrieval_metrics

BLOCK_ROWS = 4096  # query rows whose neighbour distances are recomputed at once


@dataclass(frozen=True)
class ItemRetrieval:
    """Leave-one-out neighbours of every item and, with labels, the top-1 failures (see the module docstring).

    Attributes
    ----------
    neighbours : (n, k) int64 item positions, nearest first. distances : (n, k) float64.
    failures : (f,) int64 queries whose top-1 neighbour has another label, worst margin first (empty without
        labels). margins : (f,) float64, their margins. counted : (n,) bool, queries with ``R ≥ 1``.
    """

    neighbours: np.ndarray
    distances: np.ndarray
    failures: np.ndarray
    margins: np.ndarray
    counted: np.ndarray


def item_retrieval(x: Any, codes: np.ndarray | None, k: int = 10, metric: str = "l2") -> ItemRetrieval:
    """Neighbours, distances and top-1 failures of every row of ``x`` (n, d) among the others.

    ``codes`` (n,) int labels or ``None`` (no failures then); ``k`` is capped at ``n - 1``.
    """
    x = check_matrix(x, "embeddings")
    check_choice(metric, ("l2", "cosine"), "metric")
    n = len(x)
    if n < 2:
        raise ValueError(f"the explorer needs at least 2 items to find neighbours, got {n}")
    k = min(check_positive_int(k, "k"), n - 1)
    qt, rt = _prepare(x, x, metric)
    rows = np.arange(n)
    with torch.no_grad():
        neighbours = np.concatenate([
            _nearest(qt, rt, rows[s : s + BLOCK_ROWS], k, metric, True).numpy() for s in range(0, n, BLOCK_ROWS)
        ]).astype(np.int64)  # (n, k)
    distances = pair_distances(x, rows[:, None], neighbours, metric)  # (n, k)
    if codes is None:
        empty = np.zeros(0, np.int64)
        return ItemRetrieval(neighbours, distances, empty, np.zeros(0), np.zeros(n, bool))
    codes = np.asarray(codes, dtype=np.int64)
    counted = np.bincount(codes)[codes] > 1  # (n,) R ≥ 1
    missed = np.flatnonzero(counted & (codes[neighbours[:, 0]] != codes))
    margins = nearest_same_class(x, codes, missed, metric) - distances[missed, 0]
    order = np.argsort(-margins, kind="stable")
    return ItemRetrieval(neighbours, distances, missed[order], margins[order], counted)


def pair_distances(x: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances between rows ``a`` and ``b`` (broadcast index arrays): Euclidean, or ``1 − cos``."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, np.float64)
    flat_a, flat_b, flat_out = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    step = max(1, (1 << 22) // max(1, x.shape[1]))
    for s in range(0, len(flat_a), step):
        u = x[flat_a[s : s + step]].astype(np.float64)
        v = x[flat_b[s : s + step]].astype(np.float64)
        if metric == "cosine":
            norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
            flat_out[s : s + step] = 1.0 - (u * v).sum(1) / np.where(norms > 0, norms, 1.0)
        else:
            flat_out[s : s + step] = np.linalg.norm(u - v, axis=1)
    return out


def nearest_same_class(x: np.ndarray, codes: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Distance (float64) from each of ``rows`` to the nearest other item of its own class."""
    out = np.full(len(rows), np.inf)
    for c in np.unique(codes[rows]):
        mine = rows[codes[rows] == c]
        members = np.flatnonzero(codes == c)
        d = pair_distances(x, mine[:, None], members[None, :], metric)  # (q, members): small, one class
        d[mine[:, None] == members[None, :]] = np.inf
        out[codes[rows] == c] = d.min(axis=1)
    return out


def per_class_scores(
    x: np.ndarray, codes: np.ndarray, retrieval: ItemRetrieval, metric: str = "l2"
) -> list[dict[str, Any]]:
    """For each class present: ``{"code", "size", "p_at_1", "map_at_r"}`` (scores ``None`` when R = 0).

    precision@1 from ``retrieval``'s top-1 neighbours; MAP@R from
    :func:`~metriclearn.metrics.retrieval_metrics` with the class's items as queries against all items.
    """
    codes = np.asarray(codes, dtype=np.int64)
    top1_hit = codes[retrieval.neighbours[:, 0]] == codes
    out = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        row: dict[str, Any] = {"code": int(c), "size": len(members), "p_at_1": None, "map_at_r": None}
        if len(members) > 1:
            order = np.concatenate([members, np.flatnonzero(codes != c)])  # queries first: exclude_self
            scores = retrieval_metrics(x[members], codes[members], x[order], codes[order], metric=metric, k=1,
                                       exclude_self=True)
            row["p_at_1"] = float(top1_hit[members].mean())
            row["map_at_r"] = scores["map_at_r"]
        out.append(row)
    return out


def confused_pairs(codes: np.ndarray, retrieval: ItemRetrieval, top: int = 20) -> list[dict[str, int]]:
    """The ``top`` unordered class pairs with the most top-1 failures between them, most first.

    >>> r = ItemRetrieval(np.array([[1], [2], [0], [0]]), np.zeros((4, 1)), np.array([1, 2, 3]), np.zeros(3),
    ...                   np.ones(4, bool))
    >>> confused_pairs(np.array([0, 0, 1, 2]), r)
    [{'a': 0, 'b': 1, 'a_to_b': 1, 'b_to_a': 1, 'total': 2}, {'a': 0, 'b': 2, 'a_to_b': 0, 'b_to_a': 1, 'total': 1}]
    """
    codes = np.asarray(codes, dtype=np.int64)
    q = codes[retrieval.failures]
    got = codes[retrieval.neighbours[retrieval.failures, 0]]
    counts: dict[tuple[int, int], list[int]] = {}
    for a, b in zip(q.tolist(), got.tolist(), strict=True):
        pair = counts.setdefault((min(a, b), max(a, b)), [0, 0])
        pair[0 if a < b else 1] += 1
    rows = [{"a": a, "b": b, "a_to_b": ab, "b_to_a": ba, "total": ab + ba} for (a, b), (ab, ba) in counts.items()]
    rows.sort(key=lambda r: (-r["total"], r["a"], r["b"]))
    return rows[:top]
