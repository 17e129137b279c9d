"""Similarity search over embeddings: :class:`EmbeddingIndex` (faiss) and exact torch ground truth.

>>> import numpy as np
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(dim=2, metric="l2")
>>> index.add(np.eye(2, dtype=np.float32)).tolist()
[0, 1]
>>> len(index)
2
"""

from __future__ import annotations

from metriclearn._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (faiss and torch only when needed)
_EXPORTS = {
    "DEVICES": "metriclearn._device",
    "KINDS": "metriclearn.indexes._factory",
    "EmbeddingIndex": "metriclearn.indexes.faiss_index",
    "TuningWarning": "metriclearn.indexes.tuning",
    "ShardedIndex": "metriclearn.indexes.sharded",
    "describe": "metriclearn.indexes._open",
    "exact_search": "metriclearn.indexes.exact",
    "load_index": "metriclearn.indexes._open",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
