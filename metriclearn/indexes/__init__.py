"""Similarity search over embeddings: :class:`EmbeddingIndex` (faiss) and exact torch ground truth.

>>> import numpy as np
>>> index = EmbeddingIndex(dim=2, metric="l2")
>>> index.add(np.eye(2, dtype=np.float32)).tolist()
[0, 1]
>>> len(index)
2
"""

from __future__ import annotations

from metriclearn.indexes._factory import KINDS
from metriclearn.indexes._gpu import DEVICES
from metriclearn.indexes._persist import describe
from metriclearn.indexes.exact import exact_search
from metriclearn.indexes.faiss_index import EmbeddingIndex
from metriclearn.indexes.tuning import TuningWarning

__all__ = ["DEVICES", "KINDS", "EmbeddingIndex", "TuningWarning", "describe", "exact_search"]
