"""metriclearn.losses (see DESIGN.md)."""

from metriclearn.losses.base import MetricLoss
from metriclearn.losses.complement import ComplementEntropyLoss
from metriclearn.losses.prototype import PrototypeLoss
from metriclearn.losses.soft_nn import SoftNearestNeighborLoss

__all__ = [
    "MetricLoss",
    "ComplementEntropyLoss",
    "PrototypeLoss",
    "SoftNearestNeighborLoss",
]
