"""Classifiers on learned embeddings: k-nearest neighbours on an index, and Orhan's cache model.

Both are scikit-learn estimators (``fit`` / ``predict`` / ``predict_proba`` / ``score``, ``classes_``,
``get_params`` / ``set_params``, ``sklearn.base.clone``, usable in a ``Pipeline``).
"""

from __future__ import annotations

from metriclearn.classify.cache import CacheClassifier, cache_probabilities, topk_cache_probabilities
from metriclearn.classify.knn import KNNClassifier

__all__ = ["CacheClassifier", "KNNClassifier", "cache_probabilities", "topk_cache_probabilities"]
