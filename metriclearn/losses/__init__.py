"""metriclearn.losses: one loss per file (guide: docs/losses.md)."""

from metriclearn.losses.base import MetricLoss
from metriclearn.losses.cache import CacheLoss
from metriclearn.losses.complement import ComplementEntropyLoss
from metriclearn.losses.neighborhood import NeighborhoodSoftmaxLoss
from metriclearn.losses.prototype import PrototypeLoss
from metriclearn.losses.soft_nn import SoftNearestNeighborLoss
from metriclearn.losses.uniformity import UniformityLoss

__all__ = [
    "MetricLoss",
    "CacheLoss",
    "ComplementEntropyLoss",
    "NeighborhoodSoftmaxLoss",
    "PrototypeLoss",
    "SoftNearestNeighborLoss",
    "UniformityLoss",
]
