"""What both classifiers share: input validation in the scikit-learn way and label encoding.

Example
-------
>>> import numpy as np
>>> classes, codes = encode_targets(np.array(["b", "a", "b"]))
>>> classes.tolist(), codes.tolist()
(['a', 'b'], [1, 0, 1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from metriclearn._checks import check_matrix


def encode_targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes_, codes)``: the sorted distinct labels and each label's int64 position in them.

    Raises ``ValueError`` for targets that are not class labels (e.g. continuous floats).
    """
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes.astype(np.int64).ravel()


def fit_data(estimator: Any, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate training data for ``estimator.fit``: X as a 2-D finite float32 array, y as labels.

    Sets ``n_features_in_`` (and ``feature_names_in_`` for data frames) as scikit-learn expects.
    """
    X, y = validate_data(estimator, X, y, dtype=np.float32, order="C", ensure_all_finite=False)
    return _finite(X, "X"), y


def query_data(estimator: Any, X: Any) -> np.ndarray:
    """Validate query data for a fitted ``estimator``: 2-D finite float32 of the width seen in ``fit``."""
    check_is_fitted(estimator)
    return _finite(validate_data(estimator, X, dtype=np.float32, order="C", reset=False, ensure_all_finite=False), "X")


def _finite(X: np.ndarray, name: str) -> np.ndarray:
    """``X`` when every value is finite; else our one-line message (not scikit-learn's advice on imputers)."""
    return check_matrix(X, name, allow_empty=True)


def index_labels(index: Any) -> np.ndarray:
    """The labels an :class:`~metriclearn.indexes.EmbeddingIndex` carries, aligned with ``index.ids``."""
    labels = index.labels
    if labels is None:
        raise ValueError(
            "the index carries no labels; build it with labels (metriclearn index build --labels FILE.npy)"
        )
    if len(labels) == 0:
        raise ValueError("the index is empty")
    return labels

