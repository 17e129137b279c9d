"""CentroidMovie: one GIF frame per snapshot, a capped PNG strip, one fixed PCA, fixed limits, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from metriclearn.reports.movie import CentroidMovie


def image(path: object) -> Image.Image:
    """Open an image from its bytes, leaving no file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def snapshots(num: int, n: int = 90, dim: int = 6, seed: int = 0):
    """Three classes whose centres move apart epoch by epoch."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    for epoch in range(num):
        yield epoch, (rng.normal(size=(n, dim)) + 0.5 * (epoch + 1) * np.eye(dim)[y]).astype(np.float32), y


def test_gif_has_one_frame_per_snapshot_and_strip_is_capped(tmp_path) -> None:
    movie = CentroidMovie(classes=["a", "b", "c"], sample_size=45, max_panels=4)
    for epoch, x, y in snapshots(6):
        movie.add(epoch, x, y)
    paths = movie.save(tmp_path)
    assert paths == {"gif": tmp_path / "centroids.gif", "png": tmp_path / "centroids.png"}
    gif = image(paths["gif"])
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (400, 400)
    assert gif.info["duration"] == 500 and gif.info["loop"] == 0
    strip = image(paths["png"])
    assert strip.format == "PNG" and strip.size == (4 * 270, 270 + 27)  # 4 panels of 3 in x 3 in at 90 dpi
    assert movie.panel_frames() == [0, 2, 3, 5]
    assert len(movie) == 6 and movie.epochs == list(range(6))
    assert movie._points[0].shape == (45, 2)  # the fixed sample


def test_strip_wraps_to_two_rows_and_keeps_first_and_last(tmp_path) -> None:
    movie = CentroidMovie(max_panels=8, sample_size=30)
    for epoch, x, y in snapshots(20):
        movie.add(epoch * 10, x, y)
    assert movie.panel_frames() == [0, 3, 5, 8, 11, 14, 16, 19]
    assert movie.classes == [0, 1, 2]
    movie.save(tmp_path, name="run")
    assert image(tmp_path / "run.png").size == (4 * 270, 2 * 270 + 27)
    assert image(tmp_path / "run.gif").n_frames == 20


def test_pca_is_fitted_once_on_the_first_snapshot() -> None:
    _, x, y = next(snapshots(1))
    movie = CentroidMovie()
    movie.add(0, x, y)
    shift = np.arange(x.shape[1], dtype=np.float32)
    movie.add(1, x + shift, y)  # a refitted PCA would centre the shift away
    pca = PCA(n_components=2, random_state=0).fit(x)  # scikit-learn's PCA of the first snapshot, fitted apart
    expected = shift @ pca.components_.T
    assert np.allclose(movie._centroids[1] - movie._centroids[0], expected, atol=1e-4)
    assert np.allclose(movie._points[1] - movie._points[0], expected, atol=1e-4)
    # the centroids are the class means mapped by the same PCA
    first = pca.transform(np.stack([x[y == c].mean(0) for c in range(3)]))
    assert np.allclose(movie._centroids[0], first, atol=1e-4)


def test_limits_are_fixed_and_contain_every_frame() -> None:
    movie = CentroidMovie()
    for epoch, x, y in snapshots(5):
        movie.add(epoch, x, y)
    (x0, x1), (y0, y1) = movie.limits()
    for points in movie._points + movie._centroids:
        assert (points[:, 0] > x0).all() and (points[:, 0] < x1).all()
        assert (points[:, 1] > y0).all() and (points[:, 1] < y1).all()


def test_one_dimensional_embeddings_are_padded(tmp_path) -> None:
    movie = CentroidMovie()
    y = np.repeat([0, 1], 10)
    movie.add(0, y[:, None].astype(float), y)
    movie.add(1, 2 * y[:, None].astype(float), y)
    assert movie._points[1].shape == (20, 2) and np.all(movie._points[1][:, 1] == 0)
    assert image(movie.save(tmp_path)["gif"]).n_frames == 2


def test_errors(tmp_path) -> None:
    movie = CentroidMovie(classes=["a", "b"])
    with pytest.raises(ValueError, match="CentroidMovie has no snapshots: call add"):
        movie.save(tmp_path)
    with pytest.raises(ValueError, match=r"labels must be int codes in \[0, 2\)"):
        movie.add(0, np.zeros((3, 2)), np.array([0, 1, 2]))
    movie.add(0, np.random.default_rng(0).normal(size=(4, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels differ from the first snapshot's"):
        movie.add(1, np.zeros((4, 2)), np.array([1, 1, 0, 0]))
    with pytest.raises(ValueError, match="embeddings have dimension 3, the first snapshot had 2"):
        movie.add(1, np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="embeddings contains NaN or inf values in 1 of 4 rows"):
        movie.add(1, np.array([[0, 1], [np.nan, 0], [1, 1], [2, 2]]), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="sample_size must be a positive integer, got 0"):
        CentroidMovie(sample_size=0)
    assert len(movie) == 1  # failed adds leave no snapshot behind


def test_state_round_trip_through_a_weights_only_checkpoint_continues_the_same_movie(tmp_path) -> None:
    import torch

    rng = np.random.default_rng(3)
    y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 90)]
    frames = [rng.normal(size=(90, 6)) + (e + 1) * (y == "dog")[:, None] for e in range(4)]
    straight = CentroidMovie(sample_size=40, seed=1)
    for epoch, x in enumerate(frames):
        straight.add(epoch, x, y)
    first = CentroidMovie(sample_size=40, seed=1)
    for epoch, x in enumerate(frames[:2]):
        first.add(epoch, x, y)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = CentroidMovie(sample_size=40, seed=1)  # a fresh process: nothing but the checkpoint
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for epoch, x in enumerate(frames[2:], start=2):
        resumed.add(epoch, x, y)
    assert resumed.epochs == straight.epochs == [0, 1, 2, 3] and resumed.classes == ["cat", "dog", "eel"]
    for a, b in zip(resumed._points + resumed._centroids, straight._points + straight._centroids):
        np.testing.assert_allclose(a, b, atol=1e-6)  # the same PCA and sample after the restore
    with pytest.raises(ValueError, match="labels differ from the first snapshot"):
        resumed.add(4, frames[0], y[::-1])
    empty = CentroidMovie()
    empty.load_state_dict(CentroidMovie().state_dict())
    assert len(empty) == 0
