"""``metriclearn report``: t-SNE / UMAP pictures, ``report.html`` and ``metrics.json`` for embeddings.

Heavy imports (scikit-learn, matplotlib, umap, the trainer) happen inside the command, so ``metriclearn
--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from metriclearn.reports import DEFAULT_MAX_POINTS, METHODS


@click.command("report")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Embeddings (n, d) as a float .npy file.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labels (n,) as a .npy file (ints or strings); goes with --embeddings.")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A trained run directory (from `metriclearn train`); goes with --data.")
@click.option("--data", "data_source", metavar="PATH|digits",
              help="Data to embed with --model: .npz / .csv / .jsonl or the built-in 'digits'.")
@click.option("--method", type=click.Choice([*METHODS, "both"]), default="both", show_default=True,
              help="Which 2-D projection(s) to draw.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the PNGs, report.html and metrics.json.")
@click.option("--max-points", type=click.IntRange(min=1), default=DEFAULT_MAX_POINTS, show_default=True,
              help="Project at most this many points (stratified subsample by class beyond).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsampling and projections.")
@click.option("--metric", type=click.Choice(["l2", "cosine"]), default="l2", show_default=True,
              help="Distance for the retrieval metrics.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="A calibrated index directory (metriclearn calibrate): adds its reliability diagrams.")
def report(
    embeddings: Path | None,
    labels: Path | None,
    model: Path | None,
    data_source: str | None,
    method: str,
    out: Path,
    max_points: int,
    seed: int,
    metric: str,
    index_dir: Path | None,
) -> None:
    """Draw t-SNE / UMAP projections and measure how well the classes separate.

    Give either --embeddings FILE.npy --labels FILE.npy, or --model DIR --data PATH (the run's model
    embeds the data). Writes tsne.png / umap.png, report.html (self-contained) and metrics.json to --out.
    """
    _check_sources(embeddings, labels, model, data_source)
    if embeddings is not None and labels is not None:
        x, y, classes, config, source = _from_files(embeddings, labels)
        origin = f"embeddings {str(embeddings)!r} with labels {str(labels)!r}"
    else:
        assert model is not None and data_source is not None
        x, y, classes, config, source = _from_run(model, data_source)
        origin = f"run {str(model)!r} on {data_source!r}"
    from metriclearn.reports import write_report
    from metriclearn.reports.report import check_report_inputs

    try:  # too few points, a single class: say which files before any slow work
        check_report_inputs(x, y, method, max_points, classes)
    except ValueError as err:
        raise ValueError(f"{origin}: {err}") from err
    calibration = _calibration(index_dir) if index_dir is not None else None
    metrics = write_report(x, y, out, method=method, classes=classes, config=config, max_points=max_points,
                           seed=seed, metric=metric, source=source, calibration=calibration)
    names = [f"{m}.png" for m in (METHODS if method == "both" else (method,))] + ["report.html", "metrics.json"]
    names += [f"reliability-{name}.png" for name in calibration or {}]
    click.echo(f"wrote {', '.join(names)} to {out}")
    ret, sep = metrics["retrieval"], metrics["separation"]
    click.echo(" · ".join(f"{k} {v:.4f}" for k, v in (*ret.items(), *sep.items())))


def _check_sources(embeddings: Path | None, labels: Path | None, model: Path | None, data: str | None) -> None:
    """Exactly one of (--embeddings + --labels) and (--model + --data), else a usage error (exit 2)."""
    from_files = embeddings is not None or labels is not None
    from_run = model is not None or data is not None
    if from_files and from_run:
        raise click.UsageError("give either --embeddings/--labels or --model/--data, not both")
    if from_files and (embeddings is None or labels is None):
        raise click.UsageError("--embeddings and --labels go together: give both")
    if from_run and (model is None or data is None):
        raise click.UsageError("--model and --data go together: give both")
    if not (from_files or from_run):
        raise click.UsageError("give --embeddings FILE.npy --labels FILE.npy, or --model DIR --data PATH")


def _from_files(embeddings: Path, labels: Path) -> tuple[Any, Any, None, None, str]:
    """Embeddings and labels from .npy files, with errors that name the file."""
    from metriclearn.data import load_labels, load_matrix

    x = load_matrix(embeddings, name="embeddings")
    y = load_labels(labels, n=len(x))
    return x, y, None, None, embeddings.name


def _from_run(model: Path, data: str) -> tuple[Any, Any, list, dict, str]:
    """Embed ``data`` with the trained run in ``model``; the run's configuration goes into the report."""
    from metriclearn.training import embed_from_run, load_run  # lazy: the trainer pulls in torch models

    x, y, classes = embed_from_run(model, data)
    config = load_run(model)[1]
    return x, y, classes, config, f"{model.name} on {Path(data).name}"


def _calibration(index_dir: Path) -> dict[str, Any]:
    """The calibrations stored in an index directory; an uncalibrated index is an error (why pass it?)."""
    from metriclearn.indexes import EmbeddingIndex

    calibration = EmbeddingIndex.load(index_dir, device="cpu").attrs.get("calibration")
    if not calibration:
        raise ValueError(
            f"index {str(index_dir)!r} is not calibrated: run `metriclearn calibrate --index {index_dir} ...` first"
        )
    return dict(calibration)
