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

from metriclearn._checks import check_matrix
from metriclearn._atomic import atomic_open, save_npy, write_json
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
@click.option("--queries", required=True, type=click.Path(path_type=Path), help="Query embeddings (n, d) .npy.")
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
    queries: Path,
    method: str,
    k: int | None,
    theta: float | None,
    weights: str | None,
    out: Path,
    device: str,
) -> None:
    """Classify query embeddings with the labelled vectors of an index: kNN vote or Orhan's cache model."""
    _check_output(out, OUTPUT_FORMATS)
    if method == "knn" and theta is not None:
        raise click.UsageError("--theta applies to --method cache only")
    if method == "cache" and weights is not None:
        raise click.UsageError("--weights applies to --method knn only")
    from metriclearn.classify import CacheClassifier, KNNClassifier

    index = _load_index(index_dir, device)
    q = _load_features(queries, "queries", index.dim)
    if method == "knn":
        k = _check_k(k, index, index_dir) if k is not None else min(DEFAULT_K, len(index))
        model: Any = KNNClassifier.from_index(index, n_neighbors=k, weights=weights or "distance")
    else:
        top_k = _check_k(k, index, index_dir) if k is not None else None
        theta = DEFAULT_THETA if theta is None else theta
        if hasattr(index, "shards"):  # sharded: per-shard sums, combined exactly (rank r holds shard r)
            if top_k is not None:
                raise click.UsageError("--k (top-k cache) needs an unsharded index; a sharded one runs the exact cache")
            from metriclearn.classify.sharded_cache import sharded_cache_proba

            classes, proba = sharded_cache_proba(index, q, theta, device=device)
            _finish(out, method, classes, proba)
            return
        model = CacheClassifier.from_index(index, theta=theta, top_k=top_k, device=device)
    _finish(out, method, model.classes_, model.predict_proba(q))  # collective for a sharded index under torchrun


def _finish(out: Path, method: str, classes: np.ndarray, proba: np.ndarray) -> None:
    """Write the predictions (rank 0 only under torchrun) and say so."""
    from metriclearn.training.distributed import is_main_process

    if not is_main_process():
        return
    predictions = classes[np.argmax(proba, axis=1)]
    _write_predictions(out, method, classes, predictions, proba)
    click.echo(f"{method}: {len(proba)} predictions written to {out}")


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
    p = _load_probabilities(probs, "probs", len(x))
    theta = DEFAULT_THETA if theta is None else theta
    cache = CacheClassifier.from_index(index, theta=theta, lam=DEFAULT_LAM if lam is None else lam, device=device)
    if tune:
        x_val = _load_features(tune[0], "validation features", index.dim)
        p_val = _load_probabilities(tune[1], "validation probabilities", len(x_val))
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
    from metriclearn.classify._validation import index_labels
    from metriclearn.indexes import EmbeddingIndex

    index = EmbeddingIndex.load(index_dir, device=device)
    try:
        index_labels(index)
    except ValueError as exc:
        raise ValueError(f"index {str(index_dir)!r}: {exc}") from None
    return index


def _load_features(path: Path, what: str, dim: int) -> np.ndarray:
    from metriclearn.data import load_matrix

    x = load_matrix(path, what)
    if x.shape[1] != dim:
        raise ValueError(f"{what} file {str(path)!r} has dimension {x.shape[1]}, but the index has dimension {dim}")
    return x


def _load_probabilities(path: Path, what: str, n: int) -> np.ndarray:
    from metriclearn.data import load_matrix

    p = load_matrix(path, what)
    if p.shape[0] != n:
        raise ValueError(f"{what} file {str(path)!r} has {p.shape[0]} rows, but the features have {n}")
    return check_matrix(p, f"{what} file {str(path)!r}", dtype=np.float64)


def _check_k(k: int, index: Any, index_dir: Path) -> int:
    if k <= 0:
        raise ValueError(f"--k must be a positive integer, got {k}")
    if k > len(index):
        raise ValueError(f"--k {k} is larger than the index {str(index_dir)!r} ({len(index)} vectors)")
    return k


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

