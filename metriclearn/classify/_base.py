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
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


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
    X, y = validate_data(estimator, X, y, dtype=np.float32, order="C")
    return X, y


def query_data(estimator: Any, X: Any) -> np.ndarray:
    """Validate query data for a fitted ``estimator``: 2-D finite float32 of the width seen in ``fit``."""
    check_is_fitted(estimator)
    return validate_data(estimator, X, dtype=np.float32, order="C", reset=False)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` as given."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but no CUDA GPU is available")
    return resolved


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


def index_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Read the stored vectors back from an EmbeddingIndex: ``(vectors (n, d) float32, ids (n,))``.

    Flat, HNSW and IVF indexes give the vectors as added (normalised for ``metric="cosine"``); PQ-coded
    ones give their lossy reconstruction. Raises ``ValueError`` for an index that cannot reconstruct.
    """
    import faiss

    outer = index.faiss_index
    if outer is None or outer.ntotal == 0:
        raise ValueError("the index is empty")
    outer = faiss.downcast_index(outer)
    try:
        if hasattr(outer, "id_map"):  # IndexIDMap: the wrapped index's rows, their ids beside them
            ids = faiss.vector_to_array(outer.id_map).astype(np.int64)
            vectors = faiss.downcast_index(outer.index).reconstruct_n(0, outer.ntotal)
        else:  # IVF kinds keep the ids in their lists: look them up through a hash-table direct map
            ids = np.asarray(index.ids, dtype=np.int64)
            ivf = faiss.try_extract_index_ivf(outer)
            if ivf is not None:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            vectors = outer.reconstruct_batch(ids)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cannot read the vectors back from an index of kind {index.kind!r} ({reason}); "
            "use top-k mode (--k N) instead"
        ) from exc
    return np.ascontiguousarray(vectors, dtype=np.float32), ids
