"""``metriclearn report``: t-SNE / UMAP pictures, ``report.html`` and ``metrics.json`` for embeddings.

Heavy imports (scikit-learn, matplotlib, umap, the trainer) happen inside the command, so ``metriclearn
--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from metriclearn.cli._inputs import quiet_option, read_vectors, vector_options
from metriclearn.reports import DEFAULT_MAX_POINTS, METHODS
from metriclearn.training.config import DEVICES


@click.command("report")
@vector_options("--embeddings", "Embeddings (n, d) as a float .npy file.", labels_flag="--labels")
@click.option("--method", type=click.Choice([*METHODS, "both"]), default="both", show_default=True,
              help="Which 2-D projection(s) to draw.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the PNGs, report.html and metrics.json: new, empty, or a report this tool wrote "
                   "(with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the report already in --out.")
@click.option("--max-points", type=click.IntRange(min=1), default=DEFAULT_MAX_POINTS, show_default=True,
              help="Project at most this many points (stratified subsample by class beyond).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsampling and projections.")
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
    and only the projections are written. Writes tsne.png / umap.png, report.html (self-contained) and
    metrics.json to --out.
    """
    from metriclearn._outdir import claim_output_dir
    from metriclearn.reports import write_report
    from metriclearn.reports.report import check_report_inputs

    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="embeddings", labels=labels,
                           labels_flag="--labels", device=device)
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
    calibration = _calibration(index_dir) if index_dir is not None else None
    with claim_output_dir(out, "report", overwrite=overwrite):
        metrics = write_report(vectors.x, codes, out, method=method, classes=classes, config=config,
                               max_points=max_points, seed=seed, metric=metric, source=source,
                               calibration=calibration)
    names = [f"{m}.png" for m in (METHODS if method == "both" else (method,))] + ["report.html", "metrics.json"]
    names += [f"reliability-{name}.png" for name in calibration or {}]
    click.echo(f"wrote {', '.join(names)} to {out}")
    if "retrieval" in metrics:
        ret, sep = metrics["retrieval"], metrics["separation"]
        click.echo(" · ".join(f"{k} {v:.4f}" for k, v in (*ret.items(), *sep.items())))
    else:
        click.echo("no labels: projections only, no class metrics")


def _calibration(index_dir: Path) -> dict[str, Any]:
    """The calibrations stored in an index directory; an uncalibrated index is an error (why pass it?)."""
    from metriclearn.indexes import EmbeddingIndex

    calibration = EmbeddingIndex.load(index_dir, device="cpu").attrs.get("calibration")
    if not calibration:
        raise ValueError(
            f"index {str(index_dir)!r} is not calibrated: run `metriclearn calibrate --index {index_dir} ...` first"
        )
    return dict(calibration)
