"""``metriclearn classify`` and ``metriclearn second-opinion``: classifiers over a labelled index directory.

``classify --out`` writes, by the file's extension:

- ``.npy``  the predicted labels (1-D, the index's label type: integers or strings);
- ``.csv``  one row per query: ``prediction`` then one probability column ``p_<class>`` per class;
- ``.json`` ``{"method", "classes", "predictions", "probabilities"}`` (probabilities as nested lists).

``second-opinion --out FILE.npy`` writes the blended probabilities (n, K) float32, columns in the order of
the index's sorted distinct labels (the order ``--probs`` must use too).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._atomic import atomic_open, save_npy, write_json
from metriclearn.cli._inputs import (
    check_dim,
    check_k,
    check_same_model,
    check_source,
    load_probabilities,
    read_vectors,
    vector_options,
)
from metriclearn.classify.cache import LAM_GRID, THETA_GRID

OUTPUT_FORMATS = (".npy", ".csv", ".json")
DEFAULT_K = 10
DEFAULT_THETA = 50.0
DEFAULT_LAM = 0.5

_INDEX_HELP = "Index directory built with labels (metriclearn index build ... --labels FILE.npy)."
_device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the index searches and the cache model runs.",
)


@click.command("classify")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help=_INDEX_HELP)
@vector_options("--queries", "Query embeddings (n, d) .npy (carries no model fingerprint: not checked).")
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
    type=click.Path(path_type=Path),
    help="Predictions: .npy labels, or .csv / .json with probabilities.",
)
@_device_option
def classify(
    index_dir: Path,
    matrix: Path | None,
    model: Path | None,
    data: str | None,
    method: str,
    k: int | None,
    theta: float | None,
    weights: str | None,
    out: Path,
    device: str,
) -> None:
    """Classify query embeddings with the labelled vectors of an index: kNN vote or Orhan's cache model.

    Queries come from --queries FILE.npy, or --model DIR --data PATH embeds them on the fly (an index built by
    another model is then refused).
    """
    _check_output(out, OUTPUT_FORMATS)
    check_source(matrix, model, data, "--queries")
    if method == "knn" and theta is not None:
        raise click.UsageError("--theta applies to --method cache only")
    if method == "cache" and weights is not None:
        raise click.UsageError("--weights applies to --method knn only")
    from metriclearn.classify import CacheClassifier, KNNClassifier

    index = _load_index(index_dir, device)
    k = check_k(k, index, index_dir) if k is not None else None
    vectors = read_vectors(matrix, model, data, matrix_flag="--queries", what="queries", device=device)
    check_same_model(index, index_dir, vectors)
    q = check_dim(vectors, index, index_dir)
    if method == "knn":
        k = k if k is not None else min(DEFAULT_K, len(index))
        classifier: Any = KNNClassifier.from_index(index, n_neighbors=k, weights=weights or "distance")
    else:
        theta = DEFAULT_THETA if theta is None else theta
        classifier = CacheClassifier.from_index(index, theta=theta, top_k=k, device=device)
    proba = classifier.predict_proba(q)
    predictions = classifier.classes_[np.argmax(proba, axis=1)]
    _write_predictions(out, method, classifier.classes_, predictions, proba)
    click.echo(f"{method}: {len(q)} predictions written to {out}")


@click.command("second-opinion")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help=_INDEX_HELP)
@click.option("--features", required=True, type=click.Path(path_type=Path), help="Features (n, d) .npy.")
@click.option("--probs", required=True, type=click.Path(path_type=Path), help="The model's probabilities (n, K) .npy.")
@click.option("--theta", type=float, default=None, help=f"Inverse temperature θ (default {DEFAULT_THETA:g}).")
@click.option("--lam", type=float, default=None, help=f"Weight λ of the cache (default {DEFAULT_LAM:g}).")
@click.option(
    "--tune",
    nargs=3,
    type=click.Path(path_type=Path),
    default=None,
    metavar="FEATURES_VAL.npy PROBS_VAL.npy LABELS_VAL.npy",
    help="Choose θ and λ on held-out data (not the index's own vectors) instead of --theta/--lam.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Blended probabilities (n, K) .npy.")
@_device_option
def second_opinion(
    index_dir: Path,
    features: Path,
    probs: Path,
    theta: float | None,
    lam: float | None,
    tune: tuple[Path, Path, Path] | None,
    out: Path,
    device: str,
) -> None:
    """Blend a model's probabilities with the cache's: (1 − λ)·p_model + λ·p_cache (Orhan 2018).

    The cache is the labelled index; --probs columns follow its sorted distinct labels.
    """
    _check_output(out, (".npy",))
    if tune and (theta is not None or lam is not None):
        raise click.UsageError("--tune chooses θ and λ itself: give either --tune or --theta/--lam, not both")
    from metriclearn.classify import CacheClassifier
    from metriclearn.data import load_labels

    index = _load_index(index_dir, device)
    x = _load_features(features, "features", index.dim)
    p = load_probabilities(probs, "--probs", len(x), len(np.unique(index.labels)))
    theta = DEFAULT_THETA if theta is None else theta
    cache = CacheClassifier.from_index(index, theta=theta, lam=DEFAULT_LAM if lam is None else lam, device=device)
    if tune:
        x_val = _load_features(tune[0], "validation features", index.dim)
        p_val = load_probabilities(tune[1], "--tune PROBS_VAL", len(x_val), len(np.unique(index.labels)))
        y_val = load_labels(tune[2], n=len(x_val))
        cache.tune(x_val, p_val, y_val, THETA_GRID, LAM_GRID)
        best = cache.tuning_["accuracy"].max()
        click.echo(f"tuned on {len(x_val)} held-out rows: theta={cache.theta_:g}, lam={cache.lam_:g} "
                   f"(validation accuracy {best:.4f})")
    blended = cache.second_opinion(x, p)
    save_npy(out, blended.astype(np.float32))
    click.echo(f"second opinion (theta={cache.theta_:g}, lam={cache.lam_:g}): {len(x)} rows written to {out}")


# ---------------------------------------------------------------------------------------------- helpers
def _check_output(out: Path, formats: tuple[str, ...]) -> None:
    if out.suffix.lower() not in formats:
        raise click.BadParameter(
            f"{str(out)!r} must end in {', '.join(formats)}; got {out.suffix or 'no extension'!r}", param_hint="--out"
        )


def _load_index(index_dir: Path, device: str) -> Any:
    from metriclearn.indexes import EmbeddingIndex

    index = EmbeddingIndex.load(index_dir, device=device)
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


def _write_predictions(out: Path, method: str, classes: np.ndarray, predictions: np.ndarray, proba: np.ndarray) -> None:
    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, predictions)
    elif suffix == ".json":
        write_json(
            out,
            {
                "method": method,
                "classes": classes.tolist(),
                "predictions": predictions.tolist(),
                "probabilities": proba.tolist(),
            },
        )
    else:
        with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prediction", *(f"p_{c}" for c in classes.tolist())])
            for label, row in zip(predictions.tolist(), proba):
                writer.writerow([label, *(repr(float(v)) for v in row)])

