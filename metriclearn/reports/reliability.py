"""Reliability diagram (DeGroot & Fienberg 1983; Guo et al. 2017) from a stored calibration, before and after.

Each bar is one bin of the top predicted probability: its height is the accuracy of the rows that fell in it,
the diagonal is perfect calibration, and the gap to it, weighted by the bin's share of rows, sums to the
expected calibration error (ECE). The tables come from :func:`metriclearn.classify.conformal.reliability`
(``calibration_["reliability_before"]`` / ``["reliability_after"]``, stored in a calibrated index).

Example
-------
>>> import numpy as np
>>> from metriclearn.classify.conformal import reliability
>>> p = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.95, 0.05]])
>>> fig = reliability_figure(reliability(p, np.array([0, 1, 0, 0])), reliability(p, np.array([0, 0, 0, 0])))
>>> [ax.get_title() for ax in fig.axes]
['before calibration · ECE 0.3125', 'after calibration · ECE 0.2125']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from metriclearn.reports.plots import DPI


def reliability_figure(before: Mapping[str, Any], after: Mapping[str, Any], title: str | None = None) -> Figure:
    """Two reliability diagrams side by side: the probabilities before and after calibration."""
    fig = Figure(figsize=(8.0, 3.8), dpi=DPI)
    for ax, table, name in zip(fig.subplots(1, 2), (before, after), ("before", "after"), strict=True):
        edges = np.asarray(table["edges"])
        width = np.diff(edges)
        accuracy = np.array([np.nan if a is None else a for a in table["accuracy"]])
        confidence = np.array([np.nan if c is None else c for c in table["confidence"]])
        filled = ~np.isnan(accuracy)
        ax.bar(edges[:-1][filled], accuracy[filled], width=width[filled], align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        centres = (edges[:-1] + width / 2)[filled]
        ax.scatter(centres, confidence[filled], marker="_", s=(300 * width[filled] / width.max()) ** 1.2,
                   linewidths=2.5, color="#dd8452", zorder=3, label="mean top probability")
        ax.vlines(centres, np.minimum(accuracy, confidence)[filled], np.maximum(accuracy, confidence)[filled],
                  color="#dd8452", linewidth=1, zorder=3)
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top probability", ylabel="accuracy",
               title=f"{name} calibration · ECE {table['ece']:.4f}")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
