"""A self-contained HTML report: inline CSS, images as base64 ``data:`` URIs, every text html-escaped.

The file opens anywhere (mail attachment, CI artifact, offline) because it references nothing outside
itself.

Example
-------
>>> page = render_html("demo", [("t-SNE", b"\\x89PNG...")], {"separation": {"silhouette": 0.5}},
...                    config={"train": {"lr": 0.001}}, summary={"points": 10})
>>> "data:image/png;base64,iVBOR" in page, "0.5000" in page, "train.lr" in page
(True, True, True)
>>> "&lt;b&gt;" in render_html("<b>", [], {})
True
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from metriclearn import __version__

# What each metric means and which direction is better (shown next to the value).
METRIC_NOTES = {
    "silhouette": "mean silhouette coefficient in [-1, 1]; higher is better",
    "davies_bouldin": "mean worst-case ratio of within-class scatter to centroid distance; lower is better",
    "calinski_harabasz": "between- / within-class dispersion ratio; higher is better",
    "nmi": "normalised mutual information of k-means clusters vs labels; higher is better",
    "ami": "adjusted mutual information of k-means clusters vs labels; higher is better",
    "precision_at_1": "nearest neighbour has the same class (leave-one-out); higher is better",
    "r_precision": "precision among the R nearest, R = same-class count; higher is better",
    "map_at_r": "mean average precision at R (Musgrave et al. 2020); higher is better",
    "knn_accuracy": "majority vote of the nearest neighbours (leave-one-out); higher is better",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.muted { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { padding: 0.25rem 0.8rem; text-align: left; }
th { border-bottom: 2px solid #ccc; } tr:nth-child(even) td { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { color: #555; font-size: 0.9rem; }
"""


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of ``data`` (base64), for embedding an image in a page.

    >>> data_uri(b"abc")
    'data:image/png;base64,YWJj'
    """
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def format_value(value: Any) -> str:
    """Floats by magnitude, everything else as ``str`` (not escaped).

    Floats in [0.001, 10⁴) (metrics, most settings) get 4 decimals; smaller or larger ones (a learning rate
    of 1e-5, a weight decay, a large count as a float) 4 significant digits in ``%g`` form, so no setting
    prints as ``0.0000``.

    >>> format_value(0.123456), format_value(1e-5), format_value(3e-4), format_value(0.0), format_value(3)
    ('0.1235', '1e-05', '0.0003', '0.0000', '3')
    >>> format_value(123456.0), format_value(None)
    ('1.235e+05', '—')
    """
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, value)`` pairs of a nested mapping.

    >>> list(flatten({"a": {"b": 1}, "c": [1, 2]}))
    [('a.b', 1), ('c', [1, 2])]
    """
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, name + ".")
        else:
            yield name, value


def _class_attr(css_class: str) -> str:
    return f' class="{css_class}"' if css_class else ""


def _table(rows: Sequence[Sequence[tuple[str, str]]], header: Sequence[str]) -> str:
    """An HTML table; each cell is ``(text, css_class)``; text is escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{_class_attr(cls)}>{html.escape(text)}</td>" for text, cls in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """One table of every ``group -> {metric: value}`` pair, with what each metric means."""
    rows = [
        [(group, ""), (name, ""), (format_value(value), "num"), (METRIC_NOTES.get(name, ""), "muted")]
        for group, values in metrics.items()
        for name, value in values.items()
    ]
    return _table(rows, ["group", "metric", "value", "meaning"])


def key_value_table(mapping: Mapping[str, Any]) -> str:
    """A two-column table of a (nested) mapping, keys dotted."""
    rows = [[(key, ""), (format_value(value), "num" if isinstance(value, float) else "")]
            for key, value in flatten(mapping)]
    return _table(rows, ["key", "value"])


def render_html(
    title: str,
    images: Sequence[tuple[str, bytes]],
    metrics: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> str:
    """The report page: title, data summary, metrics table, embedded PNG images, run configuration.

    Parameters
    ----------
    title : page heading. images : ``(caption, png_bytes)`` pairs, embedded as data URIs.
    metrics : ``{group: {metric: value}}``. config : the run configuration (nested mapping) or None
    when unknown. summary : facts about the data (points, dimension, classes, ...).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">metriclearn {html.escape(__version__)}</p>',
    ]
    if summary:
        parts += ["<h2>Data</h2>", key_value_table(summary)]
    parts += ["<h2>Metrics</h2>", metrics_table(metrics)]
    if images:
        parts.append("<h2>Projections</h2>")
    for caption, png in images:
        alt = html.escape(caption, quote=True)
        parts.append(f'<figure><img src="{data_uri(png)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>')
    parts.append("<h2>Run configuration</h2>")
    parts.append(key_value_table(config) if config else '<p class="muted">not known (report made from files)</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
