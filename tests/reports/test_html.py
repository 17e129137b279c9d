"""The HTML page: self-contained (images as data URIs that decode), metrics shown, every text escaped."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from metriclearn.reports.html import flatten, format_value, render_html
from metriclearn.reports.plots import png_bytes, scatter_figure


def test_page_embeds_decodable_images_and_shows_metrics() -> None:
    png = png_bytes(scatter_figure(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2))
    metrics = {"separation": {"silhouette": 0.61234, "nmi": 0.9}, "retrieval": {"precision_at_1": 0.98765}}
    page = render_html("run 7", [("t-SNE", png), ("UMAP", png)], metrics, summary={"points": 20})
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    assert base64.b64decode(uris[0]) == png
    assert Image.open(io.BytesIO(base64.b64decode(uris[1]))).format == "PNG"
    for text in ("0.6123", "0.9000", "0.9877", "silhouette", "precision_at_1", "higher is better", "run 7"):
        assert text in page
    assert "not known" in page  # no configuration given
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_every_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    page = render_html(evil, [(evil, b"png")], {"g": {evil: 1.0}}, config={"model": {"note": evil}},
                       summary={"source": evil})
    assert "<script>" not in page
    assert page.count("&lt;script&gt;") >= 6
    assert "model.note" in page


def test_helpers() -> None:
    assert dict(flatten({"a": {"b": {"c": 1}}, "d": 2})) == {"a.b.c": 1, "d": 2}
    assert format_value(1 / 3) == "0.3333" and format_value("x") == "x" and format_value(2) == "2"
