"""k-nearest-neighbour classifier on an :class:`~metriclearn.indexes.EmbeddingIndex`.

The index finds each query's ``k`` nearest training points; their labels vote:

    p(y | x) = Σ_{j ∈ N_k(x)} w_j·1[y_j = y]  /  Σ_{j ∈ N_k(x)} w_j

with ``w_j = 1`` (``weights="uniform"``) or ``w_j = 1 / d(x, x_j)`` (``weights="distance"``), where ``d`` is
the Euclidean distance (``metric="l2"``) or the cosine distance ``1 − cos`` (``metric="cosine"``) — the
definitions of scikit-learn's ``KNeighborsClassifier(metric="euclidean"|"cosine")``. As there, a query that
coincides with training points (``d = 0``) takes its vote from those points only, each with weight 1.

The distances of the ``k`` neighbours found are recomputed in float64 from the stored training vectors
(Q·k·d work, negligible next to the search), so exact matches are exactly 0 and ``kind="flat"`` gives the
same neighbours, distances and predictions as ``KNeighborsClassifier(algorithm="brute")`` up to ties in
distance. Approximate kinds (``ivf``, ``hnsw``, ``pq``) trade exactness of the neighbour set for speed.

Example
-------
>>> import numpy as np
>>> X = np.array([[0.0, 0], [0, 1], [5, 5], [5, 6]])
>>> knn = KNNClassifier(n_neighbors=2, weights="uniform", device="cpu").fit(X, ["a", "a", "b", "b"])
>>> knn.predict(np.array([[0.2, 0.3], [5.1, 5.4]])).tolist()
['a', 'b']
>>> knn.predict_proba(np.array([[2.5, 3.0]])).tolist()  # equidistant from (0, 1) and (5, 5)
[[0.5, 0.5]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from metriclearn._checks import check_choice, check_positive_int
from metriclearn.classify._validation import class_codes, encode_targets, fit_data, index_labels, query_data
from metriclearn.classify.calibration import CalibrationMixin
from metriclearn.classify.defaults import DEFAULT_K

WEIGHTS = ("distance", "uniform")
METRICS = ("l2", "cosine")
#: Grids of the vote calibration ``p_y ∝ (V_y + ε)^{1/T}`` (see :meth:`KNNClassifier.calibrate`); ε is a
#: share of the median total vote weight of the rows it is fitted on.
TEMPERATURES: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.05, 20.0, 49))
RELATIVE_SMOOTHINGS: tuple[float, ...] = tuple(float(r) for r in np.geomspace(1e-4, 1.0, 9))
MIN_DISTANCE = 1e-12  # unnormalised distance weights: 1 / max(d, MIN_DISTANCE), so exact matches dominate


def neighbor_weights(distances: np.ndarray, weights: str) -> np.ndarray:
    """Vote weights for neighbours at ``distances`` (n, k): ones, or ``1/d`` with exact matches winning.

    A row holding a zero distance gives weight 1 to its zero-distance neighbours and 0 to the others
    (scikit-learn's rule); ``inf`` distances (missing neighbours) get weight 0.

    Example
    -------
    >>> neighbor_weights(np.array([[0.5, 2.0], [0.0, 1.0]]), "distance").tolist()
    [[2.0, 0.5], [1.0, 0.0]]
    """
    if weights == "uniform":
        return np.isfinite(distances).astype(np.float64)
    with np.errstate(divide="ignore"):
        inverse = 1.0 / distances  # (n, k); 1/0 = inf marks exact matches, 1/inf = 0 missing ones
    exact = np.isinf(inverse)
    rows = exact.any(axis=1)
    inverse[rows] = exact[rows]
    return inverse


def vote(neighbor_codes: np.ndarray, weights: np.ndarray, num_classes: int, normalize: bool = True) -> np.ndarray:
    """Class probabilities (n, K) from neighbour class codes (n, k) and their weights (n, k).

    ``normalize=False``: the per-class sums of the weights, not divided by their total.

    Example
    -------
    >>> vote(np.array([[0, 1, 1]]), np.array([[2.0, 1.0, 1.0]]), 3).tolist()
    [[0.5, 0.5, 0.0]]
    """
    n = neighbor_codes.shape[0]
    proba = np.zeros((n, num_classes))
    np.add.at(proba, (np.repeat(np.arange(n), neighbor_codes.shape[1]), neighbor_codes.ravel()), weights.ravel())
    if not normalize:
        return proba
    total = proba.sum(axis=1, keepdims=True)
    total[total == 0.0] = 1.0
    return proba / total


class KNNClassifier(CalibrationMixin, ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour vote over an :class:`~metriclearn.indexes.EmbeddingIndex` (scikit-learn estimator).

    Parameters
    ----------
    n_neighbors : int, default=10
        Neighbours that vote (at most the number of training samples).
    weights : {"distance", "uniform"}, default="distance"
        ``"distance"``: weight ``1/d`` (exact matches take the whole vote); ``"uniform"``: equal weights.
    metric : {"l2", "cosine"}, default="l2"
        Euclidean distance or cosine distance ``1 − cos`` (the index normalises for ``"cosine"``).
    kind : str, default="flat"
        Index kind: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, ``"pq"`` or a faiss factory string.
    device : str, default="auto"
        Device of the index (``"auto"`` uses a GPU when faiss-gpu and one are available).

    Attributes
    ----------
    classes_ : (K,) sorted distinct training labels; probability columns follow it.
    index_ : the fitted EmbeddingIndex (ids ``0..n-1`` are the training rows, labels attached).
    fit_X_ : (n, d) float32 training vectors (to recompute the neighbours' distances exactly); None after
        :meth:`from_index`, which uses the index's own distances.
    fit_codes_ : (n,) int64 position of each training label in ``classes_``.
    calibration_ : dict, after :meth:`calibrate` (or :meth:`restore_calibration`): the vote calibration
        ``p_y ∝ (v_y + ε)^{1/T}`` (``probability``: ``temperature`` T, ``smoothing`` ε, chosen by NLL), the
        conformal threshold, the rejection rule and what was measured (ECE before/after, coverage, set size).
        :meth:`predict_proba` returns calibrated probabilities while it is set; :meth:`fit` drops it.
    """

    _method = "knn"

    def __init__(
        self,
        n_neighbors: int = DEFAULT_K,
        weights: str = "distance",
        metric: str = "l2",
        kind: str = "flat",
        device: str = "auto",
    ) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.metric = metric
        self.kind = kind
        self.device = device

    def fit(self, X: Any, y: Any) -> KNNClassifier:
        """Index the rows of ``X`` (ids ``0..n-1``) with their labels ``y``; returns ``self``."""
        self._check_params()
        X, y = fit_data(self, X, y)
        self.__dict__.pop("calibration_", None)
        self.classes_, self.fit_codes_ = encode_targets(y)
        self.fit_X_ = X
        from metriclearn.indexes import EmbeddingIndex

        self.index_ = EmbeddingIndex(X.shape[1], metric=self.metric, kind=self.kind, device=self.device)
        self.index_.add(X, labels=self.fit_codes_, ids=np.arange(len(X), dtype=np.int64))
        return self

    @classmethod
    def from_index(cls, index: Any, n_neighbors: int = DEFAULT_K, weights: str = "distance") -> KNNClassifier:
        """A fitted classifier over an existing, labelled EmbeddingIndex (e.g. ``EmbeddingIndex.load(dir)``).

        The index's ``metric`` (``"l2"`` or ``"cosine"``), ``kind`` and ``device`` become the parameters.
        Neighbour distances are the index's own (float32, ``sqrt`` of its squared L2 or ``1 − similarity``):
        there are no stored training vectors to recompute them from, so an exact match may come out at a
        distance of ~1e-7 instead of 0. ``kneighbors`` returns the index's ids.

        Example
        -------
        >>> from metriclearn.indexes import EmbeddingIndex
        >>> index = EmbeddingIndex(2, metric="l2", device="cpu")
        >>> _ = index.add(np.array([[0.0, 0], [0, 1], [5, 5]]), labels=[7, 7, 9], ids=[10, 11, 12])
        >>> knn = KNNClassifier.from_index(index, n_neighbors=1)
        >>> knn.predict(np.array([[4.0, 4.0]])).tolist(), knn.kneighbors(np.array([[4.0, 4.0]]))[1].tolist()
        ([9], [[12]])
        """
        if index.metric not in METRICS:
            raise ValueError(f"a kNN classifier needs an index with metric 'l2' or 'cosine', got {index.metric!r}")
        knn = cls(n_neighbors=n_neighbors, weights=weights, metric=index.metric, kind=index.kind, device=index.device)
        knn._check_params()
        knn.classes_ = encode_targets(index_labels(index))[0]
        knn.index_, knn.fit_X_, knn.n_features_in_ = index, None, index.dim
        return knn

    def _check_params(self) -> None:
        check_positive_int(self.n_neighbors, "n_neighbors")
        check_choice(self.weights, WEIGHTS, "weights")
        check_choice(self.metric, METRICS, "metric")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be an index kind such as 'flat', got {self.kind!r}")

    def kneighbors(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_neighbors`` nearest training rows of each query, nearest first.

        Returns
        -------
        distances : (n, k) float64 distances (Euclidean or ``1 − cos``); ``inf`` where none was found.
        indices : (n, k) int64 training-row positions (index ids after :meth:`from_index`); ``-1`` if none.
        """
        return self._neighbors(query_data(self, X))

    def _neighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`kneighbors` of validated queries."""
        k = self.n_neighbors
        if k > len(self.index_):
            raise ValueError(f"n_neighbors={k} is larger than the number of indexed samples ({len(self.index_)})")
        return self._search(X, k)

    def _search(self, X: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Distances and ids of the ``k`` nearest stored vectors of validated queries, nearest first.

        ``exact=True`` recomputes the distances in float64 from the index's vectors after :meth:`from_index`
        too (where the kind can give them back), so exact duplicates come out at 0.
        """
        D, ids = self.index_.search(X, k)  # (n, k)
        ids = np.asarray(ids, dtype=np.int64)
        if self.fit_X_ is not None:
            distances = exact_distances(X, self.fit_X_, ids, self.metric)  # (n, k)
        elif exact and (found := np.unique(ids[ids >= 0])).size:
            try:
                stored = self.index_.vectors(found)  # (u, d) rows in ``found`` order
            except ValueError:  # a kind that cannot give its vectors back: keep the index's distances
                return self._search(X, k)
            rows = np.where(ids >= 0, np.searchsorted(found, ids), -1)
            distances = exact_distances(X, stored, rows, self.metric)
        elif self.metric == "l2":
            distances = np.sqrt(np.maximum(D.astype(np.float64), 0.0))  # squared L2 -> L2; inf stays inf
        else:
            distances = np.where(ids >= 0, np.clip(1.0 - D.astype(np.float64), 0.0, 2.0), np.inf)
        order = np.argsort(distances, axis=1, kind="stable")
        return np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Weighted neighbour vote per class: (n, K) float64, columns in ``classes_`` order.

        After :meth:`calibrate`, the calibrated votes ``p_y ∝ (v_y + ε)^{1/T}``.
        """
        calibration = getattr(self, "calibration_", None)
        return self._proba_with(query_data(self, X), None if calibration is None else calibration["probability"])

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest vote (the first in ``classes_`` on a tie, like scikit-learn)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # ------------------------------------------------------------------ calibration hooks (CalibrationMixin)
    def _votes(self, X: np.ndarray, normalize: bool = True) -> np.ndarray:
        """The weighted vote (n, K) of validated queries; ``normalize=False``: unnormalised class weights ``V``.

        Unnormalised distance weights are ``1 / max(d, MIN_DISTANCE)``, so ``V`` keeps how close the
        neighbours are (exact matches still dominate).
        """
        distances, ids = self._neighbors(X)
        if self.fit_X_ is not None:
            codes = self.fit_codes_[np.clip(ids, 0, None)]  # (n, k) ids are training rows
        else:
            labels = self.index_.labels_for(ids, missing=self.classes_[0])  # (n, k); missing ones weigh 0
            codes = class_codes(self.classes_, labels)[0]  # (n, k)
        if normalize:
            weights = neighbor_weights(distances, self.weights)  # (n, k) missing: weight 0
        elif self.weights == "uniform":
            weights = np.isfinite(distances).astype(np.float64)
        else:
            weights = np.where(np.isfinite(distances), 1.0 / np.maximum(distances, MIN_DISTANCE), 0.0)
        return vote(codes, weights, len(self.classes_), normalize=normalize)

    def _proba_with(self, X: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
        if params is None:
            return self._votes(X)
        return calibrated_votes(self._votes(X, normalize=False), params["temperature"], params["smoothing"])

    def _probability_grids(self) -> dict[str, tuple[float, ...]]:
        return {"temperature": TEMPERATURES, "relative smoothing": RELATIVE_SMOOTHINGS}

    def _probability_candidates(self, X: np.ndarray, grids: dict[str, tuple[float, ...]]
                                ) -> Iterator[tuple[dict[str, Any], dict[str, float], np.ndarray]]:
        weights = self._votes(X, normalize=False)  # (n, K)
        scale = float(np.median(weights.sum(axis=1)))
        for relative in grids["relative smoothing"]:
            for temperature in grids["temperature"]:
                params = {"temperature": temperature, "smoothing": relative * scale}
                point = {"temperature": temperature, "relative smoothing": relative}
                yield params, point, calibrated_votes(weights, temperature, relative * scale)

    def _apply_probability(self, params: dict[str, Any]) -> None:
        """Nothing to set: :meth:`predict_proba` reads ``calibration_``."""

    def _classifier_params(self) -> dict[str, Any]:
        return {"n_neighbors": int(self.n_neighbors), "weights": self.weights, "metric": self.metric}

    @property
    def _distance_metric(self) -> str:
        return self.metric

    def _reference_size(self) -> int:
        return len(self.index_)

    def _neighbour_distances(self, X: np.ndarray, m: int) -> np.ndarray:
        return self._search(X, m, exact=True)[0]

    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors (N, d) and their class codes (N,)."""
        if self.fit_X_ is not None:
            return self.fit_X_, self.fit_codes_
        return self.index_.vectors(), class_codes(self.classes_, self.index_.labels)[0]

    def _without_class(self, code: int) -> KNNClassifier:
        """An uncalibrated exact kNN over the stored vectors of every class but ``code`` (codes as labels)."""
        vectors, codes = self._reference()
        keep = codes != code
        k = min(self.n_neighbors, int(keep.sum()))
        other = KNNClassifier(n_neighbors=k, weights=self.weights, metric=self.metric, kind="flat", device="cpu")
        return other.fit(vectors[keep], codes[keep])


def calibrated_votes(votes: np.ndarray, temperature: float, smoothing: float) -> np.ndarray:
    """Temperature-scaled, smoothed votes: ``p_y = (V_y + ε)^{1/T} / Σ_c (V_c + ε)^{1/T}`` (n, K).

    ``V`` are the unnormalised class weights of the vote (with distance weights ``Σ 1/d_j``, so it is larger
    when the neighbours are close): the pseudo-count ``ε > 0`` keeps classes without votes possible (a finite
    log-likelihood) and lowers the confidence of queries whose neighbours are all far away; ``T > 1``
    flattens, ``T < 1`` sharpens. Monotone in ``V`` row by row, so the predicted class does not change.

    Example
    -------
    >>> calibrated_votes(np.array([[0.8, 0.2, 0.0]]), temperature=1.0, smoothing=0.1).round(3).tolist()
    [[0.692, 0.231, 0.077]]
    """
    logits = np.log(votes + smoothing) / temperature  # (n, K)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def exact_distances(
    queries: np.ndarray, points: np.ndarray, ids: np.ndarray, metric: str, block: int = 4096
) -> np.ndarray:
    """Float64 distances from each query (n, d) to ``points[ids]`` (ids (n, k), ``-1`` -> ``inf``).

    ``metric="l2"``: ``‖q − p‖``; ``"cosine"``: ``1 − q·p / (‖q‖‖p‖)`` (zero vectors have cosine 0).

    Example
    -------
    >>> exact_distances(np.array([[3.0, 4.0]]), np.array([[0.0, 0], [3, 4]]), np.array([[0, 1]]), "l2").tolist()
    [[5.0, 0.0]]
    """
    out = np.full(ids.shape, np.inf)
    for start in range(0, len(queries), block):
        q = queries[start : start + block].astype(np.float64)  # (b, d)
        idx = ids[start : start + block]  # (b, k)
        p = points[np.clip(idx, 0, None)].astype(np.float64)  # (b, k, d)
        if metric == "l2":
            diff = p - q[:, None, :]  # (b, k, d)
            dist = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))  # (b, k)
        else:
            qn = _unit(q)  # (b, d)
            pn = _unit(p)  # (b, k, d)
            dist = np.clip(1.0 - np.einsum("bd,bkd->bk", qn, pn), 0.0, 2.0)  # (b, k)
        out[start : start + block] = np.where(idx >= 0, dist, np.inf)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0.0, 1.0, norm)
