"""``metriclearn report`` (placeholder until the reports land)."""

from __future__ import annotations

from metriclearn.cli.train import _pending

report = _pending("report")
