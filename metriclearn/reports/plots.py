"""Class-coloured scatter plots of 2-D projections, drawn on a bare ``matplotlib.figure.Figure``.

No ``pyplot`` global state is touched: each plot is its own ``Figure`` rendered by the Agg canvas, so
plotting works headless, in threads and inside a training loop. Class centroids of the *projected*
points (the mean of each class's 2-D points) are drawn as large labelled markers; colours come from
``tab10`` / ``tab20`` (and ``tab20b`` / ``tab20c``, then ``turbo`` for more than 60 classes).

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> pts = np.random.default_rng(0).normal(size=(40, 2))
>>> fig = scatter_figure(pts, np.repeat([0, 1], 20), ["cat", "dog"], title="demo")
>>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.png"
>>> save_png(fig, path)
>>> path.read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from metriclearn._atomic import atomic_path
from metriclearn._checks import check_labels, check_matrix

FIGSIZE = (8.0, 6.4)  # inches; at DPI this is 880 x 704 pixels
DPI = 110
MAX_LEGEND_CLASSES = 30  # beyond this a legend is clutter: only the centroid labels name the classes
_HALO = [patheffects.withStroke(linewidth=2.5, foreground="white")]


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 4) RGBA colours, qualitative palettes first.

    >>> class_colors(3).shape, class_colors(100).shape
    ((3, 4), (100, 4))
    """
    cmaps = matplotlib.colormaps
    if num_classes <= 10:
        return cmaps["tab10"](np.arange(num_classes))
    if num_classes <= 60:
        palette = np.concatenate([cmaps[name](np.arange(20)) for name in ("tab20", "tab20b", "tab20c")])
        return palette[:num_classes]
    return cmaps["turbo"](np.linspace(0.02, 0.98, num_classes))


def class_centroids(points: np.ndarray, codes: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, d) mean of each class's rows; NaN rows for classes with no points.

    >>> class_centroids(np.array([[0.0, 0], [2, 2], [5, 5]]), np.array([0, 0, 1]), 3).tolist()
    [[1.0, 1.0], [5.0, 5.0], [nan, nan]]
    """
    sums = np.zeros((num_classes, points.shape[1]))
    np.add.at(sums, codes, points)
    counts = np.bincount(codes, minlength=num_classes)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def as_codes(labels: Any, classes: Sequence[Any] | None = None, name: str = "labels") -> tuple[np.ndarray, list]:
    """``(codes, classes)``: int64 codes into ``classes``.

    Without ``classes`` the distinct labels (ints or strings) become the classes, sorted; with ``classes``
    the labels must already be int codes into it (what ``embed_from_run`` returns).

    >>> as_codes(np.array(["b", "a", "b"]))
    (array([1, 0, 1]), ['a', 'b'])
    >>> as_codes([0, 2], classes=["x", "y"])
    Traceback (most recent call last):
        ...
    ValueError: labels must be int codes in [0, 2) when classes are given, got values 0..2
    """
    labels = check_labels(labels, name)
    if classes is None:
        values, codes = np.unique(labels, return_inverse=True)
        return codes.astype(np.int64), values.tolist()
    classes = list(classes)
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be int codes into classes when classes are given, got dtype {labels.dtype}")
    codes = labels.astype(np.int64)
    if len(codes) and (codes.min() < 0 or codes.max() >= len(classes)):
        raise ValueError(f"{name} must be int codes in [0, {len(classes)}) when classes are given, "
                         f"got values {codes.min()}..{codes.max()}")
    return codes, classes


def marker_size(n: int) -> float:
    """Scatter marker area (points²) that keeps ``n`` points readable without a solid blob."""
    return float(np.clip(12000.0 / max(n, 1), 3.0, 40.0))


def draw_classes(
    ax: Axes,
    points: np.ndarray,
    codes: np.ndarray,
    names: Sequence[str],
    colors: np.ndarray,
    size: float,
    centroid_size: float = 260.0,
    label_centroids: bool = True,
    centroids: np.ndarray | None = None,
) -> np.ndarray:
    """Scatter ``points`` by class on ``ax`` and mark each class centroid; return the centroids.

    ``centroids`` (num_classes, 2) defaults to the mean of each class's ``points``.
    """
    for c, name in enumerate(names):
        mask = codes == c
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colors[c], alpha=0.75, linewidths=0, label=name,
                       rasterized=True)
    if centroids is None:
        centroids = class_centroids(points, codes, len(names))
    present = ~np.isnan(centroids[:, 0])
    faces = colors[present].copy()
    faces[:, 3] = 0.7  # see-through, so a compact cluster under its centroid stays visible
    ax.scatter(centroids[present, 0], centroids[present, 1], s=centroid_size, c=faces, marker="o", edgecolors="black",
               linewidths=1.2, zorder=3)
    if label_centroids:
        # names of up to 2 characters fit inside a big marker; longer ones go just above it
        inside = max((len(n) for n in names), default=1) <= 2 and centroid_size >= 150
        offset = (0.0, 0.0) if inside else (0.0, 0.6 * np.sqrt(centroid_size))
        fontsize = max(6.5, 0.45 * np.sqrt(centroid_size)) if inside else (8 if centroid_size >= 150 else 7)
        for c in np.flatnonzero(present).tolist():
            ax.annotate(names[c], centroids[c], xytext=offset, textcoords="offset points", ha="center",
                        va="center" if inside else "bottom", fontsize=fontsize, fontweight="bold", zorder=4,
                        path_effects=_HALO)
    return centroids


def scatter_figure(
    points: np.ndarray,
    codes: np.ndarray,
    classes: Sequence[object] | None = None,
    title: str = "",
    subtitle: str = "",
) -> Figure:
    """A scatter plot of 2-D ``points`` coloured by class ``codes`` (ints into ``classes``), centroids marked.

    The legend (class names, one column per 15 classes) sits outside the axes on the right; with more
    than :data:`MAX_LEGEND_CLASSES` classes it is left out and the centroid labels name the classes.
    """
    points = check_matrix(points, "points", dim=2)
    codes = check_labels(codes, "codes", n=len(points))
    if classes is None:
        classes = list(range(int(codes.max()) + 1))
    codes, classes = as_codes(codes, classes, "codes")
    names = [str(c) for c in classes]
    num_classes = len(names)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    draw_classes(ax, points, codes, names, class_colors(num_classes), marker_size(len(points)))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    ax.spines[:].set_color("0.85")
    if title:
        ax.set_title(title, fontsize=13, loc="left", pad=20 if subtitle else 6)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=9, color="0.35", va="bottom")
    if num_classes <= MAX_LEGEND_CLASSES:
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=int(np.ceil(num_classes / 15)),
                  markerscale=max(1.0, np.sqrt(30.0 / marker_size(len(points)))), frameon=False, fontsize=9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg backend."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
