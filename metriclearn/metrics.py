"""Retrieval and cluster-separation metrics of an embedding space (pure functions).

Retrieval metrics follow Musgrave, Belongie & Lim, "A Metric Learning Reality Check" (ECCV 2020) and
pytorch-metric-learning's ``AccuracyCalculator``. For a query q with label y_q, rank the references by
distance (nearest first; ties by reference index, lower first) and let

- R = the number of references with label y_q (q itself not counted when it is excluded),
- rel(i) = 1 if the i-th ranked reference has label y_q, else 0; P(i) = (1/i) Σ_{j≤i} rel(j).

Then, averaged over the queries with R ≥ 1:

- ``precision_at_1`` = rel(1);
- ``r_precision`` = (1/R) Σ_{i≤R} rel(i);
- ``map_at_r`` = (1/R) Σ_{i≤R} P(i)·rel(i)  (MAP@R);
- ``knn_accuracy`` = [majority label of the k nearest references == y_q], with ``k = min(k, #references)``;
  a tie between labels with equally many votes goes to the one whose first vote ranks nearest
  (so k = 1 gives precision_at_1).

Queries whose class has no reference (R = 0) are left out of all four averages (as ``AccuracyCalculator``
does): they can neither be retrieved correctly nor measure anything about the embedding. If no query is
left a ``ValueError`` says so.

Distances: ``metric="l2"`` ranks by Euclidean distance on the raw vectors (as ``AccuracyCalculator``'s
default), ``"cosine"`` by cosine similarity of the L2-normalised vectors. The nearest max(R, k) references
of a block of query rows at a time (at most 4096 rows, fewer when R is large, so a block's neighbour table
stays under ~16M entries) come from faiss's exhaustive search, which tiles the distance computation itself,
so 100k points never need an N×N matrix. Ties are made deterministic: equal distances are ordered by
reference index, and when a tie straddles the last place kept, the row is recomputed exactly with torch
(at most ~16M distances at a time) and the lowest indices among the tied are kept.

Separation metrics use scikit-learn: silhouette (on a stratified subsample of at most
``silhouette_sample`` points, since it costs O(N²)), Davies-Bouldin, Calinski-Harabasz (all points), and
NMI / AMI between the labels and k-means clusters with k = number of classes (fixed seed).

Example
-------
>>> import numpy as np
>>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]], dtype=np.float32)
>>> retrieval_metrics(x, [0, 0, 0, 1, 1, 1], k=3)
{'precision_at_1': 1.0, 'r_precision': 1.0, 'map_at_r': 1.0, 'knn_accuracy': 1.0}
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_mutual_info_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from metriclearn._checks import check_choice, check_labels, check_matrix, check_positive_int
from metriclearn._progress import progress
from metriclearn._scale import rescaled, unit_rows_tensor
from metriclearn.data import stratified_subsample

__all__ = ["RETRIEVAL_KEYS", "SEPARATION_KEYS", "embedding_metrics", "pair_metrics", "query_gallery_metrics",
           "retrieval_metrics", "separation_metrics"]

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r", "knn_accuracy")
SEPARATION_KEYS = ("silhouette", "davies_bouldin", "calinski_harabasz", "nmi", "ami")
BLOCK_ELEMENTS = 1 << 24  # entries of a neighbour table or of an exact distance block held at once
MAX_BLOCK_ROWS = 4096  # faiss's own query tile; smaller calls are markedly slower


# --------------------------------------------------------------------------------------------- retrieval
def retrieval_metrics(
    query: Any,
    query_labels: Any,
    reference: Any = None,
    reference_labels: Any = None,
    metric: str = "l2",
    k: int = 5,
    *,
    exclude_self: bool | None = None,
    block_size: int | None = None,
) -> dict[str, float]:
    """Precision@1, R-precision, MAP@R and kNN accuracy of ``query`` against ``reference``.

    Parameters
    ----------
    query : array-like (Nq, D)
        Query embeddings.
    query_labels : array-like (Nq,)
        Integer or string labels.
    reference, reference_labels : array-like (Nr, D), (Nr,), optional
        The searched set. ``None`` means leave-one-out within ``query``.
    metric : {"l2", "cosine"}
        Euclidean distance on the raw vectors, or cosine similarity.
    k : int
        Neighbours voting in ``knn_accuracy`` (capped at the number of references).
    exclude_self : bool, optional
        Never retrieve reference row i for query row i (reference must then start with the queries, as
        ``ref_includes_query`` in ``AccuracyCalculator``). Default: true when ``reference`` is ``None`` or
        holds the same embeddings and labels as ``query``.
    block_size : int, optional
        Query rows per block (default: up to 4096, fewer when classes are large; see the module docstring).

    Returns
    -------
    dict
        ``precision_at_1``, ``r_precision``, ``map_at_r``, ``knn_accuracy`` as floats in [0, 1]; see the
        module docstring for the definitions.

    Example
    -------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    >>> ref = np.array([[0.1], [0.9], [5.0]], dtype=np.float32)
    >>> retrieval_metrics(x, [0, 1, 1], ref, [0, 1, 0], k=1)["precision_at_1"]
    1.0
    """
    q = check_matrix(query, "query")
    qy = check_labels(query_labels, "query_labels", n=len(q))
    if reference is None:
        if reference_labels is not None:
            raise ValueError("reference_labels was given without reference")
        r, ry = q, qy
        exclude_self = True if exclude_self is None else exclude_self
    else:
        if reference_labels is None:
            raise ValueError("reference was given without reference_labels")
        r = check_matrix(reference, "reference", dim=q.shape[1])
        ry = check_labels(reference_labels, "reference_labels", n=len(r))
        if exclude_self is None:
            exclude_self = r.shape == q.shape and np.array_equal(r, q) and np.array_equal(ry, qy)
    check_choice(metric, ("l2", "cosine"), "metric")
    k = check_positive_int(k, "k")
    if exclude_self and len(r) < len(q):
        raise ValueError(f"exclude_self needs reference to start with the {len(q)} queries; it has {len(r)} rows")
    q_codes, r_codes = _joint_codes(qy, ry)
    num_classes = int(max(q_codes.max(), r_codes.max())) + 1
    counts = np.bincount(r_codes, minlength=num_classes)
    relevant = counts[q_codes] - int(exclude_self)  # R per query
    valid = relevant > 0
    if not valid.any():
        raise ValueError("no query has a same-class item in the reference set, so no retrieval metric is defined")
    available = len(r) - int(exclude_self)
    k = min(k, available)
    if block_size is None:
        probe = min(max(k, int(relevant.max())) + 1, available) + int(exclude_self)  # neighbours per query
        block_size = max(1, min(MAX_BLOCK_ROWS, BLOCK_ELEMENTS // probe))
    block_size = check_positive_int(block_size, "block_size")

    qt, rt = _prepare(q, r, metric)
    r_codes_t = torch.from_numpy(r_codes)
    totals = np.zeros(len(RETRIEVAL_KEYS))
    rows = np.flatnonzero(valid)
    starts = range(0, len(rows), block_size)
    with torch.no_grad():
        for start in progress(starts, desc="retrieval metrics", total=len(starts)):
            block = rows[start : start + block_size]
            r_block = torch.from_numpy(relevant[block])  # (b,)
            nearest = _nearest(qt, rt, block, max(k, int(r_block.max())), metric, exclude_self)  # (b, kk)
            labels = r_codes_t[nearest]  # (b, kk)
            totals += _block_sums(labels, torch.from_numpy(q_codes[block]), r_block, k)
    means = totals / len(rows)
    return {key: float(v) for key, v in zip(RETRIEVAL_KEYS, means, strict=True)}


def query_gallery_metrics(
    embeddings: Any, labels: Any, is_query: Any, is_gallery: Any, metric: str = "l2", k: int = 5
) -> dict[str, float]:
    """:func:`retrieval_metrics` of the rows ``is_query`` searching the rows ``is_gallery``, where a row may be
    both and is never its own neighbour (open-metric-learning's query/gallery protocol).

    The queries also in the gallery search it with ``exclude_self`` (the reference is those queries, then the
    other gallery rows, so ties between equal distances go to them first); the other queries search the gallery
    as it is. Each metric is the mean over all queries with R ≥ 1, i.e. the two groups' means weighted by their
    numbers of such queries. With every row both a query and in the gallery this is leave-one-out retrieval.

    Example
    -------
    >>> x = np.array([[0.0], [0.1], [1.0], [1.1], [0.05]], dtype=np.float32)
    >>> m = query_gallery_metrics(x, [0, 0, 1, 1, 0], [True, False, True, False, True], [True, True, True, True, False])
    >>> m["precision_at_1"], m["map_at_r"]
    (1.0, 1.0)
    """
    x = check_matrix(embeddings, "embeddings")
    y = check_labels(labels, "labels", n=len(x))
    query, gallery = (np.asarray(m, dtype=bool).reshape(-1) for m in (is_query, is_gallery))
    for name, mask in (("is_query", query), ("is_gallery", gallery)):
        if len(mask) != len(x):
            raise ValueError(f"{name} must have one value per row ({len(x)}), got {len(mask)}")
        if not mask.any():
            raise ValueError(f"{name} selects no row")
    both, only = np.flatnonzero(query & gallery), np.flatnonzero(query & ~gallery)
    reference = np.concatenate([both, np.flatnonzero(gallery & ~query)])
    codes = np.unique(y, return_inverse=True)[1].reshape(-1)
    totals, counted = np.zeros(len(RETRIEVAL_KEYS)), 0
    for rows, ref, exclude in ((both, reference, True), (only, np.flatnonzero(gallery), False)):
        if not len(rows):
            continue
        relevant = np.bincount(codes[ref], minlength=int(codes.max()) + 1)[codes[rows]] - int(exclude)
        n = int((relevant > 0).sum())
        if n:
            means = retrieval_metrics(x[rows], y[rows], x[ref], y[ref], metric, k, exclude_self=exclude)
            totals += n * np.array([means[key] for key in RETRIEVAL_KEYS])
            counted += n
    if not counted:
        raise ValueError("no query has a same-class item in the gallery, so no retrieval metric is defined")
    return {key: float(v) for key, v in zip(RETRIEVAL_KEYS, totals / counted, strict=True)}


def _joint_codes(qy: np.ndarray, ry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode query and reference labels with one shared mapping."""
    if (qy.dtype.kind in "US") != (ry.dtype.kind in "US"):
        raise TypeError(
            f"query_labels ({qy.dtype}) and reference_labels ({ry.dtype}) must both be strings or both integers"
        )
    _, codes = np.unique(np.concatenate([qy, ry]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(qy)], codes[len(qy) :]


def _prepare(q: np.ndarray, r: np.ndarray, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors to rank with: unit rows (cosine), or rows rescaled by one common factor if ||x||² would
    overflow float32 (l2; a common scale does not change any ranking)."""
    qt, rt = torch.from_numpy(q), torch.from_numpy(r)  # (Nq, D), (Nr, D) float32
    if metric == "cosine":
        return _unit_rows(qt), _unit_rows(rt)
    largest = max(float(qt.abs().max()), float(rt.abs().max()))
    if largest**2 * qt.shape[1] * 4 > float(torch.finfo(torch.float32).max):
        qt, rt = qt / largest, rt / largest
    return qt, rt


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows (zero rows stay zero), safe against overflow of the norm."""
    return unit_rows_tensor(x)  # (N, D)


def _nearest(
    q: torch.Tensor, r: torch.Tensor, rows: np.ndarray, k: int, metric: str, exclude_self: bool
) -> torch.Tensor:
    """Indices (b, k) of the k nearest references of query ``rows``, ordered by (distance, index).

    faiss's exhaustive search (BLAS in tiles plus a heap, no (b, N) matrix kept) finds k + 1 candidates
    (+1 for self). The candidate set is exact unless a tie straddles place k; such rows are recomputed
    with :func:`_smallest_k_ties`, which keeps the lowest indices among the tied.
    """
    b, available = len(rows), len(r) - int(exclude_self)
    probe = min(k + 1, available) + int(exclude_self)
    found_dist, found_idx = _knn(q[rows].numpy(), r.numpy(), probe, metric)  # (b, probe), (b, probe)
    if metric == "cosine":
        found_dist = -found_dist  # similarity -> smaller is nearer
    if exclude_self:
        is_self = found_idx == rows[:, None]  # (b, probe)
        is_self[~is_self.any(1), -1] = True  # self lies beyond the probe: drop the farthest instead
        found_dist, found_idx = found_dist[~is_self].reshape(b, -1), found_idx[~is_self].reshape(b, -1)
    dist, idx = torch.from_numpy(found_dist), torch.from_numpy(found_idx)
    if idx.shape[1] > k:
        straddle = dist[:, k - 1] == dist[:, k]  # (b,)
        dist, idx = dist[:, :k].contiguous(), idx[:, :k].contiguous()
        tied = straddle.nonzero()[:, 0]
        chunk = max(1, BLOCK_ELEMENTS // len(r))
        for part in tied.split(chunk):  # exact re-computation, a bounded (rows, N) block at a time
            query_rows = torch.from_numpy(rows[part.numpy()])
            d = _distances(q[query_rows], r, metric)  # (t, N)
            if exclude_self:
                d[torch.arange(len(part)), query_rows] = float("inf")
            idx[part] = _smallest_k_ties(d, k)
            dist[part] = d.gather(1, idx[part])
    by_index = idx.argsort(dim=1)  # (b, k): equal values end up in index order after a stable sort
    idx, dist = idx.gather(1, by_index), dist.gather(1, by_index)
    return idx.gather(1, dist.sort(dim=1, stable=True).indices)


def _knn(q: np.ndarray, r: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """faiss brute-force kNN: squared L2 distances (ascending) or inner products (descending)."""
    import faiss

    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    return faiss.knn(q, r, k, metric=kind)


def _distances(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared L2 distances or negated cosine similarities (smaller = nearer), as faiss computes them."""
    if metric == "cosine":
        return -(q @ r.T)  # (b, N)
    sq = (r * r).sum(1)  # (N,)
    return torch.addmm(sq.unsqueeze(0) + (q * q).sum(1, keepdim=True), q, r.T, alpha=-2.0).clamp_min_(0)  # (b, N)


def _smallest_k_ties(d: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest of each row where ties straddle the k-th place: of the tied, the lowest indices."""
    kth = torch.topk(d, k, dim=1, largest=False, sorted=False).values.max(1, keepdim=True).values  # (b, 1)
    below, at = d < kth, d == kth  # (b, N)
    need = k - below.sum(1, keepdim=True)  # (b, 1)
    keep = below | (at & (at.cumsum(1) <= need))  # (b, N), exactly k per row
    return keep.nonzero()[:, 1].view(d.shape[0], k)  # (b, k)


def _block_sums(labels: torch.Tensor, target: torch.Tensor, relevant: torch.Tensor, k: int) -> np.ndarray:
    """Per-block sums of the four metrics from the ranked neighbour labels (b, kk)."""
    rank = torch.arange(1, labels.shape[1] + 1)  # (kk,)
    hit = (labels == target[:, None]) & (rank[None, :] <= relevant[:, None])  # (b, kk) rel(i), i <= R
    cum = hit.cumsum(1).double()  # (b, kk)
    r = relevant.double()
    p_at_1 = (labels[:, 0] == target).double()
    r_precision = hit.sum(1) / r
    map_at_r = (cum / rank * hit).sum(1) / r
    knn = (_majority(labels[:, :k]) == target).double()
    return torch.stack([p_at_1.sum(), r_precision.sum(), map_at_r.sum(), knn.sum()]).numpy()


def _majority(labels: torch.Tensor) -> torch.Tensor:
    """Most frequent label per row; ties go to the label whose first occurrence comes first."""
    k = labels.shape[1]
    votes = (labels[:, :, None] == labels[:, None, :]).sum(2)  # (b, k) votes for the label at each rank
    score = votes * (k + 1) - torch.arange(k)  # (b, k) more votes first, then the nearer rank
    return labels.gather(1, score.argmax(1, keepdim=True)).squeeze(1)


# --------------------------------------------------------------------------------------------- separation
def separation_metrics(
    x: Any,
    labels: Any,
    *,
    seed: int = 0,
    silhouette_sample: int = 10_000,
    n_init: int = 3,
) -> dict[str, float]:
    """How well the labelled classes separate in the embedding ``x``.

    Parameters
    ----------
    x : array-like (N, D)
    labels : array-like (N,)
        At least 2 classes and fewer classes than points.
    seed : int
        Seeds the silhouette subsample and k-means.
    silhouette_sample : int
        Silhouette is computed on a stratified random subsample of at most this many points (it is
        O(N²) in time); the default 10 000 keeps it to a few seconds.
    n_init : int
        k-means restarts (the best inertia is kept).

    Returns
    -------
    dict
        ``silhouette`` (in [-1, 1], higher is better), ``davies_bouldin`` (≥ 0, lower is better),
        ``calinski_harabasz`` (≥ 0, higher is better), ``nmi`` and ``ami`` (agreement between the labels and
        a k-means clustering with k = number of classes; 1 = identical, higher is better).

    Example
    -------
    >>> import numpy as np
    >>> x = np.array([[0, 0], [0, 1], [9, 9], [9, 8]], dtype=np.float32)
    >>> m = separation_metrics(x, [0, 0, 1, 1])
    >>> round(m["silhouette"], 3), m["nmi"], m["ami"]
    (0.917, 1.0, 1.0)
    """
    x = rescaled(check_matrix(x, "x"))  # every score here is scale-free; at 1e20 or 1e-30 float32 is not
    y = check_labels(labels, "labels", n=len(x))
    seed = check_positive_int(seed, "seed", allow_zero=True)
    silhouette_sample = check_positive_int(silhouette_sample, "silhouette_sample")
    n_init = check_positive_int(n_init, "n_init")
    _, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)
    num_classes = int(codes.max()) + 1
    if not 2 <= num_classes < len(x):
        raise ValueError(
            f"separation metrics need at least 2 classes and fewer classes than points; "
            f"got {num_classes} classes for {len(x)} points"
        )
    sub = stratified_subsample(codes, silhouette_sample, seed)
    if 2 <= len(np.unique(codes[sub])) < len(sub):
        silhouette = float(silhouette_score(x[sub], codes[sub]))
    else:  # only with more classes than half the subsample: undefined there
        silhouette = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: fewer distinct clusters
        clusters = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed).fit_predict(x)
    return {
        "silhouette": silhouette,
        "davies_bouldin": float(davies_bouldin_score(x, codes)),
        "calinski_harabasz": float(calinski_harabasz_score(x, codes)),
        "nmi": float(normalized_mutual_info_score(codes, clusters)),
        "ami": float(adjusted_mutual_info_score(codes, clusters)),
    }


# --------------------------------------------------------------------------------------------- metrics.json
def embedding_metrics(
    query: Any,
    query_labels: Any,
    reference: Any = None,
    reference_labels: Any = None,
    *,
    metric: str = "l2",
    k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one set of embeddings, in the one shape of metriclearn's ``metrics.json`` files.

    ``train`` (held-out split), ``evaluate`` and ``report`` all write this shape (adding their own facts)::

        {"retrieval":              retrieval_metrics(query, query_labels)        leave-one-out in query,
         "retrieval_vs_reference": retrieval_metrics(query, ..., reference, ...) only with a reference,
         "knn_accuracy_k{k}":      retrieval_vs_reference["knn_accuracy"]       only with a reference,
         "separation":             separation_metrics(query, query_labels),
         "data": {"n_query", "n_reference", "dim", "n_classes", "metric", "k"}}

    Example
    -------
    >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]], dtype=np.float32)
    >>> m = embedding_metrics(x, [0, 0, 0, 1, 1, 1], x[::-1], [1, 1, 1, 0, 0, 0], k=3)
    >>> m["retrieval"]["map_at_r"], m["knn_accuracy_k3"], m["data"]["n_reference"]
    (1.0, 1.0, 6)
    """
    q = check_matrix(query, "query")
    qy = check_labels(query_labels, "query_labels", n=len(q))
    metrics: dict[str, Any] = {"retrieval": retrieval_metrics(q, qy, metric=metric, k=k)}
    if reference is not None:
        vs_reference = retrieval_metrics(q, qy, reference, reference_labels, metric=metric, k=k)
        metrics["retrieval_vs_reference"] = vs_reference
        metrics[f"knn_accuracy_k{k}"] = vs_reference["knn_accuracy"]
    metrics["separation"] = separation_metrics(q, qy, seed=seed)
    metrics["data"] = {
        "n_query": len(q),
        "n_reference": None if reference is None else len(reference),
        "dim": q.shape[1],
        "n_classes": len(np.unique(qy)),
        "metric": metric,
        "k": k,
    }
    return metrics


def pair_metrics(anchors: Any, positives: Any, k: int = 10) -> dict[str, float]:
    r"""Retrieval of each anchor's own positive among ALL the positives: Recall@1, Recall@k, MRR@k, NDCG@k.

    Anchor i (a query) is scored against every positive j (the corpus) by cosine similarity; its one
    relevant document is positive i. With ``rank_i`` the 1-based place of positive i when the positives are
    sorted by decreasing similarity (ties: lower index first), averaged over the anchors:

    - ``recall_at_1`` = [rank_i = 1], ``recall_at_{k}`` = [rank_i ≤ k];
    - ``mrr_at_{k}`` = 1 / rank_i if rank_i ≤ k, else 0;
    - ``ndcg_at_{k}`` = 1 / log2(rank_i + 1) if rank_i ≤ k, else 0 (one relevant document: IDCG = 1).

    These are the definitions of sentence-transformers' ``InformationRetrievalEvaluator`` (cosine score,
    ties by corpus id) with queries = anchors, corpus = positives and ``relevant_docs = {i: {i}}``; the
    tests check them against it. Memory: one (block, n) similarity matrix of at most 4096 anchor rows.

    Reference: N. Reimers, I. Gurevych, "Sentence-BERT", EMNLP 2019 (sentence-transformers).

    >>> a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    >>> p = np.array([[1.0, 0.1], [0.2, 1.0], [1.0, 0.2]], dtype=np.float32)
    >>> {name: round(v, 4) for name, v in pair_metrics(a, p).items()}  # anchor 2: p1 ties p2 and ranks first
    {'recall_at_1': 0.6667, 'recall_at_10': 1.0, 'mrr_at_10': 0.8333, 'ndcg_at_10': 0.877}
    """
    k = check_positive_int(k, "k")
    a = check_matrix(anchors, "anchors")
    p = check_matrix(positives, "positives", dim=a.shape[1])
    if len(a) != len(p):
        raise ValueError(f"anchors and positives must have the same number of rows (pairs), got {len(a)} "
                         f"and {len(p)}")
    qa, qp = _unit_rows(torch.from_numpy(a).double()), _unit_rows(torch.from_numpy(p).double())
    ranks = torch.empty(len(a), dtype=torch.long)
    block = max(1, min(4096, (1 << 24) // max(len(p), 1)))
    for start in range(0, len(a), block):
        rows = torch.arange(start, min(start + block, len(a)))
        scores = qa[rows] @ qp.T  # (b, n)
        own = scores[torch.arange(len(rows)), rows].unsqueeze(1)  # (b, 1)
        ahead = (scores > own) | ((scores == own) & (torch.arange(len(p)).unsqueeze(0) < rows.unsqueeze(1)))
        ranks[rows] = ahead.sum(dim=1) + 1  # (b,)
    found = ranks <= k
    rank = ranks.double()
    return {
        "recall_at_1": float((ranks == 1).double().mean()),
        f"recall_at_{k}": float(found.double().mean()),
        f"mrr_at_{k}": float(torch.where(found, 1.0 / rank, 0.0).mean()),
        f"ndcg_at_{k}": float(torch.where(found, 1.0 / torch.log2(rank + 1.0), 0.0).mean()),
    }
