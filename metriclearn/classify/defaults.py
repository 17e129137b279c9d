"""The inference defaults of the classifiers, defined once (the classes, the CLI and the second opinion read them).

- ``DEFAULT_K = 10``: neighbours that vote in :class:`~metriclearn.classify.KNNClassifier` (scikit-learn's
  ``KNeighborsClassifier`` uses 5; 10 is steadier on the small, uneven classes of learned embeddings).
- ``DEFAULT_THETA = 50.0``: the cache's inverse temperature θ, the middle of Orhan's search range [10, 90]
  (Orhan, "A Simple Cache Model for Image Recognition", NeurIPS 2018).
- ``DEFAULT_LAM = 0.5``: the cache's weight λ in a second opinion, ``(1 − λ)·p_model + λ·p_cache``.

>>> from metriclearn.classify import CacheClassifier
>>> CacheClassifier().get_params()["theta"] == DEFAULT_THETA
True
"""

from __future__ import annotations

DEFAULT_K = 10
DEFAULT_THETA = 50.0
DEFAULT_LAM = 0.5
