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

from metriclearn._checks import check_labels, check_matrix


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


def class_codes(classes: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, known)``: each label's int64 position in the sorted ``classes``, and whether it is one of them.

    The one "label in ``classes_``" look-up; where ``known`` is false the code is meaningless.

    >>> codes, known = class_codes(np.array(["a", "c"]), np.array(["c", "b", "a"]))
    >>> codes.tolist(), known.tolist()
    ([1, 1, 0], [True, False, True])
    """
    codes = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1).astype(np.int64)
    return codes, classes[codes] == y


def known_codes(classes: np.ndarray, y: Any, name: str, n: int, hint: str = "") -> np.ndarray:
    """:func:`class_codes` of labels that must all be classes: a ``ValueError`` naming the first that is not
    (``hint`` appended to it), or labels of the other type (strings for integer classes, or the reverse)."""
    y = check_labels(y, name, n=n)
    if (y.dtype.kind in "US") != (classes.dtype.kind in "US"):
        kinds = ["string" if a.dtype.kind in "US" else "integer" for a in (y, classes)]
        raise ValueError(f"{name} holds {kinds[0]} labels, but the classifier's classes are {kinds[1]}s")
    codes, known = class_codes(classes, y)
    if not known.all():
        raise ValueError(f"{name} holds labels the classifier does not know, e.g. {y[~known][0].tolist()!r}{hint}")
    return codes


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

