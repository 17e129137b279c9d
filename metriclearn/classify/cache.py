"""Cache classifier and second opinion (Orhan, "A Simple Cache Model for Image Recognition", NeurIPS 2018).

The cache stores L2-normalised features ``k_i`` of labelled examples. A query ``x`` (normalised too) gets

    p_cache(y | x) = Σ_i exp(θ·cos(x, k_i))·1[y_i = y]  /  Σ_i exp(θ·cos(x, k_i))

summed over every slot (exact mode, ``top_k=None``) or over the ``top_k`` most similar keys found by an
:class:`~metriclearn.indexes.EmbeddingIndex` (for caches too large to scan). As a *second opinion* for a
model that already outputs class probabilities, the two are blended:

    p(y | x) = (1 − λ)·p_model(y | x) + λ·p_cache(y | x).

Exact mode is blocked so memory stays bounded for any cache size: per block of queries and keys, one GEMM
gives the scaled similarities, a running per-query maximum keeps ``exp`` in range (log-sum-exp), and the
per-class sums are one ``index_add_`` over the block's labels. Everything else is cheap next to the GEMM
(``exp2`` with θ·log2(e) folded into the queries), so the whole runs near the machine's SGEMM rate
(benchmarks/bench_cache_classifier.py).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 1, (20, 4)) + 4, rng.normal(0, 1, (20, 4)) - 4])
>>> y = np.array([0] * 20 + [1] * 20)
>>> cache = CacheClassifier(theta=20.0).fit(X, y)
>>> cache.predict(np.array([[4.0, 4, 4, 4], [-4, -4, -4, -4]])).tolist()
[0, 1]
>>> model_proba = np.array([[0.4, 0.6], [0.5, 0.5]])
>>> cache.second_opinion(np.array([[4.0, 4, 4, 4], [-4, -4, -4, -4]]), model_proba, lam=0.5).round(2).tolist()
[[0.7, 0.3], [0.25, 0.75]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from metriclearn._checks import (
    check_fraction,
    check_matrix,
    check_positive_float,
    check_positive_int,
    check_probabilities,
)
from metriclearn._device import resolve_device
from metriclearn._progress import progress
from metriclearn._scale import unit_rows_tensor
from metriclearn.classify._validation import (
    encode_targets,
    fit_data,
    index_labels,
    known_codes,
    query_data,
)
from metriclearn.classify.calibration import CalibrationMixin
from metriclearn.classify.defaults import DEFAULT_LAM, DEFAULT_THETA
from metriclearn.indexes._table import IdTable

_LOG2E = 1.0 / math.log(2.0)
_SHIFT_SLACK = 32.0  # a query's shift only moves when a block's max exceeds it by 2^32 (sums stay < 2^60)
_FOLD_BLOCKS = 8  # key blocks summed in float32 before they are added to the float64 accumulator

#: Orhan (2018) searched θ in [10, 90] and λ in [0.1, 0.9]; these are the default tuning grids.
THETA_GRID: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
LAM_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: θ candidates of :meth:`CacheClassifier.calibrate` (by negative log-likelihood): 1 … 1000, ×1.26 a step.
CALIBRATION_THETAS: tuple[float, ...] = tuple(float(t) for t in np.geomspace(1.0, 1000.0, 31))


def cache_probabilities(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    num_classes: int,
    theta: float,
    query_block: int = 512,
    key_block: int = 2048,
    workers: int | None = None,
) -> torch.Tensor:
    """Exact cache probabilities ``p(y|x) ∝ Σ_i exp(θ·q·k_i)·1[y_i = y]`` over every key, in bounded memory.

    Parameters
    ----------
    queries : (Q, d) float32 tensor, rows L2-normalised.
    keys : (N, d) float32 tensor on the same device, rows L2-normalised.
    key_labels : (N,) int64 tensor of class codes in ``[0, num_classes)``.
    num_classes : number of classes K.
    theta : inverse temperature θ > 0.
    query_block, key_block : block sizes; a worker's working set is one (key_block, query_block) float32 matrix.
    workers : CPU threads that share out the query blocks, each running single-threaded torch ops
        (default ``torch.get_num_threads()``). ``1`` runs inline with torch's own intra-op threads. Whole
        blocks per thread avoid an OpenMP barrier per small op, which on a loaded machine costs more than
        the arithmetic. CUDA tensors always run inline.

    Returns
    -------
    (Q, K) float64 tensor; each row sums to 1. Classes whose terms all lie more than ~2^-126 below a
    query's largest term (far below float32 resolution of the result) get exactly 0.

    Notes
    -----
    Per query block, for each key block: ``s = k_b @ (θ·log2(e)·q_b)ᵀ`` (one GEMM, (n_b, b)), then
    ``s ← 2^(s − m)`` in place and ``acc.index_add_(0, y_b, s)`` adds each key's row to its class. The
    per-query shift ``m`` is the first block's maximum and moves up (rescaling the sums by ``2^(m_old − m_new)``,
    a log-sum-exp) only when a later block's maximum exceeds it by more than 32, so terms stay ≤ 2^32 and
    the rescaling is rare. Sums run in float32 over 8 key blocks at a time, then in float64.

    Example
    -------
    >>> import torch.nn.functional as F
    >>> q = F.normalize(torch.randn(5, 8), dim=1); k = F.normalize(torch.randn(300, 8), dim=1)
    >>> y = torch.randint(0, 3, (300,))
    >>> p = cache_probabilities(q, k, y, 3, theta=30.0, query_block=2, key_block=64)
    >>> naive = torch.softmax(30.0 * q.double() @ k.double().T, 1) @ F.one_hot(y, 3).double()
    >>> bool(torch.allclose(p, naive, atol=1e-5))
    True
    """
    out = torch.empty(queries.shape[0], num_classes, dtype=torch.float64, device=queries.device)
    starts = range(0, queries.shape[0], query_block)
    workers = torch.get_num_threads() if workers is None else workers
    workers = 1 if queries.is_cuda else max(1, min(workers, len(starts)))

    def run(q0: int) -> None:
        q = queries[q0 : q0 + query_block]  # (b, d)
        out[q0 : q0 + len(q)] = _cache_block(q, keys, key_labels, num_classes, theta, key_block)

    with progress(desc="cache classifier", total=len(starts), unit="block") as bar:
        if workers == 1:
            for q0 in starts:
                run(q0)
                bar.update()
        else:
            caller_threads = torch.get_num_threads()
            try:
                with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                    for _ in pool.map(run, starts):
                        bar.update()
            finally:
                # torch's thread count is per thread, but new threads start from the last value set anywhere.
                torch.set_num_threads(caller_threads)
    return out


def _cache_block(
    queries: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int, theta: float, key_block: int
) -> torch.Tensor:
    """:func:`cache_probabilities` for one block of queries (b, d) against every key: (b, K) float64."""
    acc, _ = _cache_block_sums(queries, keys, key_labels, num_classes, theta, key_block)
    return (acc / acc.sum(dim=0)).T  # (b, K)


def _cache_block_sums(
    queries: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int, theta: float, key_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``acc`` (K, b) float64 of ``2^(θ·log2(e)·q·k − shift)`` and the shift (b,) (base 2).

    ``acc[y] · 2^shift = Σ_{i: y_i = y} exp(θ·q·k_i)``: with the shifts, sums over disjoint key sets (shards)
    combine exactly (:mod:`metriclearn.classify.sharded_cache`).
    """
    device = queries.device
    scaled = queries * (theta * _LOG2E)  # (b, d): base-2 logits come out of the GEMM
    b = scaled.shape[0]
    buffer = torch.empty(min(key_block, keys.shape[0]) * b, device=device)
    shift = torch.full((b,), -math.inf, device=device)  # (b,) per-query exponent shift, ≤ max seen
    acc = torch.zeros(num_classes, b, dtype=torch.float64, device=device)  # (K, b)
    partial = torch.zeros(num_classes, b, device=device)  # (K, b) float32 sums of the last few key blocks
    for i, k0 in enumerate(range(0, keys.shape[0], key_block)):
        key_rows = keys[k0 : k0 + key_block]  # (n_b, d)
        s = buffer[: key_rows.shape[0] * b].view(key_rows.shape[0], b)  # (n_b, b)
        torch.mm(key_rows, scaled.T, out=s)
        block_max = s.amax(dim=0)  # (b,)
        stale = block_max > shift + _SHIFT_SLACK  # (b,) first block, or terms that could overflow float32
        if bool(stale.any()):
            new_shift = torch.where(stale, block_max, shift)
            scale = torch.exp2(shift - new_shift)  # (b,) 0 for the first block, 1 where unchanged
            acc.mul_(scale.double())
            partial.mul_(scale)
            shift = new_shift
        s.sub_(shift).exp2_()  # (n_b, b), every entry in (0, 2^_SHIFT_SLACK]
        partial.index_add_(0, key_labels[k0 : k0 + key_block], s)  # (K, b)
        if (i + 1) % _FOLD_BLOCKS == 0:
            acc.add_(partial)
            partial.zero_()
    acc.add_(partial)
    return acc, shift


