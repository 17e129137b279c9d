"""2-D projections of embeddings with t-SNE (scikit-learn) and UMAP (umap-learn).

Three steps, all seeded so a report is reproducible on CPU:

1. **Cap.** At most ``max_points`` rows are projected (default ``DEFAULT_MAX_POINTS`` = 3000); larger sets
   are subsampled *stratified by class* (:func:`stratified_subsample`), so every class keeps its share and
   no class disappears. The cap keeps a ``--method both`` report under a minute on one busy core. Measured
   on MNIST (784-d, one thread, CPU seconds): t-SNE 6 s / 9.5 s / 18 s and UMAP 3.5 s / 7 s / 26 s at
   2000 / 3000 / 5000 points, plus ~7 s of numba compilation on UMAP's first call in a process. Above 4096
   points UMAP switches to approximate neighbours (NN-descent), which compiles more code: hence 3000.
2. **PCA first** when the dimension exceeds :data:`PCA_DIM` (50), the usual t-SNE recipe
   (van der Maaten & Hinton 2008): it removes noise dimensions and makes neighbour search cheap.
3. **Project** to 2-D with ``sklearn.manifold.TSNE`` (``init="pca"``, ``learning_rate="auto"``,
   perplexity ``min(30, (n - 1) / 3)``) or ``umap.UMAP`` (``n_neighbors = min(15, n - 1)``,
   ``random_state=seed`` and ``n_jobs=1``, the only way UMAP is deterministic). ``umap`` is imported
   lazily: it compiles with numba and costs seconds to import.

Everything runs on **one thread** (``threadpoolctl.threadpool_limits(1)`` around PCA and t-SNE; UMAP with
``n_jobs=1``): Barnes-Hut t-SNE's result depends on the OpenMP thread count, so this makes a seeded picture
the same on every machine, and OpenMP threads do not compete for the cores of a small shared machine.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
>>> y = np.repeat([0, 1, 2], 20)
>>> p = project(x, y, "tsne", max_points=30, tsne_iter=250)
>>> p.points.shape, p.indices.shape, np.bincount(y[p.indices]).tolist()
((30, 2), (30,), [10, 10, 10])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from metriclearn._checks import check_choice, check_labels, check_matrix, check_positive_int
from metriclearn._scale import rescaled
from metriclearn.data import stratified_subsample
from metriclearn.reports import DEFAULT_MAX_POINTS, METHODS, MIN_POINTS

PCA_DIM = 50
TSNE_PERPLEXITY = 30.0
UMAP_NEIGHBORS = 15


@dataclass(frozen=True)
class Projection:
    """A 2-D projection of (a subsample of) the rows of an embedding matrix.

    Attributes
    ----------
    method : str
        ``"tsne"`` or ``"umap"``.
    points : np.ndarray
        (m, 2) float32 projected coordinates.
    indices : np.ndarray
        (m,) int64 rows of the input that were projected (sorted; all rows when nothing was capped).
    n_total : int
        Number of rows in the input before the cap.
    """

    method: str
    points: np.ndarray
    indices: np.ndarray
    n_total: int

    @property
    def subsampled(self) -> bool:
        """Whether the cap dropped rows."""
        return len(self.indices) < self.n_total


def reduce_dim(x: np.ndarray, max_dim: int = PCA_DIM, seed: int = 0) -> np.ndarray:
    """PCA to ``max_dim`` components when ``x`` is wider than that, else ``x`` unchanged.

    >>> reduce_dim(np.random.default_rng(0).normal(size=(80, 64)), max_dim=10).shape
    (80, 10)
    """
    x = check_matrix(x, "embeddings")
    if x.shape[1] <= max_dim:
        return x
    k = min(max_dim, x.shape[0])
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)


def check_enough_points(n: int, method: str) -> None:
    """Raise ``ValueError`` when ``n`` points are too few for ``method`` (see :data:`MIN_POINTS`)."""
    need = MIN_POINTS[check_choice(method, METHODS, "method")]
    if n < need:
        raise ValueError(f"{method} needs at least {need} points to project, got {n}")


def tsne_2d(x: np.ndarray, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """Barnes-Hut t-SNE of ``x`` (n, d) to (n, 2); perplexity min(30, (n - 1) / 3); ``max_iter`` >= 250."""
    x = check_matrix(x, "embeddings")
    check_enough_points(len(x), "tsne")
    if check_positive_int(max_iter, "tsne_iter") < 250:
        raise ValueError(f"tsne_iter must be at least 250 (scikit-learn's minimum), got {max_iter}")
    perplexity = min(TSNE_PERPLEXITY, (len(x) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=max_iter, random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)


def umap_2d(x: np.ndarray, seed: int = 0, n_epochs: int | None = None) -> np.ndarray:
    """UMAP of ``x`` (n, d) to (n, 2) with ``min(15, n - 1)`` neighbours; ``n_epochs=None`` is UMAP's default."""
    x = check_matrix(x, "embeddings")
    check_enough_points(len(x), "umap")
    if n_epochs is not None:
        check_positive_int(n_epochs, "umap_epochs")
    import umap  # lazy: numba compilation makes the import slow

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(UMAP_NEIGHBORS, len(x) - 1),
        n_epochs=n_epochs,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():  # "Graph is not fully connected" on tiny or well-separated sets
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def project(
    x: np.ndarray,
    labels: np.ndarray,
    method: str,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    tsne_iter: int = 1000,
    umap_epochs: int | None = None,
) -> Projection:
    """Cap (stratified), PCA when d > 50, then project to 2-D with ``method`` ("tsne" or "umap").

    Parameters
    ----------
    x : (n, d) embeddings; labels : (n,) class labels (used for the stratified cap only).
    max_points : at most this many rows are projected. seed : seeds the cap, PCA and the projection.
    tsne_iter : t-SNE iterations (>= 250). umap_epochs : UMAP optimisation epochs (None: UMAP's default).
    """
    x = rescaled(check_matrix(x, "embeddings"))  # 1e20 or 1e-30 entries: the same points as at scale 1
    labels = check_labels(labels, "labels", n=len(x))
    check_choice(method, METHODS, "method")
    indices = stratified_subsample(labels, max_points, seed)
    check_enough_points(len(indices), method)
    with threadpool_limits(limits=1):  # deterministic across machines; see the module docstring
        reduced = reduce_dim(x[indices], PCA_DIM, seed)
        if method == "tsne":
            points = tsne_2d(reduced, seed, tsne_iter)
        else:
            points = umap_2d(reduced, seed, umap_epochs)
    return Projection(method=method, points=points, indices=indices, n_total=len(x))
