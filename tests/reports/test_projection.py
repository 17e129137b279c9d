"""Projections: the stratified cap, PCA first, t-SNE / UMAP shape, determinism and neighbourhood keeping."""

from __future__ import annotations

import numpy as np
import pytest

from metriclearn.data import stratified_subsample
from metriclearn.reports.projection import project, reduce_dim


def blobs(n_per_class: int, num_classes: int, dim: int, spread: float = 8.0, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    centers = rng.normal(size=(num_classes, dim)) * spread
    return (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def nn_accuracy_2d(points: np.ndarray, y: np.ndarray) -> float:
    d = ((points[:, None] - points[None]) ** 2).sum(-1)  # (n, n)
    np.fill_diagonal(d, np.inf)
    return float((y[d.argmin(1)] == y).mean())


def test_stratified_subsample_keeps_class_shares_and_every_class() -> None:
    y = np.array([0] * 700 + [1] * 250 + [2] * 48 + [3] * 2)
    idx = stratified_subsample(y, 100, seed=3)
    assert len(idx) == 100 and len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [70, 25, 4, 1]  # 4.8 + largest remainder, 0.2 -> at least 1
    assert np.array_equal(idx, stratified_subsample(y, 100, seed=3))
    assert not np.array_equal(idx, stratified_subsample(y, 100, seed=4))


def test_stratified_subsample_fewer_points_than_classes_and_no_cap() -> None:
    y = np.arange(10).repeat(3)
    assert len(stratified_subsample(y, 4)) == 4
    assert np.array_equal(stratified_subsample(y, 30), np.arange(30))
    assert len(stratified_subsample(np.array(["b", "a", "b", "c"]), 3)) == 3


def test_reduce_dim_applies_pca_only_above_50_dimensions() -> None:
    x, _ = blobs(20, 3, 64)
    reduced = reduce_dim(x)
    assert reduced.shape == (60, 50)
    # PCA keeps (almost) all the variance of 64-d data with 60 points in its first 50 components
    centered = x - x.mean(0)
    assert np.isclose((reduced**2).sum(), (centered**2).sum(), rtol=1e-2)
    narrow = x[:, :50]
    assert np.array_equal(reduce_dim(narrow), narrow)


@pytest.mark.parametrize("method, kwargs", [("tsne", {"tsne_iter": 300}), ("umap", {"umap_epochs": 30})])
def test_project_keeps_neighbourhoods_and_is_deterministic(method: str, kwargs: dict) -> None:
    x, y = blobs(40, 4, 80)  # 80-d: PCA first
    proj = project(x, y, method, seed=1, **kwargs)
    assert proj.points.shape == (160, 2) and proj.points.dtype == np.float32
    assert np.isfinite(proj.points).all() and not proj.subsampled
    assert nn_accuracy_2d(proj.points, y) == 1.0  # well-separated blobs stay separated in 2-D
    again = project(x, y, method, seed=1, **kwargs)
    assert np.array_equal(proj.points, again.points)


def test_project_caps_with_a_stratified_sample() -> None:
    x, y = blobs(50, 3, 5)
    proj = project(x, y, "tsne", max_points=60, tsne_iter=250)
    assert proj.subsampled and proj.n_total == 150 and proj.points.shape == (60, 2)
    assert np.bincount(y[proj.indices]).tolist() == [20, 20, 20]


def test_project_errors() -> None:
    x, y = blobs(5, 2, 4)
    with pytest.raises(ValueError, match="tsne needs at least 16 points to project, got 10"):
        project(x, y, "tsne")
    with pytest.raises(ValueError, match="tsne needs at least 16 points to project, got 12"):
        project(*blobs(10, 2, 4), "tsne", max_points=12)
    with pytest.raises(ValueError, match="method must be one of 'tsne', 'umap'; got 'pca'"):
        project(x, y, "pca")
    with pytest.raises(ValueError, match="tsne_iter must be at least 250"):
        project(*blobs(10, 2, 4), "tsne", tsne_iter=100)
    with pytest.raises(ValueError, match="labels has 9 entries but there are 10 samples"):
        project(x, y[:9], "umap")
