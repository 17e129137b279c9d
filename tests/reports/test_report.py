"""write_report: the files it writes (opened and checked), metric ordering, the cap, and its errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metriclearn.reports import write_report
from metriclearn.reports.plots import DPI, FIGSIZE

SEPARATION_KEYS = {"silhouette", "davies_bouldin", "calinski_harabasz", "nmi", "ami"}
RETRIEVAL_KEYS = {"precision_at_1", "r_precision", "map_at_r", "knn_accuracy"}
FAST = {"tsne_iter": 300, "umap_epochs": 30}


def image(path: object) -> Image.Image:
    """Open an image from its bytes, leaving no file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def blobs(spread: float, n: int = 200, num_classes: int = 4, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    centers = rng.normal(size=(num_classes, dim)) * spread
    return (centers[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    x, y = blobs(spread=6.0)
    out = tmp_path_factory.mktemp("report")
    config = {"train": {"loss": "neighborhood", "lr": 0.001}, "note": "<b>bold</b>"}
    metrics = write_report(x, y, out, method="both", classes=["zero", "one", "two", "three"], config=config,
                           source="blobs.npy", **FAST)
    return out, metrics


def test_writes_two_pngs_html_and_json(report) -> None:
    out, _ = report
    assert sorted(p.name for p in out.iterdir()) == ["explorer.html", "metrics.json", "report.html", "tsne.png",
                                                      "umap.png"]
    for name in ("tsne.png", "umap.png"):
        picture = image(out / name)
        assert picture.format == "PNG" and picture.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
        picture.load()  # decodes the whole file


def test_metrics_json_has_every_key(report) -> None:
    out, returned = report
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == returned
    assert set(saved) == {"separation", "retrieval", "data"}
    assert set(saved["separation"]) >= SEPARATION_KEYS and set(saved["retrieval"]) >= RETRIEVAL_KEYS
    assert all(isinstance(v, float) and np.isfinite(v) for g in ("separation", "retrieval") for v in saved[g].values())
    data = saved["data"]
    assert data["n_points"] == 200 and data["dim"] == 8 and data["n_classes"] == 4
    assert data["classes"] == ["zero", "one", "two", "three"] and data["tsne_points"] == data["umap_points"] == 200
    assert data["metric_points"] == 200 and data["source"] == "blobs.npy"


def test_html_embeds_the_pngs_and_shows_metrics_and_config(report) -> None:
    out, metrics = report
    page = (out / "report.html").read_text()
    for name in ("tsne.png", "umap.png"):
        assert "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode() in page
    for group in ("separation", "retrieval"):
        for key, value in metrics[group].items():
            assert key in page and f"{value:.4f}" in page
    assert "train.loss" in page and "neighborhood" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<b>bold</b>" not in page and "blobs.npy" in page and "zero, one, two, three" in page


def test_separation_metrics_order_separated_above_mixed(tmp_path) -> None:
    good = write_report(*blobs(spread=6.0), tmp_path / "good", method="tsne", **FAST)
    mixed = write_report(*blobs(spread=0.2), tmp_path / "mixed", method="tsne", **FAST)
    for key in ("silhouette", "calinski_harabasz", "nmi", "ami"):
        assert good["separation"][key] > mixed["separation"][key], key
    assert good["separation"]["davies_bouldin"] < mixed["separation"]["davies_bouldin"]
    for key in RETRIEVAL_KEYS:
        assert good["retrieval"][key] > mixed["retrieval"][key], key
    assert good["retrieval"]["precision_at_1"] == 1.0
    assert mixed["retrieval"]["precision_at_1"] < 0.6


def test_caps_projection_and_metrics_with_stratified_samples(tmp_path) -> None:
    x, y = blobs(spread=4.0, n=240)
    result = write_report(x, y.astype(str), tmp_path, method="tsne", max_points=60, metric_max_points=120,
                          **FAST)
    assert result["data"]["tsne_points"] == 60 and result["data"]["metric_points"] == 120
    assert result["data"]["classes"] == ["0", "1", "2", "3"]
    assert "60 of 240 points" in (tmp_path / "report.html").read_text()


def test_errors(tmp_path) -> None:
    x, y = blobs(spread=4.0, n=40)
    with pytest.raises(ValueError, match="labels has 39 entries but there are 40 samples"):
        write_report(x, y[:-1], tmp_path)
    with pytest.raises(ValueError, match="labels hold a single class \\(3\\): a report needs at least 2 classes"):
        write_report(x, np.full(40, 3), tmp_path)
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="embeddings contains NaN or inf values in 1 of 40 rows"):
        write_report(bad, y, tmp_path)
    with pytest.raises(ValueError, match="tsne needs at least 16 points to project, got 12"):
        write_report(x[:12], y[:12], tmp_path, method="both")
    with pytest.raises(ValueError, match="max_points must be at least 6 for umap, got 5"):
        write_report(x, y, tmp_path, method="umap", max_points=5)
    with pytest.raises(ValueError, match="method must be one of 'tsne', 'umap', 'both'; got 'pca'"):
        write_report(x, y, tmp_path, method="pca")
    assert not any(tmp_path.iterdir())  # nothing written before the inputs were checked
