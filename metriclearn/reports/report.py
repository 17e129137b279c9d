"""``write_report``: projections, plots, metrics and a self-contained HTML page for one set of embeddings.

Files written to ``out_dir`` (atomically):

* ``tsne.png`` and/or ``umap.png`` — the 2-D projection coloured by class, class centroids marked;
* ``metrics.json`` — the shape every metriclearn ``metrics.json`` has
  (:func:`metriclearn.metrics.embedding_metrics`): ``{"retrieval": ..., "separation": ..., "data": ...}``, where
  ``retrieval`` is leave-one-out :func:`~metriclearn.metrics.retrieval_metrics` and ``separation`` is
  :func:`~metriclearn.metrics.separation_metrics`, both on the full-dimensional embeddings (not on the 2-D
  pictures), over at most ``metric_max_points`` rows (stratified subsample beyond, as for projections).
  Without labels (``labels=None``) the points are drawn in one colour and ``metrics.json`` holds ``data`` only;
* ``report.html`` — the pictures (base64 data URIs), the metrics table and the run configuration;
* ``explorer.html`` — the interactive, offline page over the projected points (:mod:`metriclearn.reports.explorer`).

All numeric work runs with one BLAS/OpenMP thread (``threadpoolctl``): results do not depend on the
machine's thread count, and OpenMP threads no longer compete for the cores of a busy machine
(measurements: BENCHMARKS.md, "Reports").

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 30)
>>> x = rng.normal(size=(90, 5)) + 6 * np.eye(5)[y]
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> metrics = write_report(x, y, out, method="tsne", classes=["a", "b", "c"], tsne_iter=250)
>>> sorted(p.name for p in out.iterdir())
['explorer.html', 'metrics.json', 'report.html', 'tsne.png']
>>> metrics["retrieval"]["precision_at_1"]
1.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from metriclearn._atomic import write_bytes, write_json, write_text
from metriclearn._checks import check_choice, check_labels, check_matrix, check_positive_int
from metriclearn._progress import progress
from metriclearn.data import stratified_subsample
from metriclearn.metrics import embedding_metrics
from metriclearn.reports import DEFAULT_MAX_POINTS, METHODS, MIN_POINTS
from metriclearn.reports.html import render_html
from metriclearn.reports.plots import as_codes, png_bytes, scatter_figure
from metriclearn.reports.projection import check_enough_points, project

METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}
METRIC_MAX_POINTS = 20000  # silhouette is O(N²): beyond this, metrics use a stratified subsample


def report_methods(method: str) -> tuple[str, ...]:
    """The projections ``method`` asks for: ``"tsne"``, ``"umap"`` or ``"both"``.

    >>> report_methods("both")
    ('tsne', 'umap')
    """
    check_choice(method, (*METHODS, "both"), "method")
    return METHODS if method == "both" else (method,)


def check_report_inputs(
    embeddings: Any, labels: Any, method: str, max_points: int, classes: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, list]:
    """Validate everything before any slow work; return ``(x, codes, classes)``.

    ``labels=None`` (unlabelled data) gives ``codes=None`` and no classes. Raises ``ValueError`` for
    non-finite values, a length mismatch, a single class, or fewer points (or a smaller ``max_points``) than
    a projection needs.
    """
    x = check_matrix(embeddings, "embeddings")
    codes: np.ndarray | None = None
    classes = [] if labels is None else classes
    if labels is not None:
        check_labels(labels, "labels", n=len(x))
        codes, classes = as_codes(labels, classes)
        present = np.unique(codes)
        if len(present) < 2:
            name = classes[present[0]] if len(present) else None
            raise ValueError(f"labels hold a single class ({name!r}): a report needs at least 2 classes")
    max_points = check_positive_int(max_points, "max_points")
    for m in report_methods(method):
        check_enough_points(len(x), m)
        if max_points < MIN_POINTS[m]:
            raise ValueError(f"max_points must be at least {MIN_POINTS[m]} for {m}, got {max_points}")
    return x, codes, list(classes or [])


def compute_metrics(
    x: np.ndarray, codes: np.ndarray, metric: str = "l2", max_points: int = METRIC_MAX_POINTS, seed: int = 0
) -> tuple[dict[str, Any], int]:
    """``(embedding_metrics(...), rows used)`` on at most ``max_points`` stratified rows."""
    rows = stratified_subsample(codes, max_points, seed)
    return embedding_metrics(x[rows], codes[rows], metric=metric, seed=seed), len(rows)


def write_report(
    embeddings: Any,
    labels: Any,
    out_dir: str | os.PathLike[str],
    method: str = "both",
    classes: Sequence[Any] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    metric: str = "l2",
    tsne_iter: int = 1000,
    umap_epochs: int | None = None,
    metric_max_points: int = METRIC_MAX_POINTS,
    source: str | None = None,
    calibration: Mapping[str, Any] | None = None,
    explorer: bool = True,
    texts: Sequence[str] | None = None,
    ids: Sequence[Any] | None = None,
    thumbnails: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    training_log: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write ``<method>.png``, ``metrics.json``, ``report.html`` and ``explorer.html`` for ``embeddings`` (and, with
    ``thumbnails``, ``neighbours.png``: :func:`metriclearn.reports.neighbour_grid.neighbour_grid`).

    Parameters
    ----------
    embeddings : (n, d) finite floats. labels : (n,) class labels (ints or strings), or int codes into
        ``classes`` when ``classes`` is given (the class names shown in legends); ``None`` for unlabelled
        embeddings (one colour, no metrics).
    method : ``"tsne"``, ``"umap"`` or ``"both"``. config : run configuration shown in the HTML, if known.
    max_points : projection cap (stratified subsample beyond it). seed : seeds subsampling and projections.
    metric : ``"l2"`` or ``"cosine"`` for the retrieval metrics. tsne_iter, umap_epochs : optimisation
        lengths (t-SNE >= 250 iterations; None = UMAP's default). metric_max_points : metrics cap.
    source : where the embeddings came from (shown in titles and the HTML).
    calibration : an index's ``attrs["calibration"]`` (``{"knn": ..., "cache": ...}``); each method's
        reliability diagram is written as ``reliability-<method>.png`` and shown in the HTML.
    explorer : also write ``explorer.html`` (:func:`metriclearn.reports.explorer.write_explorer`) over the
        projected points: texts, ids, thumbnails, confidence (one per row of ``embeddings``) are what it shows
        of each item; training_log is a run's ``log.csv`` (training curves).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    x, codes, classes = check_report_inputs(embeddings, labels, method, max_points, classes)
    metric_max_points = check_positive_int(metric_max_points, "metric_max_points")
    out = Path(out_dir)
    with threadpool_limits(limits=1):  # see the module docstring
        metrics: dict[str, Any] = {"data": {}}
        if codes is not None:
            metrics, metric_rows = compute_metrics(x, codes, metric, metric_max_points, seed)
            metrics["data"]["metric_points"] = metric_rows
        data = {
            **metrics.pop("data"),
            "source": source,
            "n_points": len(x),
            "dim": x.shape[1],
            "n_classes": len(classes),
            "classes": classes,
            "metric": metric,
            "seed": seed,
        }
        shown_codes = np.zeros(len(x), np.int64) if codes is None else codes  # one colour without labels
        shown_classes = ["unlabelled"] if codes is None else classes
        images = []
        layouts: dict[str, np.ndarray] = {}
        rows = stratified_subsample(shown_codes, max_points, seed)  # what project() keeps: the explorer's items
        for name in progress(report_methods(method), desc="projecting"):
            proj = project(x, shown_codes, name, max_points, seed, tsne_iter=tsne_iter, umap_epochs=umap_epochs)
            assert np.array_equal(proj.indices, rows)
            layouts[METHOD_NAMES[name]] = proj.points
            title, subtitle = _titles(name, proj.indices.size, x.shape, len(classes), metrics, source)
            png = png_bytes(scatter_figure(proj.points, shown_codes[proj.indices], shown_classes, title, subtitle))
            write_bytes(out / f"{name}.png", png)
            data[f"{name}_points"] = len(proj.indices)
            images.append((f"{title} — {subtitle}", png))
    if thumbnails is not None and len(x) > 1:  # pictures: a few queries and their nearest neighbours
        from metriclearn.reports.neighbour_grid import neighbour_grid

        png = png_bytes(neighbour_grid(np.asarray(thumbnails), x, codes, shown_classes if codes is None else classes,
                                       metric=metric, seed=seed))
        write_bytes(out / "neighbours.png", png)
        images.append(("A few queries and their nearest neighbours (green: same class, red: another)", png))
    for name, state in (calibration or {}).items():
        from metriclearn.reports.reliability import reliability_figure

        title = f"{name}: calibration rows held out from the fit (ECE before / after)"
        png = png_bytes(reliability_figure(state["reliability_before"], state["reliability_after"], title))
        write_bytes(out / f"reliability-{name}.png", png)
        images.append((f"Reliability diagram, {name} (the calibration stored in the index)", png))
    if explorer:
        from metriclearn.reports.explorer import write_explorer

        with threadpool_limits(limits=1):
            write_explorer(out / "explorer.html", x[rows], None if codes is None else codes[rows], layouts,
                           classes=classes, rows=rows, n_total=len(x), metric=metric, texts=texts, ids=ids,
                           thumbnails=thumbnails, confidence=confidence, calibration=calibration,
                           training_log=training_log, config=config,
                           title=f"metriclearn explorer: {source or 'embeddings'}")
        data["explorer_points"] = len(rows)
    result = {**metrics, "data": data}
    write_json(out / "metrics.json", result)
    summary = {k: v for k, v in data.items() if k != "classes" and v is not None}
    summary["classes"] = ", ".join(str(c) for c in classes[:50]) + (" ..." if len(classes) > 50 else "")
    page = render_html(f"metriclearn report: {source or 'embeddings'}", images, metrics, config, summary)
    write_text(out / "report.html", page)
    return result


def _titles(
    method: str, shown: int, shape: tuple[int, int], num_classes: int, metrics: Mapping[str, Mapping[str, float]],
    source: str | None,
) -> tuple[str, str]:
    """Plot title (method, source, key metric) and subtitle (sizes, second metric)."""
    n, d = shape
    points = f"{n} points" if shown == n else f"{shown} of {n} points (stratified sample)"
    title = f"{METHOD_NAMES[method]} of {source or 'embeddings'}"
    if "retrieval" not in metrics:  # unlabelled: nothing to measure
        return title, f"{points} · {d}-d · no labels"
    p1 = metrics["retrieval"].get("precision_at_1", float("nan"))
    sil = metrics["separation"].get("silhouette", float("nan"))
    title += f" · precision@1 {p1:.3f}"
    subtitle = f"{points} · {d}-d · {num_classes} classes · silhouette {sil:.3f} in {d}-d"
    return title, subtitle
