"""Classifiers on learned embeddings: k-nearest neighbours on an index, and Orhan's cache model.

Both are scikit-learn estimators (``fit`` / ``predict`` / ``predict_proba`` / ``score``, ``classes_``,
``get_params`` / ``set_params``, ``sklearn.base.clone``, usable in a ``Pipeline``).
"""

from __future__ import annotations

from metriclearn._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (scikit-learn only when needed)
_EXPORTS = {
    "CacheClassifier": "metriclearn.classify.cache",
    "cache_probabilities": "metriclearn.classify.cache",
    "topk_cache_probabilities": "metriclearn.classify.cache",
    "KNNClassifier": "metriclearn.classify.knn",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
