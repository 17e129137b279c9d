"""metriclearn: learn embedding spaces where same-class points are neighbours, then use them.

Sub-packages are imported lazily so ``import metriclearn`` stays fast and a CLI call only pays for
what it uses: ``metriclearn.losses``, ``metriclearn.training``, ``metriclearn.indexes``,
``metriclearn.classify``, ``metriclearn.metrics``, ``metriclearn.reports``, ``metriclearn.data``,
``metriclearn.encoders``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "classify",
    "data",
    "encoders",
    "indexes",
    "losses",
    "metrics",
    "reports",
    "training",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"metriclearn.{name}")
    raise AttributeError(f"module 'metriclearn' has no attribute {name!r}")
