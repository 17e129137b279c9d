"""metriclearn.reports: t-SNE / UMAP pictures, measured cluster separation, and the training-time centroid movie.

* :func:`write_report` — ``tsne.png`` / ``umap.png``, ``metrics.json`` and a self-contained ``report.html``
  for a set of embeddings (what ``metriclearn report`` and ``metriclearn train --report`` call).
* :class:`CentroidMovie` — per-epoch snapshots of a fixed validation sample and the class centroids,
  one PCA fitted on the first snapshot, saved as ``centroids.gif`` and a ``centroids.png`` strip.
* :func:`project` — the 2-D projection alone (stratified cap, PCA when d > 50, t-SNE or UMAP).

The constants live here and everything else is imported on first use, so the CLI can read the defaults
without paying for scikit-learn and matplotlib at start-up.

>>> from metriclearn.reports import CentroidMovie, write_report
>>> MIN_POINTS["tsne"], DEFAULT_MAX_POINTS
(16, 3000)
"""

from __future__ import annotations

import importlib
from typing import Any

METHODS = ("tsne", "umap")
# Projection cap: above it a stratified subsample is projected; keeps `--method both` under a minute on one
# core (measurements in metriclearn/reports/projection.py).
DEFAULT_MAX_POINTS = 3000
# Fewest points each method accepts: t-SNE with perplexity (n - 1) / 3 >= 5, UMAP with >= 5 neighbours.
MIN_POINTS = {"tsne": 16, "umap": 6}

_LAZY = {
    "CentroidMovie": "movie",
    "Projection": "projection",
    "project": "projection",
    "write_report": "report",
}

__all__ = ["DEFAULT_MAX_POINTS", "METHODS", "MIN_POINTS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"metriclearn.reports.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'metriclearn.reports' has no attribute {name!r}")
