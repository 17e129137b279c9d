"""``metriclearn report``: t-SNE / UMAP pictures, ``report.html`` and ``metrics.json`` for embeddings.

Heavy imports (torch, scikit-learn, matplotlib, faiss; umap only for ``--method umap``) happen inside the
command, so ``metriclearn --help`` stays fast, and a run directory is read with :mod:`metriclearn.runs`, so the
trainer is never imported (measured with ``python -X importtime``; tests/test_runs.py and
tests/cli/test_startup_cli.py check it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._device import DEVICES
from metriclearn.cli._inputs import check_source, csv_columns, examples, quiet_option, read_vectors, vector_options
from metriclearn.reports import DEFAULT_MAX_POINTS, METHODS


@click.command("report", epilog=examples(
    'metriclearn report --embeddings emb.npy --labels labels.npy --out report',
    'metriclearn report --model runs/digits --data digits --method umap --out report',
))
@vector_options("--embeddings", "Embeddings (n, d) as a float .npy file.", labels_flag="--labels")
@click.option("--method", type=click.Choice([*METHODS, "both"]), default="both", show_default=True,
              help="Which 2-D projection(s) to draw.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the PNGs, report.html and metrics.json: new, empty, or a report this tool wrote "
                   "(with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the report already in --out.")
@click.option("--max-points", type=click.IntRange(min=1), default=DEFAULT_MAX_POINTS, show_default=True,
              help="Project (and show in explorer.html) at most this many points (stratified subsample by class "
                   "beyond).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed for subsampling and projections.")
@click.option("--metric", type=click.Choice(["l2", "cosine"]), default="l2", show_default=True,
              help="Distance for the retrieval metrics.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where --model embeds --data.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="A calibrated index directory (metriclearn calibrate): adds its reliability diagrams.")
@quiet_option
def report(
    matrix: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    label_column: str,
    method: str,
    out: Path,
    overwrite: bool,
    max_points: int,
    seed: int,
    metric: str,
    device: str,
    index_dir: Path | None,
    quiet: bool,
) -> None:
    """Draw t-SNE / UMAP projections and measure how well the classes separate.

    Give either --embeddings FILE.npy [--labels FILE.npy], or --model DIR --data PATH (the run's model embeds
    the data, loaded once; the data's classes may be new). Without labels the points are drawn in one colour
    and only the projections are written. Writes tsne.png / umap.png, report.html (self-contained),
    metrics.json and explorer.html (interactive and offline: the map with hover, neighbours and search, the
    retrieval failures, per-class scores, training curves of a run) to --out.
    """
    from metriclearn._outdir import check_output_dir, claim_output_dir
    from metriclearn.reports import write_report
    from metriclearn.reports.report import check_report_inputs

    check_source(matrix, model, data, "--embeddings", labels, "--labels")
    check_output_dir(out, "report", overwrite=overwrite)  # before embedding
    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="embeddings", labels=labels,
                           labels_flag="--labels", device=device, columns=csv_columns(label_column))
    codes, classes = vectors.labels, vectors.classes
    if vectors.embedded is not None and codes is not None:
        codes = vectors.embedded.labels  # int codes into the run's classes (then new ones)
    try:  # too few points, a single class: say which files before any slow work
        check_report_inputs(vectors.x, codes, method, max_points, classes)
    except ValueError as err:
        raise ValueError(f"{vectors.origin}: {err}") from err
    if vectors.run is not None:
        assert model is not None and data is not None
        config, source = vectors.run.config, f"{model.name} on {Path(data).name}"
    else:
        assert matrix is not None
        config, source = None, matrix.name
    from metriclearn._distributed import is_main_process

    if not is_main_process():  # under torchrun every rank embedded its shard of --data; rank 0 alone writes
        return
    calibration, confidence = _calibration(index_dir, vectors) if index_dir is not None else (None, None)
    texts, thumbnails = _item_content(data) if data is not None else (None, None)
    training_log = None if vectors.run is None else Path(vectors.run.path) / "log.csv"
    with claim_output_dir(out, "report", overwrite=overwrite):
        metrics = write_report(vectors.x, codes, out, method=method, classes=classes, config=config,
                               max_points=max_points, seed=seed, metric=metric, source=source,
                               calibration=calibration, texts=texts, thumbnails=thumbnails, confidence=confidence,
                               training_log=training_log)
    names = [f"{m}.png" for m in (METHODS if method == "both" else (method,))] + ["report.html", "metrics.json",
                                                                                   "explorer.html"]
    names += [f"reliability-{name}.png" for name in calibration or {}]
    names += ["neighbours.png"] if thumbnails is not None else []
    click.echo(f"wrote {', '.join(names)} to {out}")
    if "retrieval" in metrics:
        ret, sep = metrics["retrieval"], metrics["separation"]
        click.echo(" · ".join(f"{k} {v:.4f}" for k, v in (*ret.items(), *sep.items())))
    else:
        click.echo("no labels: projections only, no class metrics")


def _calibration(index_dir: Path, vectors: Any) -> tuple[dict[str, Any], np.ndarray]:
    """The calibrations stored in an index directory, and each row's calibrated confidence (the top probability
    of the first calibrated classifier, kNN before cache); an uncalibrated index is an error (why pass it?)."""
    from metriclearn.classify.from_index import calibrated_classifier
    from metriclearn.cli._inputs import check_dim, check_same_model
    from metriclearn.indexes import load_index

    index = load_index(index_dir, device="cpu")
    calibration = index.attrs.get("calibration")
    if not calibration:
        raise ValueError(
            f"index {str(index_dir)!r} is not calibrated: run `metriclearn calibrate --index {index_dir} ...` first"
        )
    check_same_model(index, index_dir, vectors)
    method = "knn" if "knn" in calibration else next(iter(calibration))
    classifier = calibrated_classifier(index, method, calibration[method], "cpu", index_dir)
    confidence = classifier.predict_proba(check_dim(vectors, index, index_dir)).max(axis=1)
    return dict(calibration), np.asarray(confidence, dtype=np.float32)


def _item_content(data: str) -> tuple[list[str] | None, np.ndarray | None]:
    """The texts (.jsonl) or images (digits, image-shaped .npz, an image folder or path CSV) of ``--data``, for the
    explorer to show."""
    from metriclearn.images import is_image_source

    if data != "digits" and Path(data).suffix.lower() not in (".jsonl", ".npz") and not is_image_source(Path(data)):
        return None, None
    from metriclearn.data import load_data
    from metriclearn.reports.explorer import item_content

    return item_content(load_data(data, require_labels=False))
