"""metriclearn: learn embedding spaces where same-class points are neighbours, then use them.

The public API is re-exported here and imported lazily, so ``import metriclearn`` stays fast and a
CLI call only pays for what it uses.

Example
-------
>>> import metriclearn
>>> metriclearn.NeighborhoodSoftmaxLoss(temperature=0.1)
NeighborhoodSoftmaxLoss(temperature=0.1, distance='sqeuclidean', reduction='mean')
>>> metriclearn.losses.CacheLoss.__name__
'CacheLoss'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "classify", "data", "encoders", "indexes", "losses", "metrics", "pretrained", "reports", "runs", "training",
)

# public name -> the submodule that defines it (the public API; guides in docs/)
_EXPORTS = {
    "NeighborhoodSoftmaxLoss": "losses",
    "SoftNearestNeighborLoss": "losses",
    "PrototypeLoss": "losses",
    "CacheLoss": "losses",
    "ComplementEntropyLoss": "losses",
    "UniformityLoss": "losses",
    "Trainer": "training",
    "Objective": "training",
    "EmbeddingIndex": "indexes",
    "KNNClassifier": "classify",
    "CacheClassifier": "classify",
    "FeatureExtractor": "pretrained",
    "SecondOpinion": "pretrained",
    "retrieval_metrics": "metrics",
    "separation_metrics": "metrics",
    "load_data": "data",
    "ClassBalancedSampler": "data",
    "build_encoder": "encoders",
    "write_report": "reports",
}

__all__ = ["__version__", *_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"metriclearn.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"metriclearn.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'metriclearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