def topk_cache_probabilities(
    similarities: torch.Tensor, neighbor_labels: torch.Tensor, num_classes: int, theta: float
) -> torch.Tensor:
    """Cache probabilities over each query's ``k`` nearest keys only.

    Parameters
    ----------
    similarities : (Q, k) cosine similarities of each query to its neighbours.
    neighbor_labels : (Q, k) int64 class codes; ``-1`` marks a missing neighbour (ignored).
    num_classes : number of classes K.
    theta : inverse temperature θ.

    Returns
    -------
    (Q, K) float64 tensor: ``softmax_j(θ·s_j)`` summed per class over the present neighbours.

    Example
    -------
    >>> s = torch.tensor([[0.9, 0.8, 0.1]]); labels = torch.tensor([[1, 0, -1]])
    >>> topk_cache_probabilities(s, labels, 2, theta=10.0).round(decimals=3).tolist()
    [[0.269, 0.731]]
    """
    present = neighbor_labels >= 0  # (Q, k)
    logits = (theta * similarities.double()).masked_fill(~present, -math.inf)  # (Q, k)
    weights = torch.softmax(logits, dim=1)  # (Q, k)
    out = torch.zeros(similarities.shape[0], num_classes, dtype=torch.float64, device=similarities.device)
    return out.scatter_add_(1, neighbor_labels.clamp(min=0), weights.masked_fill(~present, 0.0))


