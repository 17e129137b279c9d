"""``metriclearn classify``: classifiers over a labelled index directory (``second-opinion``: cli/second_opinion.py).

``classify --out`` writes, by the file's extension:

- ``.npy``  the predicted labels (1-D, the index's label type: integers or strings);
- ``.csv``  one row per query: ``prediction`` then one probability column ``p_<class>`` per class;
- ``.json`` ``{"method", "classes", "predictions", "probabilities"}`` (probabilities as nested lists).

On an index calibrated for the method (``metriclearn calibrate``), the probabilities are the calibrated
ones and the classifier's parameters are the calibrated ones; ``--sets FILE.npy`` writes the conformal
prediction sets ((n, K) bool, columns in the order of the sorted distinct labels) and ``--reject`` marks
the predictions whose acceptance score is below the calibrated threshold in a separate bool array: a
``rejected`` column (csv) or list (json) after ``prediction(s)``, or ``--rejected-out FILE.npy`` beside a
``.npy`` of labels. The predictions themselves stay labels: a rejection never takes a label's value, so a
class ``-1`` or ``unknown`` cannot be mistaken for one. No two of ``--out``, ``--sets``, ``--rejected-out``
and the queries may be one file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._atomic import atomic_open, save_npy, write_json
from metriclearn._device import DEVICES
from metriclearn.classify.defaults import DEFAULT_K, DEFAULT_THETA
from metriclearn.cli._inputs import (
    check_dim,
    check_distinct_files,
    check_k,
    check_same_model,
    check_source,
    csv_columns,
    examples,
    quiet_option,
    read_vectors,
    vector_options,
)

OUTPUT_FORMATS = (".npy", ".csv", ".json")

_INDEX_HELP = "Index directory built with labels (metriclearn index build ... --labels FILE.npy)."
_device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the index searches and the cache model runs.",
)


@click.command("classify", epilog=examples(
    'metriclearn classify --index idx --embeddings emb.npy --labels labels.npy --method knn --out pred.npy',
    'metriclearn classify --index idx --model runs/digits --data digits --method cache --out pred.csv --reject',
))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help=_INDEX_HELP)
@vector_options("--embeddings", "Query embeddings (n, d) .npy (carries no model fingerprint: not checked).",
                labels_flag="--labels", aliases=("--queries",))
@click.option("--method", required=True, type=click.Choice(["knn", "cache"]), help="kNN vote or cache model.")
@click.option(
    "--k",
    "k",
    type=int,
    default=None,
    help=f"knn: neighbours that vote (default {DEFAULT_K}); cache: only the k most similar keys "
    "(default: every key, exact).",
)
@click.option("--theta", type=float, default=None, help=f"cache: inverse temperature θ (default {DEFAULT_THETA:g}).")
@click.option(
    "--weights", type=click.Choice(["distance", "uniform"]), default=None, help="knn: vote weights (default distance)."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Predictions: .npy labels, or .csv / .json with probabilities.",
)
@click.option("--sets", "sets_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write conformal prediction sets (n, K) bool .npy (needs a calibrated index).")
@click.option("--reject", is_flag=True,
              help="Mark the predictions whose calibrated acceptance score is too low as rejected: a 'rejected' "
              "column (csv/json) or --rejected-out (npy). Needs `metriclearn calibrate ... --target-precision P`.")
@click.option("--rejected-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --reject and a .npy --out: write the (n,) bool array of rejections here.")
@_device_option
@quiet_option
def classify(
    index_dir: Path,
    matrix: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    label_column: str,
    workers: int,
    skip_bad_images: bool,
    method: str,
    k: int | None,
    theta: float | None,
    weights: str | None,
    out: Path,
    sets_out: Path | None,
    reject: bool,
    rejected_out: Path | None,
    device: str,
    quiet: bool,
) -> None:
    """Classify query embeddings with the labelled vectors of an index: kNN vote or Orhan's cache model.

    Queries come from --embeddings FILE.npy [--labels FILE.npy] (--queries: its older name), or
    --model DIR --data PATH embeds them on the fly (an index built by another model is then refused).
    With labels, prints the accuracy and the recall of each class, lowest first.
    """
    _check_output(out, OUTPUT_FORMATS)
    if sets_out is not None:
        _check_output(sets_out, (".npy",), "--sets")
    _check_rejection_output(out, reject, rejected_out)
    check_distinct_files([("--out", out), ("--sets", sets_out), ("--rejected-out", rejected_out)],
                         [("--embeddings", matrix), ("--labels", labels), ("--data", data)])
    check_source(matrix, model, data, "--embeddings", labels, "--labels")
    if method == "knn" and theta is not None:
        raise click.UsageError("--theta applies to --method cache only")
    if method == "cache" and weights is not None:
        raise click.UsageError("--weights applies to --method knn only")
    index = _load_index(index_dir, device)
    k = check_k(k, index, index_dir) if k is not None else None
    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="queries", labels=labels,
                           labels_flag="--labels", device=device, columns=csv_columns(label_column),
                           workers=workers, skip_bad=skip_bad_images)
    check_same_model(index, index_dir, vectors)
    q = check_dim(vectors, index, index_dir)
    from metriclearn.classify.from_index import OptionClash, classifier_from_index, predict_with_index

    try:  # the stored calibration for the method, unless an option contradicts it (metriclearn.classify.from_index)
        classifier, calibration = classifier_from_index(index, method, k, theta, weights, device,
                                                        need_calibration=sets_out is not None or reject,
                                                        index_dir=index_dir)
    except OptionClash as exc:
        raise click.UsageError(str(exc)) from None
    if reject:
        assert calibration is not None  # --reject is trusted: _usable_calibration refused a missing one
        if calibration["rejection"] is None:
            raise ValueError(
                f"index {str(index_dir)!r} was calibrated for {method} without a target precision, so --reject "
                "has no threshold: rerun `metriclearn calibrate` with --target-precision P"
            )
    # every rank: on a sharded index under torchrun the searches are collectives; one search serves the vote and
    # the acceptance score
    proba, predictions, rejected = predict_with_index(classifier, q, reject)
    if not _is_main_process():  # rank 0 writes and prints
        return
    if sets_out is not None:
        save_npy(sets_out, classifier.predict_sets(q, proba=proba))
    _write_predictions(out, method, classifier.classes_, predictions, proba, rejected)
    if rejected_out is not None and rejected is not None:
        save_npy(rejected_out, rejected)
    note = " (calibrated)" if calibration is not None else ""
    click.echo(f"{method}{note}: {len(q)} predictions written to {out}")
    if rejected is not None:
        where = rejected_out if rejected_out is not None else f"the 'rejected' column of {out}"
        click.echo(f"rejected as unknown: {int(rejected.sum())} of {len(q)} (marked in {where})")
    if sets_out is not None:
        click.echo(f"prediction sets written to {sets_out}")
    if vectors.labels is not None:  # labelled queries: say how well it did
        from metriclearn.cli._accuracy import accuracy_lines

        click.echo(accuracy_lines(vectors.labels, predictions, classifier.classes_.tolist()))
        if rejected is not None:
            from metriclearn.cli._accuracy import rejection_line

            click.echo(rejection_line(vectors.labels, predictions, rejected, classifier.classes_.tolist()))


def _is_main_process() -> bool:
    """Rank 0 under torchrun (which writes and prints), or a plain single process."""
    from metriclearn._distributed import is_main_process

    return is_main_process()


# ---------------------------------------------------------------------------------------------- helpers
def _check_rejection_output(out: Path, reject: bool, rejected_out: Path | None) -> None:
    """``--rejected-out`` goes with ``--reject``, and a ``.npy`` ``--out`` with ``--reject`` needs it."""
    if rejected_out is not None:
        if not reject:
            raise click.UsageError("--rejected-out goes with --reject")
        _check_output(rejected_out, (".npy",), "--rejected-out")
        if out.suffix.lower() != ".npy":
            raise click.UsageError(f"--rejected-out goes with a .npy --out; "
                                   f"{out.suffix} output has a 'rejected' column")
    elif reject and out.suffix.lower() == ".npy":
        raise click.UsageError("--reject with a .npy --out needs --rejected-out FILE.npy (the bool array of "
                               "rejections; a .npy of labels has no room for it)")


def _check_output(out: Path, formats: tuple[str, ...], option: str = "--out") -> None:
    if out.suffix.lower() not in formats:
        raise click.BadParameter(
            f"{str(out)!r} must end in {', '.join(formats)}; got {out.suffix or 'no extension'!r}", param_hint=option
        )


def _load_index(index_dir: Path, device: str) -> Any:
    from metriclearn.indexes import load_index

    index = load_index(index_dir, device=device)
    if index.labels is None or len(index) == 0:
        problem = "carries no labels" if index.labels is None else "is empty"
        raise ValueError(f"index {str(index_dir)!r} {problem}; build it with labels "
                         "(metriclearn index build ... --labels FILE.npy, or --model DIR --data PATH with labels)")
    return index


def _load_features(path: Path, what: str, dim: int) -> np.ndarray:
    from metriclearn.data import load_matrix

    x = load_matrix(path, what)
    if x.shape[1] != dim:
        raise ValueError(f"{what} file {str(path)!r} has dimension {x.shape[1]}, but the index has dimension {dim}")
    return x


def _write_predictions(out: Path, method: str, classes: np.ndarray, predictions: np.ndarray, proba: np.ndarray,
                       rejected: np.ndarray | None = None) -> None:
    """``out`` by its extension; ``rejected`` (with --reject) as a ``rejected`` list / column in json / csv."""
    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, predictions)
    elif suffix == ".json":
        record: dict[str, Any] = {"method": method, "classes": classes.tolist(), "predictions": predictions.tolist()}
        if rejected is not None:
            record["rejected"] = rejected.tolist()
        write_json(out, {**record, "probabilities": proba.tolist()})
    else:
        flags = [[] for _ in predictions] if rejected is None else [[bool(r)] for r in rejected.tolist()]
        with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prediction", *(["rejected"] if rejected is not None else []),
                             *(f"p_{c}" for c in classes.tolist())])
            for label, flag, row in zip(predictions.tolist(), flags, proba, strict=True):
                writer.writerow([label, *flag, *(repr(float(v)) for v in row)])

