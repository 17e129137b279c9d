"""Moved: batched embedding of a data set lives in :mod:`metriclearn._embedding` (below ``runs`` and ``training``,
which both use it); this module keeps the old import path working."""

from __future__ import annotations

from metriclearn._embedding import embed_array, to_device

__all__ = ["embed_array", "to_device"]