class CacheClassifier(CalibrationMixin, ClassifierMixin, BaseEstimator):
    """Orhan's cache model as a scikit-learn classifier, with a second opinion for any probabilistic model.

    ``p_cache(y|x) ∝ Σ_i exp(θ·cos(x, k_i))·1[y_i = y]`` over the cached (normalised) training features.

    Parameters
    ----------
    theta : float, default=50.0
        Inverse temperature θ > 0 (Orhan searched [10, 90]); larger values trust the nearest keys more.
    lam : float, default=0.5
        Weight λ ∈ [0, 1] of the cache in :meth:`second_opinion` when ``lam`` is not passed there.
    top_k : int or None, default=None
        ``None``: exact, over every cached key. An integer: only the ``top_k`` most similar keys, found
        with an :class:`~metriclearn.indexes.EmbeddingIndex` of ``kind`` (for very large caches).
    kind : str, default="flat"
        Index kind for ``top_k`` mode (``flat``, ``ivf``, ``hnsw``, ``pq`` or a faiss factory string).
    device : str, default="auto"
        Where the exact computation runs: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    query_block, key_block : int, default=512, 2048
        Block sizes of the exact computation (memory: one key_block × query_block float32 matrix).

    Attributes
    ----------
    classes_ : (K,) array of the distinct training labels, sorted; probability columns follow it.
    keys_ : (N, d) float32 array of L2-normalised training features.
    key_codes_ : (N,) int64 array, each key's position in ``classes_``.
    theta_, lam_ : float — θ and λ in use: the parameters after ``fit``, the best pair after :meth:`tune`.
    tuning_ : dict with the grid searched by :meth:`tune` (``thetas``, ``lams``, ``accuracy``, ``log_loss``).
    index_ : EmbeddingIndex over ``keys_`` (``top_k`` mode only): the index of :meth:`from_index` itself when
        it ranks by cosine, else one built over ``keys_``.
    calibration_ : dict, after :meth:`calibrate` (or :meth:`restore_calibration`): θ chosen by negative
        log-likelihood (also set as ``theta_``), the conformal threshold, the rejection rule and what was
        measured (ECE before/after, coverage, set size). :meth:`fit` and :meth:`tune` drop it.

    Notes
    -----
    :meth:`tune` must be given held-out data. Tuning on the cache's own training features leaks: every
    such feature finds itself in the cache (cos = 1), so p_cache is nearly one-hot on the true label and the
    search picks the largest θ and λ, which do not carry over to new data.
    """

    _method = "cache"
    _distance_metric = "cosine"

    def __init__(
        self,
        theta: float = DEFAULT_THETA,
        lam: float = DEFAULT_LAM,
        top_k: int | None = None,
        kind: str = "flat",
        device: str = "auto",
        query_block: int = 512,
        key_block: int = 2048,
    ) -> None:
        self.theta = theta
        self.lam = lam
        self.top_k = top_k
        self.kind = kind
        self.device = device
        self.query_block = query_block
        self.key_block = key_block

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: Any, y: Any) -> CacheClassifier:
        """Store the L2-normalised rows of ``X`` as keys with labels ``y``; returns ``self``."""
        return self._fit(X, y, None)

    def _fit(self, X: Any, y: Any, index: Any) -> CacheClassifier:
        """:meth:`fit`; ``index``: a cosine index holding the rows of ``X`` (its ids in row order) to search with."""
        self._check_params()
        X, y = fit_data(self, X, y)
        for stale in ("calibration_", "_neighbour_index", "_key_rows", "index_"):
            self.__dict__.pop(stale, None)
        self.classes_, self.key_codes_ = encode_targets(y)
        self.keys_ = unit_rows_tensor(torch.from_numpy(X)).numpy()
        self.theta_ = float(self.theta)
        self.lam_ = float(self.lam)
        if index is not None:  # its ids -> rows of keys_ (searches give ids)
            self._key_rows = IdTable()
            self._key_rows.restore(index.ids, None, None, False, 0)
            if self.top_k is not None:
                self.index_ = index
            elif index.kind == "flat":  # exact: it also finds the calibration's nearest keys
                self._neighbour_index = index
        elif self.top_k is not None:
            self.index_ = self._build_index(self.keys_)
        return self

    @classmethod
    def from_index(cls, index: Any, **params: Any) -> CacheClassifier:
        """A fitted cache whose keys and labels are the vectors of a labelled EmbeddingIndex.

        The vectors are read back from the index (normalised again, so any metric works; a PQ index gives
        its lossy reconstruction) and passed to :meth:`fit` with ``params`` (``theta``, ``lam``, ``top_k``,
        ...; ``kind`` defaults to the index's kind). A ``"cosine"`` index of that kind is not copied: ``top_k``
        searches it (and a flat one finds the calibration's nearest keys); other metrics rank otherwise, so
        a cosine index is built over the keys.

        Example
        -------
        >>> from metriclearn.indexes import EmbeddingIndex
        >>> index = EmbeddingIndex(2, metric="cosine", device="cpu")
        >>> _ = index.add(np.array([[1.0, 0], [0.9, 0.1], [0, 1]]), labels=["x", "x", "y"])
        >>> CacheClassifier.from_index(index, theta=10.0).predict(np.array([[0.1, 1.0]])).tolist()
        ['y']
        """
        labels = index_labels(index)  # aligned with index.ids, like index.vectors()
        params.setdefault("kind", index.kind)
        cache = cls(**params)
        reuse = index.metric == "cosine" and cache.kind == index.kind
        return cache._fit(index.vectors(), labels, index if reuse else None)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p_cache(y|x)`` for each row of ``X``: (n, K) float64, columns in ``classes_`` order."""
        return self._cache_proba(query_data(self, X), self.theta_)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class under the cache for each row of ``X``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # ------------------------------------------------------------------ second opinion
    def second_opinion(self, features: Any, model_proba: Any, lam: float | None = None) -> np.ndarray:
        """Blend a model's probabilities with the cache's: ``(1 − λ)·p_model + λ·p_cache``.

        Parameters
        ----------
        features : (n, d) features of the inputs, from the same layer as the cached keys.
        model_proba : (n, K) the model's class probabilities, columns in ``classes_`` order; rows sum to 1.
        lam : λ ∈ [0, 1]; default ``lam_`` (the ``lam`` parameter, or the value chosen by :meth:`tune`).

        Returns
        -------
        (n, K) float64 array of blended probabilities.
        """
        check_is_fitted(self)
        lam = self.lam_ if lam is None else check_fraction(lam, "lam")
        features, model_proba = self._check_opinion_inputs(features, model_proba, "features", "model_proba")
        return (1.0 - lam) * model_proba + lam * self._cache_proba(features, self.theta_)

    def tune(
        self,
        features_val: Any,
        proba_val: Any,
        y_val: Any,
        thetas: Sequence[float] = THETA_GRID,
        lams: Sequence[float] = LAM_GRID,
    ) -> CacheClassifier:
        """Pick θ and λ for :meth:`second_opinion` on held-out data; stores ``theta_``, ``lam_``; returns ``self``.

        Every (θ, λ) pair of the grid is scored by the accuracy of the blended prediction on
        ``(features_val, proba_val, y_val)``; ties go to the lower log-loss, then to the earlier grid entry.
        The data must not be the cache's own training features (see the class notes: that leaks).
        A calibration (:meth:`calibrate`) is dropped: it belonged to another θ.

        Parameters
        ----------
        features_val : (n, d) held-out features.
        proba_val : (n, K) the model's probabilities on them (columns in ``classes_`` order).
        y_val : (n,) their true labels (values from ``classes_``).
        thetas, lams : grids; defaults are Orhan's ranges θ ∈ {10, …, 90}, λ ∈ {0.1, …, 0.9}.
        """
        check_is_fitted(self)
        features_val, proba_val = self._check_opinion_inputs(features_val, proba_val, "features_val", "proba_val")
        codes = known_codes(self.classes_, y_val, "y_val", len(features_val))
        thetas = [check_positive_float(t, "thetas") for t in _non_empty(thetas, "thetas")]
        lams = [check_fraction(lam, "lams") for lam in _non_empty(lams, "lams")]
        rows = np.arange(len(codes))
        accuracy = np.empty((len(thetas), len(lams)))
        log_loss = np.empty((len(thetas), len(lams)))
        for i, theta in enumerate(thetas):
            p_cache = self._cache_proba(features_val, theta)  # (n, K), computed once per θ
            for j, lam in enumerate(lams):
                blended = (1.0 - lam) * proba_val + lam * p_cache  # (n, K)
                accuracy[i, j] = np.mean(blended.argmax(axis=1) == codes)
                log_loss[i, j] = -np.mean(np.log(np.clip(blended[rows, codes], 1e-15, 1.0)))
        order = np.lexsort((log_loss.ravel(), -accuracy.ravel()))  # by accuracy, then log-loss, then grid order
        best_i, best_j = np.unravel_index(order[0], accuracy.shape)
        self.theta_, self.lam_ = float(thetas[best_i]), float(lams[best_j])
        self.__dict__.pop("calibration_", None)  # it held another θ
        self.tuning_ = {"thetas": thetas, "lams": lams, "accuracy": accuracy, "log_loss": log_loss}
        return self

    # ------------------------------------------------------------------ calibration hooks (CalibrationMixin)
    def _proba_with(self, X: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
        return self._cache_proba(X, self.theta_ if params is None else params["theta"])

    def _probability_grids(self) -> dict[str, tuple[float, ...]]:
        return {"theta": CALIBRATION_THETAS}

    def _probability_candidates(self, X: np.ndarray, grids: dict[str, tuple[float, ...]]
                                ) -> Iterator[tuple[dict[str, Any], dict[str, float], np.ndarray]]:
        for theta in grids["theta"]:
            yield {"theta": theta}, {"theta": theta}, self._cache_proba(X, theta)

    def _apply_probability(self, params: dict[str, Any]) -> None:
        self.theta_ = float(params["theta"])

    def _classifier_params(self) -> dict[str, Any]:
        return {"top_k": None if self.top_k is None else int(self.top_k)}

    def _reference_size(self) -> int:
        return len(self.keys_)

    def _neighbour_distances(self, X: np.ndarray, m: int) -> np.ndarray:
        """Cosine distances ``1 − cos`` (n, m) to the ``m`` most similar keys, exact in float64."""
        from metriclearn.classify.knn import exact_distances

        index = getattr(self, "index_", None)  # top_k mode: the keys' own index
        if index is None:
            index = getattr(self, "_neighbour_index", None)
        if index is None:
            index = self._neighbour_index = self._build_index(self.keys_, kind="flat")
        # searched as unit rows, like the top-k probabilities' search, so one search can serve both (classify --reject)
        _, ids = index.search(unit_rows_tensor(torch.from_numpy(X)).numpy(), m)
        distances = exact_distances(X, self.keys_, self._rows(ids), "cosine")
        return np.sort(distances, axis=1)

    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored (normalised) keys (N, d) and their class codes (N,)."""
        return self.keys_, self.key_codes_

    def _without_class(self, code: int) -> CacheClassifier:
        """An uncalibrated cache over the keys of every class but ``code`` (codes as labels; flat index)."""
        keep = self.key_codes_ != code
        top_k = None if self.top_k is None else min(self.top_k, int(keep.sum()))
        other = CacheClassifier(theta=self.theta_, top_k=top_k, kind="flat", device=self.device,
                                query_block=self.query_block, key_block=self.key_block)
        return other.fit(self.keys_[keep], self.key_codes_[keep])

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        check_positive_float(self.theta, "theta")
        check_fraction(self.lam, "lam")
        if self.top_k is not None:
            check_positive_int(self.top_k, "top_k")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be an index kind such as 'flat', got {self.kind!r}")
        resolve_device(self.device)
        check_positive_int(self.query_block, "query_block")
        check_positive_int(self.key_block, "key_block")

    def _build_index(self, keys: np.ndarray, kind: str | None = None) -> Any:
        from metriclearn.indexes import EmbeddingIndex

        index = EmbeddingIndex(keys.shape[1], metric="cosine", kind=kind or self.kind, device=self.device)
        index.add(keys, ids=np.arange(len(keys), dtype=np.int64))
        return index

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``keys_`` (int64, −1 stays −1) of the ids a search of ``index_`` / ``_neighbour_index`` gave."""
        table = getattr(self, "_key_rows", None)
        return np.asarray(ids, dtype=np.int64) if table is None else table.rows_for(ids)

    def _cache_proba(self, X: np.ndarray, theta: float) -> np.ndarray:
        """p_cache for validated float32 features ``X`` (n, d) at inverse temperature ``theta``."""
        device = resolve_device(self.device)
        queries = unit_rows_tensor(torch.from_numpy(X).to(device))  # (n, d)
        if self.top_k is None:
            keys = torch.from_numpy(self.keys_).to(device)  # (N, d)
            labels = torch.from_numpy(self.key_codes_).to(device)  # (N,)
            proba = cache_probabilities(
                queries, keys, labels, len(self.classes_), theta, self.query_block, self.key_block
            )
        else:
            proba = self._topk_proba(queries, theta)
        return proba.cpu().numpy()

    def _topk_proba(self, queries: torch.Tensor, theta: float) -> torch.Tensor:
        assert self.top_k is not None  # the caller checked
        if self.top_k > len(self.keys_):
            raise ValueError(f"top_k={self.top_k} is larger than the cache ({len(self.keys_)} keys)")
        _, ids = self.index_.search(queries.cpu().numpy(), self.top_k)  # (n, k) key ids, -1 if none
        ids = torch.from_numpy(self._rows(ids)).to(queries.device)  # (n, k) rows of keys_, -1 if none
        keys = torch.from_numpy(self.keys_).to(queries.device)
        codes = torch.from_numpy(self.key_codes_).to(queries.device)
        sims = torch.empty(ids.shape, device=queries.device)  # (n, k)
        for q0 in range(0, len(ids), self.query_block):  # bounded memory: a (b, k, d) gather per block
            rows = ids[q0 : q0 + self.query_block].clamp(min=0)  # (b, k)
            # Exact cosines of the neighbours found (the index may be approximate or lossy, e.g. PQ).
            sims[q0 : q0 + self.query_block] = torch.einsum("bd,bkd->bk", queries[q0 : q0 + len(rows)], keys[rows])
        labels = codes[ids.clamp(min=0)].masked_fill(ids < 0, -1)  # (n, k)
        return topk_cache_probabilities(sims, labels, len(self.classes_), theta)

    def _check_opinion_inputs(
        self, features: Any, proba: Any, features_name: str, proba_name: str
    ) -> tuple[np.ndarray, np.ndarray]:
        features = check_matrix(features, features_name, dim=self.n_features_in_)
        proba = check_probabilities(proba, proba_name, n=len(features), num_classes=len(self.classes_),
                                    rows=f"rows of {features_name}", columns="classes in classes_")
        return features, proba


def _non_empty(values: Sequence[float], name: str) -> Sequence[float]:
    if isinstance(values, (str, bytes)) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    return values
