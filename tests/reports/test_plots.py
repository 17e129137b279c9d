"""Scatter plots: legend names, centroid markers at the class means, PNG size, many-class and error cases."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metriclearn.reports.plots import (
    DPI,
    FIGSIZE,
    as_codes,
    class_centroids,
    class_colors,
    png_bytes,
    save_png,
    scatter_figure,
)


def image(path: object) -> Image.Image:
    """Open an image from its bytes, leaving no file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def test_scatter_legend_names_classes_and_marks_centroids(rng: np.random.Generator) -> None:
    codes = np.repeat([0, 1, 2], 30)
    points = rng.normal(size=(90, 2)) + 10 * np.eye(3)[codes][:, :2]
    fig = scatter_figure(points, codes, ["cat", "dog", "<fish>"], title="t-SNE", subtitle="90 points")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "<fish>"]
    centroid_markers = ax.collections[-1].get_offsets()
    assert np.allclose(centroid_markers, [points[codes == c].mean(0) for c in range(3)], atol=1e-5)
    assert sorted(t.get_text() for t in ax.texts if t.get_text() in {"cat", "dog", "<fish>"}) == [
        "<fish>", "cat", "dog"]  # centroid labels
    assert ax.get_title(loc="left") == "t-SNE"


def test_png_decodes_with_the_figure_size(tmp_path, rng: np.random.Generator) -> None:
    fig = scatter_figure(rng.normal(size=(50, 2)), np.arange(50) % 5)
    save_png(fig, tmp_path / "p.png")
    picture = image(tmp_path / "p.png")
    assert picture.format == "PNG"
    assert picture.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert Image.open(io.BytesIO(png_bytes(fig))).size == picture.size


def test_many_classes_drop_the_legend_but_keep_distinct_colours(rng: np.random.Generator) -> None:
    fig = scatter_figure(rng.normal(size=(200, 2)), np.arange(200) % 40)
    assert fig.axes[0].get_legend() is None
    colors = class_colors(60)
    assert len({tuple(c) for c in np.round(colors, 4)}) == 60
    assert class_colors(300).shape == (300, 4)


def test_class_centroids_skip_absent_classes() -> None:
    centroids = class_centroids(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([2, 2]), 3)
    assert np.isnan(centroids[:2]).all() and centroids[2].tolist() == [2.0, 3.0]


def test_as_codes_and_scatter_errors(rng: np.random.Generator) -> None:
    codes, classes = as_codes(np.array([7, 3, 7]))
    assert codes.tolist() == [1, 0, 1] and classes == [3, 7]
    message = r"labels must be int codes in \[0, 2\) when classes are given, got values -1\.\.0"
    with pytest.raises(ValueError, match=message):
        as_codes([-1, 0], ["a", "b"])
    with pytest.raises(ValueError, match="must be int codes into classes when classes are given, got dtype <U1"):
        as_codes(["a"], ["a"])
    with pytest.raises(ValueError, match="points has dimension 3, expected 2"):
        scatter_figure(rng.normal(size=(4, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="codes has 3 entries but there are 4 samples"):
        scatter_figure(rng.normal(size=(4, 2)), np.zeros(3, dtype=int))
