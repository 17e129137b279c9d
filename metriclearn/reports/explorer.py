"""``explorer.html``: one self-contained, offline, interactive page to look at an embedding.

The page (``explorer_template.html``, plain HTML/CSS/JavaScript, no library, no network request) shows

- the **map**: the 2-D projections the report computed (t-SNE / UMAP), drawn on a ``<canvas>`` (points written
  straight into an ``ImageData`` buffer, so 100k points redraw in milliseconds; measured in docs/reports.md),
  with zoom (wheel), pan (drag), hover (the item's text, thumbnail or id, and its label, found through a
  uniform grid), colour by label / top-1 neighbour correct / calibrated confidence, click for the item's k
  nearest neighbours (distances, labels, content), search by id or text;
- the **panels**: the retrieval failures (queries whose top-1 neighbour has another label, worst margin first:
  exactly the rows :func:`~metriclearn.metrics.retrieval_metrics` counts as precision@1 misses among the items
  shown, see :mod:`metriclearn.reports.neighbours`), a sortable per-class table (P@1, MAP@R, size, coverage
  when calibrated), the most confused class pairs, training curves (``log.csv``), reliability diagrams
  (a calibrated index) and the run's configuration.

All numbers travel as one JSON document in a ``<script type="application/json">`` element; arrays of numbers
as base64 little-endian typed arrays (about 75 bytes a point with k = 5, so 10k points take < 1 MB). Texts are
cut to :data:`TEXT_CHARS` characters; thumbnails are raw 8-bit pixels at most :data:`THUMB_SIDE` pixels a
side. Every string reaches the page through ``textContent``, never as HTML.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 20)
>>> x = (rng.normal(size=(60, 4)) + 4 * np.eye(4)[y]).astype(np.float32)
>>> page = pathlib.Path(tempfile.mkdtemp()) / "explorer.html"
>>> data = write_explorer(page, x, y, {"PCA": x[:, :2]}, classes=["a", "b", "c"], k=3)
>>> data["n_shown"], len(data["failures"]) == round(60 * (1 - data["p_at_1"]))
(60, True)
"""

from __future__ import annotations

import base64
import csv
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from metriclearn import __version__
from metriclearn._atomic import write_text
from metriclearn._checks import check_matrix
from metriclearn.reports.neighbours import confused_pairs, item_retrieval, per_class_scores

DEFAULT_K = 10  # neighbours listed for a clicked item
TEXT_CHARS = 280  # characters of an item's text kept in the page
THUMB_SIDE = 32  # thumbnails are subsampled to at most this many pixels a side
CONFUSED_PAIRS = 25


def write_explorer(
    path: str | os.PathLike[str],
    x: Any,
    codes: np.ndarray | None,
    layouts: Mapping[str, np.ndarray],
    *,
    classes: Sequence[Any] = (),
    rows: np.ndarray | None = None,
    n_total: int | None = None,
    metric: str = "l2",
    k: int = DEFAULT_K,
    texts: Sequence[str] | None = None,
    ids: Sequence[Any] | None = None,
    thumbnails: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    calibration: Mapping[str, Any] | None = None,
    training_log: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
    title: str = "metriclearn explorer",
) -> dict[str, Any]:
    """Write ``explorer.html`` for the items ``x`` (m, d) and return the data it embeds.

    Parameters
    ----------
    x : (m, d) embeddings of the items shown (already capped). codes : (m,) int codes into ``classes``, or
        ``None`` (unlabelled). layouts : ``{name: (m, 2) coordinates}``, e.g. ``{"t-SNE": ..., "UMAP": ...}``.
    rows : (m,) the items' rows in the full input (default ``0..m-1``); n_total : the input's size (default
        m): when larger, the page states that a stratified sample is shown.
    metric, k : distance (``"l2"`` / ``"cosine"``) and neighbours listed per item.
    texts, ids, thumbnails, confidence : per item of the full input (indexed by ``rows``): its text, its id,
        its image ((N, h, w) or (N, h, w, 3), any numeric range), its calibrated confidence in [0, 1].
    calibration : an index's ``attrs["calibration"]`` (reliability diagrams, coverage by class).
    training_log : a run's ``log.csv`` (training curves). config : the run's configuration.
    """
    x = check_matrix(x, "embeddings")
    m = len(x)
    rows = np.arange(m) if rows is None else np.asarray(rows, dtype=np.int64)
    n_total = m if n_total is None else int(n_total)
    if rows.shape != (m,):
        raise ValueError(f"rows must have one entry per item ({m}), got shape {rows.shape}")
    for name, values in (("texts", texts), ("ids", ids), ("thumbnails", thumbnails), ("confidence", confidence)):
        if values is not None and len(values) != n_total:
            raise ValueError(f"{name} must have one entry per row of the input ({n_total}), got {len(values)}")
    for name, points in layouts.items():
        if np.shape(points) != (m, 2):
            raise ValueError(f"layout {name!r} must have shape ({m}, 2), got {np.shape(points)}")
    retrieval = item_retrieval(x, codes, k, metric)
    data: dict[str, Any] = {
        "title": title, "version": __version__, "n_total": n_total, "n_shown": m, "metric": metric,
        "k": int(retrieval.neighbours.shape[1]), "classes": [str(c) for c in classes],
        "layouts": {name: _b64(np.asarray(p, "<f4")) for name, p in layouts.items()},
        "rows": _b64(rows.astype("<i4")), "codes": None if codes is None else _b64(np.asarray(codes, "<i4")),
        "nn": _b64(retrieval.neighbours.astype("<i4")), "nd": _b64(retrieval.distances.astype("<f4")),
        "ids": None if ids is None else [str(ids[r]) for r in rows.tolist()],
        "texts": None if texts is None else [_cut(texts[r]) for r in rows.tolist()],
        "thumbs": None if thumbnails is None else encode_thumbnails(np.asarray(thumbnails)[rows]),
        "confidence": None if confidence is None else _b64(np.asarray(confidence, "<f4")[rows]),
        "failures": retrieval.failures.tolist(), "margins": [round(v, 6) for v in retrieval.margins.tolist()],
        "counted": int(retrieval.counted.sum()), "p_at_1": None, "per_class": [], "confused": [],
        "reliability": _reliability(calibration), "log": read_training_log(training_log),
        "config": None if config is None else json.loads(json.dumps(config, default=str)),
    }
    if codes is not None:
        data["p_at_1"] = 1.0 - len(retrieval.failures) / max(1, data["counted"])
        data["per_class"] = per_class_scores(x, codes, retrieval, metric)
        data["confused"] = confused_pairs(codes, retrieval, CONFUSED_PAIRS)
        coverage = _coverage_by_class(calibration, classes)
        for row in data["per_class"]:
            row["coverage"] = coverage.get(row["code"])
        data["has_coverage"] = bool(coverage)
    write_text(Path(path), render_explorer(data))
    return data


