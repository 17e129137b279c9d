"""``metriclearn classify`` and ``second-opinion`` (placeholder until the classifiers land)."""

from __future__ import annotations

from metriclearn.cli.train import _pending

classify = _pending("classify")
second_opinion = _pending("second-opinion")
