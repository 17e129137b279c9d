"""Classifiers over a labelled index: which one a stored calibration belongs to, and whether an option contradicts it.

``metriclearn calibrate`` stores a calibration per method in the index's manifest
(``index.attrs["calibration"]["knn" | "cache"]``, see :mod:`metriclearn.classify.calibration`). Later commands
(``classify``, ``evaluate --index``, ``report --index``) and the explorer rebuild the classifier it was made
for through here:

- ``knn``: :meth:`KNNClassifier.from_index` with ``n_neighbors = k`` (default min(``DEFAULT_K``, n)) and
  ``weights`` (default ``"distance"``);
- ``cache``: :meth:`CacheClassifier.from_index` with ``theta`` (default ``DEFAULT_THETA``) and ``top_k = k``
  (default: exact, every key); on a sharded index, the exact :class:`~metriclearn.classify.sharded_cache.ShardedCache`
  (no top-k, and no calibration: it refuses one in one line);
- a stored calibration is used unless an option contradicts the parameters it was made with
  (:func:`calibration_clash`); then the options win and the calibration is left aside, unless the caller
  needs it (prediction sets, rejection): then it is an :class:`OptionClash`.

Every classifier returned follows :class:`IndexClassifier`.

Example
-------
>>> import numpy as np
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(2, metric="l2", device="cpu")
>>> _ = index.add(np.array([[0.0, 0], [0, 1], [5, 5]]), labels=[7, 7, 9])
>>> knn, calibration = classifier_from_index(index, "knn")
>>> knn.n_neighbors, calibration  # no calibration stored: the defaults (k at most the index size)
(3, None)
>>> calibration_clash({"classifier": {"n_neighbors": 10, "weights": "distance"}}, "knn", k=5)
'--k 5 differs from the k=10 the index was calibrated with'
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from metriclearn._checks import check_choice
from metriclearn.classify.defaults import DEFAULT_K, DEFAULT_THETA

METHODS = ("knn", "cache")


class IndexClassifier(Protocol):
    """What every classifier over an index answers (KNNClassifier, CacheClassifier, ShardedCache).

    ``calibrate``, ``restore_calibration``, ``predict_sets`` and ``predict_with_rejection`` may refuse with a
    one-line ``ValueError`` (a sharded cache cannot be calibrated). ``proba``: the rows' calibrated
    probabilities when already computed (``predict_proba(X)``), so they are not computed again.
    """

    classes_: np.ndarray

    def predict_proba(self, X: Any) -> np.ndarray: ...
    def predict(self, X: Any) -> np.ndarray: ...
    def calibrate(self, X_cal: Any, y_cal: Any, alpha: float = 0.1, target_precision: float | None = None,
                  **options: Any) -> Any: ...
    def restore_calibration(self, state: dict[str, Any]) -> Any: ...
    def predict_sets(self, X: Any, proba: np.ndarray | None = None) -> np.ndarray: ...
    def predict_with_rejection(self, X: Any, proba: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class OptionClash(ValueError):
    """An option that contradicts the index: a top-k cache on a sharded index, or a calibrated parameter.

    The CLI shows it as a usage error (exit 2).
    """


def classifier_for(index: Any, method: str, k: int | None = None, theta: float | None = None,
                   weights: str | None = None, device: str = "auto") -> IndexClassifier:
    """The uncalibrated ``method`` classifier over ``index`` with these options (``None``: the defaults above)."""
    check_choice(method, METHODS, "method")
    if method == "knn":  # numpy, faiss and scikit-learn: no torch (the cache model computes with torch)
        from metriclearn.classify.knn import KNNClassifier

        k = k if k is not None else min(DEFAULT_K, len(index))
        return KNNClassifier.from_index(index, n_neighbors=k, weights=weights or "distance")
    theta = DEFAULT_THETA if theta is None else theta
    if hasattr(index, "shards"):  # sharded: per-shard sums combined exactly, rank r holds shard r (docs/SCALING.md)
        from metriclearn.classify.sharded_cache import ShardedCache

        if k is not None:
            raise OptionClash("--k (top-k cache) needs an unsharded index; a sharded one runs the exact cache")
        return ShardedCache(index, theta=theta, device=device)
    from metriclearn.classify.cache import CacheClassifier

    return CacheClassifier.from_index(index, theta=theta, top_k=k, device=device)


def stored_calibration(index: Any, method: str) -> dict[str, Any] | None:
    """The calibration ``metriclearn calibrate`` stored in ``index`` for ``method``, or ``None``."""
    return (index.attrs.get("calibration") or {}).get(method)


def calibration_clash(calibration: dict[str, Any], method: str, k: int | None = None, theta: float | None = None,
                      weights: str | None = None) -> str | None:
    """Which option contradicts the parameters ``calibration`` was made with, in words; ``None`` when none does."""
    params = calibration.get("classifier", {})
    if method == "knn":
        if k is not None and k != params.get("n_neighbors"):
            return f"--k {k} differs from the k={params.get('n_neighbors')} the index was calibrated with"
        if weights is not None and weights != params.get("weights"):
            return f"--weights {weights} differs from the calibrated weights={params.get('weights')}"
        return None
    if theta is not None:
        return f"--theta {theta:g} contradicts the calibrated theta={calibration['probability']['theta']:.4g}"
    if k is not None and k != params.get("top_k"):
        return f"--k {k} differs from the top_k={params.get('top_k')} the index was calibrated with"
    return None


def calibrated_classifier(index: Any, method: str, calibration: dict[str, Any], device: str = "auto",
                          index_dir: str | os.PathLike[str] | None = None) -> IndexClassifier:
    """The classifier ``calibration`` (stored in ``index``) was made for, with it restored.

    ``index_dir`` (where ``index`` was loaded from) names it in the message when the calibration does not fit.
    """
    params = calibration.get("classifier", {})
    k = params.get("n_neighbors") if method == "knn" else params.get("top_k")
    classifier = classifier_for(index, method, k, None, params.get("weights"), device)
    try:
        return classifier.restore_calibration(calibration)
    except ValueError as exc:
        raise ValueError(f"{_name(index_dir)}: its stored calibration does not fit it ({exc})") from None


def classifier_from_index(index: Any, method: str, k: int | None = None, theta: float | None = None,
                          weights: str | None = None, device: str = "auto", *, need_calibration: bool = False,
                          index_dir: str | os.PathLike[str] | None = None
                          ) -> tuple[IndexClassifier, dict[str, Any] | None]:
    """The classifier a command uses over ``index``, and the calibration in use (``None``: uncalibrated).

    The stored calibration of ``method`` is used when no option contradicts it; else the options win.
    ``need_calibration`` (prediction sets, rejection): a missing calibration is a ``ValueError`` and a
    contradicting option an :class:`OptionClash`. ``index_dir`` (where ``index`` was loaded from) names it
    in messages.
    """
    calibration = stored_calibration(index, method)
    if calibration is None:
        if need_calibration:
            raise ValueError(
                f"{_name(index_dir)} is not calibrated for --method {method}, so --sets/--reject have no threshold: "
                f"run `metriclearn calibrate --index {index_dir or 'DIR'} --embeddings ... --labels ... "
                f"--method {method}` first"
            )
        return classifier_for(index, method, k, theta, weights, device), None
    clash = calibration_clash(calibration, method, k, theta, weights)
    if clash is None:
        return calibrated_classifier(index, method, calibration, device, index_dir), calibration
    if need_calibration:
        raise OptionClash(f"{clash}: drop it to use the calibration, or recalibrate")
    return classifier_for(index, method, k, theta, weights, device), None


def _name(index_dir: str | os.PathLike[str] | None) -> str:
    return "the index" if index_dir is None else f"index {str(index_dir)!r}"


def predict_with_index(classifier: IndexClassifier, queries: np.ndarray, reject: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(proba, predictions, rejected)`` of ``queries``, with one index search for all of it.

    The vote's ``k`` nearest (kNN, top-k cache) and, with ``reject``, the acceptance score's
    ``NEIGHBOURS_FOR_FEATURES`` nearest come from one search at the larger depth
    (:func:`~metriclearn.classify._shared_search.shared_search`). ``rejected`` is ``None`` without ``reject``.
    A collective on a sharded index under torchrun: call it on every rank.
    """
    from metriclearn.classify._shared_search import shared_search
    from metriclearn.classify.calibration import NEIGHBOURS_FOR_FEATURES

    depth = max(int(getattr(classifier, "n_neighbors", 0) or 0), int(getattr(classifier, "top_k", 0) or 0),
                NEIGHBOURS_FOR_FEATURES if reject else 0)
    with shared_search(classifier, depth):
        proba = classifier.predict_proba(queries)  # (n, K)
        if not reject:
            return proba, classifier.classes_[np.argmax(proba, axis=1)], None
        predictions, rejected = classifier.predict_with_rejection(queries, proba=proba)
    return proba, predictions, rejected
