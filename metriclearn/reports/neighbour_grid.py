"""A picture of retrieval: a few query images, each followed by its k nearest neighbours.

Row r shows query q_r (framed black) and its k nearest other items (leave-one-out, ranked as
:func:`metriclearn.reports.neighbours.item_retrieval` ranks them), framed green when the neighbour has the
query's class and red when not, with its class and distance underneath. The queries are one item of each of
``queries`` classes (the first classes in a seeded shuffle; without labels, ``queries`` seeded items).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> images, x = rng.random((12, 8, 8)), rng.normal(size=(12, 3)).astype(np.float32)
>>> fig = neighbour_grid(images, x, np.repeat([0, 1, 2], 4), ["a", "b", "c"], queries=2, k=3)
>>> len(fig.axes)
8
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from metriclearn._checks import check_positive_int

FRAME = {"query": "black", "same": "#1a9641", "other": "#d7191c"}


def pick_queries(codes: np.ndarray | None, n: int, queries: int, seed: int = 0) -> np.ndarray:
    """One item from each of ``queries`` classes (classes and items in a seeded order), or seeded items."""
    rng = np.random.default_rng(seed)
    if codes is None:
        return np.sort(rng.choice(n, size=min(queries, n), replace=False))
    classes = rng.permutation(np.unique(codes))[:queries]
    return np.array([rng.choice(np.flatnonzero(codes == c)) for c in classes], dtype=np.int64)


def neighbour_grid(images: np.ndarray, x: np.ndarray, codes: np.ndarray | None, classes: Sequence[Any],
                   queries: int = 6, k: int = 5, metric: str = "l2", seed: int = 0) -> Figure:
    """The figure (see the module docstring); ``images`` (n, h, w) or (n, h, w, 3), one per row of ``x``."""
    from metriclearn.reports.neighbours import item_retrieval

    queries, k = check_positive_int(queries, "queries"), check_positive_int(k, "k")
    if len(images) != len(x):
        raise ValueError(f"images has {len(images)} rows but the embeddings {len(x)}")
    k = min(k, len(x) - 1)
    picked = pick_queries(codes, len(x), queries, seed)
    neighbours = item_retrieval(x, codes, k=k, metric=metric)
    fig = Figure(figsize=(1.3 * (k + 1), 1.45 * len(picked)))
    grid = fig.subplots(len(picked), k + 1, squeeze=False)
    for row, q in enumerate(picked):
        for col in range(k + 1):
            item = q if col == 0 else neighbours.neighbours[q, col - 1]
            same = codes is None or codes[item] == codes[q]
            kind = "query" if col == 0 else "same" if same else "other"
            ax = grid[row, col]
            ax.imshow(_display(images[item]), cmap="gray" if images.ndim == 3 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(FRAME[kind])
                spine.set_linewidth(3)
            label = "" if codes is None else str(classes[codes[item]])
            ax.set_xlabel(label if col == 0 else f"{label} {neighbours.distances[q, col - 1]:.2f}", fontsize=7)
        grid[row, 0].set_ylabel("query", fontsize=7)
    fig.suptitle(f"{len(picked)} queries and their {k} nearest neighbours (green: same class, red: other)",
                 fontsize=8)
    fig.tight_layout()
    return fig


def _display(image: np.ndarray) -> np.ndarray:
    """One image scaled to [0, 1] by its own range (as the explorer's thumbnails are)."""
    image = np.asarray(image, dtype=np.float64)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)