def item_content(data: Any) -> tuple[list[str] | None, np.ndarray | None]:
    """``(texts, images)`` to show for the rows of a :class:`~metriclearn.data.LabeledData`: its texts (``.jsonl``),
    or its images (features shaped (n, h, w[, 3]), an image folder's (n, C, h, w), or the
    built-in 8×8 ``digits``), else ``(None, None)``.

    >>> from metriclearn.data import load_data
    >>> texts, images = item_content(load_data("digits"))
    >>> texts, images.shape
    (None, (1797, 8, 8))
    """
    X = data.X
    if isinstance(X, list):
        return list(X), None
    if X.ndim == 4 and X.shape[1] in (1, 3) and X.shape[3] not in (1, 3):  # decoded images (n, C, H, W)
        X = X.transpose(0, 2, 3, 1)
        return None, X[..., 0] if X.shape[3] == 1 else X
    if X.ndim in (3, 4):
        return None, X
    if data.source == "digits" and X.ndim == 2 and X.shape[1] == 64:
        return None, X.reshape(len(X), 8, 8)
    return None, None


def render_explorer(data: Mapping[str, Any]) -> str:
    """The page: the template with ``data`` as JSON in it (``</`` escaped so no string can close the script)."""
    template = resources.files("metriclearn.reports").joinpath("explorer_template.html").read_text("utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = str(data.get("title", "")).replace("&", "&amp;").replace("<", "&lt;")
    return template.replace("__TITLE__", title).replace("__DATA__", payload)


def encode_thumbnails(images: np.ndarray) -> dict[str, Any]:
    """(n, h, w) or (n, h, w, 3) images as ``{"w", "h", "c", "data"}``: 8-bit pixels, base64, at most
    :data:`THUMB_SIDE` pixels a side (every s-th pixel), each image scaled to its own 0..255 range.

    >>> t = encode_thumbnails(np.arange(2 * 64 * 64).reshape(2, 64, 64))
    >>> t["w"], t["h"], t["c"], len(base64.b64decode(t["data"]))
    (32, 32, 1, 2048)
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise ValueError(f"thumbnails must have shape (n, h, w) or (n, h, w, 3), got {images.shape}")
    step = max(1, -(-max(images.shape[1:3]) // THUMB_SIDE))
    images = images[:, ::step, ::step]
    low = images.reshape(len(images), -1).min(1).reshape(-1, *([1] * (images.ndim - 1)))
    high = images.reshape(len(images), -1).max(1).reshape(low.shape)
    pixels = np.round(255 * (images - low) / np.where(high > low, high - low, 1)).astype(np.uint8)
    channels = 1 if images.ndim == 3 else images.shape[3]
    return {"w": int(images.shape[2]), "h": int(images.shape[1]), "c": int(channels), "data": _b64(pixels)}


def read_training_log(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """A run's ``log.csv`` as ``{"columns": [...], "rows": [[number or None, ...], ...]}``; ``None`` when absent.

    >>> read_training_log(None) is None
    True
    """
    if path is None or not Path(path).is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    if not records:
        return None
    columns = list(records[0])
    return {"columns": columns, "rows": [[_float_or_none(r.get(c)) for c in columns] for r in records]}


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _reliability(calibration: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{method: {"before": table, "after": table}}`` from a stored calibration (tables of
    :func:`metriclearn.classify.conformal.reliability`)."""
    if not calibration:
        return None
    return {name: {"before": state["reliability_before"], "after": state["reliability_after"]}
            for name, state in calibration.items()}


def _coverage_by_class(calibration: Mapping[str, Any] | None, classes: Sequence[Any]) -> dict[int, float | None]:
    """Code -> conformal coverage on the calibration rows of that class (first calibrated method), by class value."""
    if not calibration:
        return {}
    state = next(iter(calibration.values()))
    by_name = {str(c): v for c, v in zip(state.get("classes", []), state.get("coverage_by_class") or [], strict=False)}
    return {code: by_name.get(str(c)) for code, c in enumerate(classes) if str(c) in by_name}


def _cut(text: Any) -> str:
    text = str(text)
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
