"""The explorer's numbers (no browser): neighbours and failures against a naive reference and retrieval_metrics,
per-class scores, confused pairs, the embedded JSON and the file-size budget."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_blobs
from metriclearn.metrics import retrieval_metrics
from metriclearn.reports.explorer import encode_thumbnails, write_explorer
from metriclearn.reports.neighbours import confused_pairs, item_retrieval, per_class_scores

# uneven classes, one with a single item (no other item of its class: never counted), overlapping blobs
COUNTS = {"ant": 37, "bee": 11, "cat": 52, "dog": 1, "eel": 23}


def page_data(path: Path) -> dict:
    """The JSON document an explorer page embeds."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1).replace("<\\/", "</"))


def naive_neighbours(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """All other items of each item by (distance, index), float64: (n, n-1) order and distances."""
    x = x.astype(np.float64)
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1.0 - u @ u.T
    else:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    return order, np.take_along_axis(d, order, 1)


def naive_misses(x: np.ndarray, y: np.ndarray, metric: str) -> set[int]:
    """Queries with another item of their class whose nearest other item has another label."""
    order, _ = naive_neighbours(x, metric)
    counted = np.array([(y == v).sum() > 1 for v in y])
    return set(np.flatnonzero(counted & (y[order[:, 0]] != y)).tolist())


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_failures_are_exactly_the_top1_misses_that_retrieval_metrics_counts(metric) -> None:
    x, labels = make_blobs(COUNTS, dim=6, spread=0.5)  # overlapping: many failures
    classes, y = np.unique(labels, return_inverse=True)
    r = item_retrieval(x, y, k=7, metric=metric)
    assert set(r.failures.tolist()) == naive_misses(x, y, metric) and len(r.failures) > 5
    counted = int(r.counted.sum())
    assert counted == len(y) - 1  # the single "dog" is no query
    p_at_1 = retrieval_metrics(x, labels, metric=metric)["precision_at_1"]
    assert len(r.failures) == round((1 - p_at_1) * counted)
    order, dist = naive_neighbours(x, metric)
    np.testing.assert_array_equal(r.neighbours, order[:, :7])
    np.testing.assert_allclose(r.distances, dist[:, :7], rtol=1e-9, atol=1e-12)
    # margin = distance to the nearest same-class item - distance to the (wrong) top-1; worst first
    same = np.where(y[order] == y[:, None], dist, np.inf).min(1)
    np.testing.assert_allclose(r.margins, same[r.failures] - dist[r.failures, 0], rtol=1e-9, atol=1e-12)
    assert (r.margins >= 0).all() and (np.diff(r.margins) <= 0).all()


def test_per_class_scores_average_to_the_global_metrics_and_pairs_count_every_failure() -> None:
    x, labels = make_blobs(COUNTS, dim=5, spread=0.5, seed=3)
    classes, y = np.unique(labels, return_inverse=True)
    r = item_retrieval(x, y, k=5)
    rows = per_class_scores(x, y, r)
    assert [row["size"] for row in rows] == [COUNTS[c] for c in classes]
    dog = rows[list(classes).index("dog")]
    assert dog["p_at_1"] is None and dog["map_at_r"] is None  # a single item: nothing to retrieve
    scored = [row for row in rows if row["p_at_1"] is not None]
    weights = np.array([row["size"] for row in scored], dtype=np.float64)
    total = retrieval_metrics(x, labels)
    for key, name in (("p_at_1", "precision_at_1"), ("map_at_r", "map_at_r")):
        mean = float(np.dot(weights, [row[key] for row in scored]) / weights.sum())
        assert mean == pytest.approx(total[name], rel=1e-9)
    pairs = confused_pairs(y, r, top=100)
    assert sum(p["total"] for p in pairs) == len(r.failures)
    assert [p["total"] for p in pairs] == sorted((p["total"] for p in pairs), reverse=True)
    first = pairs[0]
    got = y[r.neighbours[r.failures, 0]]
    assert first["a_to_b"] == int(((y[r.failures] == first["a"]) & (got == first["b"])).sum())


def test_write_explorer_embeds_what_it_computed_and_nothing_can_close_its_script(tmp_path) -> None:
    x, labels = make_blobs({"a": 30, "b": 17, "c": 24}, dim=4, spread=2.0)
    classes, y = np.unique(labels, return_inverse=True)
    rows = np.arange(0, 2 * len(y), 2)  # the items are every other row of a larger input
    texts = [f"item {i} </script><b>bold</b>" for i in range(2 * len(y))]
    path = tmp_path / "explorer.html"
    data = write_explorer(path, x, y, {"one": x[:, :2], "two": x[:, 2:]}, classes=list(classes), rows=rows,
                          n_total=2 * len(y), k=4, texts=texts, config={"train": {"lr": 0.01}},
                          confidence=np.linspace(0, 1, 2 * len(y)))
    page = path.read_text(encoding="utf-8")
    assert page.count("</script>") == 2 and "<b>bold</b>" not in page.split('id="data">')[0]
    embedded = page_data(path)
    assert embedded == json.loads(json.dumps(data))
    assert embedded["texts"][5] == texts[10] and embedded["n_shown"] == len(y) and embedded["n_total"] == 2 * len(y)
    decoded_rows = np.frombuffer(base64.b64decode(embedded["rows"]), "<i4")
    np.testing.assert_array_equal(decoded_rows, rows)
    nn = np.frombuffer(base64.b64decode(embedded["nn"]), "<i4").reshape(len(y), 4)
    np.testing.assert_array_equal(nn, item_retrieval(x, y, k=4).neighbours)
    conf = np.frombuffer(base64.b64decode(embedded["confidence"]), "<f4")
    np.testing.assert_allclose(conf, np.linspace(0, 1, 2 * len(y))[rows], rtol=1e-6)
    assert embedded["layouts"].keys() == {"one", "two"} and embedded["config"] == {"train": {"lr": 0.01}}


def test_ten_thousand_points_fit_the_five_megabyte_budget(tmp_path) -> None:
    counts = {f"class {i}": 60 + i for i in range(100)}  # 10,950 items, uneven; the size does not depend on d
    x, labels = make_blobs(counts, dim=3, spread=3.0)
    classes, y = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(0)
    layouts = {"t-SNE": rng.normal(size=(len(y), 2)), "UMAP": rng.normal(size=(len(y), 2))}
    path = tmp_path / "explorer.html"
    write_explorer(path, x, y, layouts, classes=list(classes), ids=[f"doc-{i}" for i in range(len(y))])
    size = path.stat().st_size
    assert len(y) > 10_000 and size < 5_000_000, size


def test_bad_input_names_the_argument(tmp_path) -> None:
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"layout 'tsne' must have shape \(5, 2\), got \(4, 2\)"):
        write_explorer(tmp_path / "e.html", x, np.array([0, 0, 1, 1, 1]), {"tsne": np.zeros((4, 2))})
    with pytest.raises(ValueError, match=r"texts must have one entry per row of the input \(5\), got 4"):
        write_explorer(tmp_path / "e.html", x, None, {"tsne": np.zeros((5, 2))}, texts=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="at least 2 items.*got 1"):
        item_retrieval(x[:1], None)
    with pytest.raises(ValueError, match=r"thumbnails must have shape .* got \(2, 3\)"):
        encode_thumbnails(np.zeros((2, 3)))
    assert not (tmp_path / "e.html").exists()


def test_thumbnails_keep_each_image_and_its_contrast() -> None:
    images = np.zeros((3, 8, 8))
    images[1, 2, 5] = 16.0  # the digits' 0..16 range
    images[2] = 7.0  # a flat image stays black, no division by zero
    t = encode_thumbnails(images)
    pixels = np.frombuffer(base64.b64decode(t["data"]), np.uint8).reshape(3, 8, 8)
    assert (t["w"], t["h"], t["c"]) == (8, 8, 1)
    assert pixels[1, 2, 5] == 255 and pixels[1].sum() == 255 and pixels[0].sum() == 0 and pixels[2].sum() == 0
