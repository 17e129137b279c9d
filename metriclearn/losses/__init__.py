"""metriclearn.losses (see DESIGN.md)."""

from metriclearn.losses.base import MetricLoss
from metriclearn.losses.cache import CacheLoss
from metriclearn.losses.neighborhood import NeighborhoodSoftmaxLoss

__all__ = ["MetricLoss", "NeighborhoodSoftmaxLoss", "CacheLoss"]
