"""KNNClassifier: the estimator contract, parity with scikit-learn's brute-force kNN, and index-backed use."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from conftest import assert_f32_close

from metriclearn.classify import KNNClassifier
from metriclearn.classify.knn import exact_distances, neighbor_weights, vote
from metriclearn.indexes import EmbeddingIndex

SKLEARN_METRIC = {"l2": "euclidean", "cosine": "cosine"}


@parametrize_with_checks(
    [KNNClassifier(device="cpu"), KNNClassifier(n_neighbors=3, weights="uniform", metric="cosine", device="cpu")]
)
def test_sklearn_estimator_contract(estimator: KNNClassifier, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = np.random.default_rng(3)
    centres = gen.normal(0, 2, (4, 8))
    y = gen.integers(0, 4, 300)
    X = (centres[y] + gen.normal(0, 1.5, (300, 8))).astype(np.float32)
    queries = (centres[gen.integers(0, 4, 120)] + gen.normal(0, 1.5, (120, 8))).astype(np.float32)
    return X, y, queries


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_matches_sklearn_brute_force(blobs, weights: str, metric: str) -> None:
    X, y, queries = blobs
    ours = KNNClassifier(n_neighbors=7, weights=weights, metric=metric, device="cpu").fit(X, y)
    ref = KNeighborsClassifier(7, weights=weights, metric=SKLEARN_METRIC[metric], algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(ours.predict(queries), ref.predict(queries))
    dist, ind = ours.kneighbors(queries)
    ref_dist, ref_ind = ref.kneighbors(queries)
    gain = _distance_gain(X, queries, ref_dist, ref_ind) if metric == "l2" else 1.0
    # 1/d weights carry d's relative error into the probabilities (twice: numerator and total)
    assert_f32_close(ours.predict_proba(queries), ref.predict_proba(queries), gain=2 * gain)
    np.testing.assert_array_equal(ind, ref_ind)
    assert_f32_close(dist, ref_dist, gain=gain)


def test_exact_matches_take_the_whole_vote() -> None:
    X = np.array([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [3.0, 3.0]], dtype=np.float32)
    y = np.array([1, 2, 0, 0])
    knn = KNNClassifier(n_neighbors=4, weights="distance", device="cpu").fit(X, y)
    # Two training points sit exactly on the query: they share the vote; the others get none.
    np.testing.assert_array_equal(knn.predict_proba(np.zeros((1, 2), np.float32)), [[0.0, 0.5, 0.5]])
    ref = KNeighborsClassifier(4, weights="distance", algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(ref.predict_proba(np.zeros((1, 2), np.float32)), [[0.0, 0.5, 0.5]])
    dist, _ = knn.kneighbors(np.zeros((1, 2), np.float32))
    assert dist[0, :2].tolist() == [0.0, 0.0]


def test_weights_vote_and_distances_helpers() -> None:
    w = neighbor_weights(np.array([[1.0, 4.0, np.inf], [2.0, 0.0, 0.0]]), "distance")
    np.testing.assert_array_equal(w, [[1.0, 0.25, 0.0], [0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(neighbor_weights(np.array([[1.0, np.inf]]), "uniform"), [[1.0, 0.0]])
    np.testing.assert_allclose(vote(np.array([[2, 0, 2]]), np.array([[1.0, 2.0, 1.0]]), 3), [[0.5, 0.0, 0.5]])
    np.testing.assert_array_equal(vote(np.array([[0]]), np.array([[0.0]]), 2), [[0.0, 0.0]])
    d = exact_distances(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, 0.0]]), np.array([[0, 1, -1]]), "cosine")
    np.testing.assert_allclose(d, [[1.0, 1.0, np.inf]])  # orthogonal; zero vector has cosine 0; missing


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


def test_string_labels_pipeline_and_clone(digits) -> None:
    X, y, Xt, yt = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    knn = KNNClassifier(n_neighbors=5, device="cpu")
    pipe = make_pipeline(StandardScaler(), knn).fit(X, names[y])
    assert pipe.score(Xt, names[yt]) > 0.9
    assert pipe[-1].classes_.tolist() == sorted(names.tolist())
    twin = clone(knn.set_params(n_neighbors=3))
    assert twin.get_params()["n_neighbors"] == 3 and not hasattr(twin, "index_")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_classify_well(digits, kind: str) -> None:
    X, y, Xt, yt = digits
    knn = KNNClassifier(n_neighbors=5, kind=kind, device="cpu").fit(X, y)
    exact = KNNClassifier(n_neighbors=5, device="cpu").fit(X, y)
    assert knn.index_.kind == kind
    assert knn.score(Xt, yt) > exact.score(Xt, yt) - 0.03


def test_from_index_matches_fit_and_returns_ids(digits) -> None:
    X, y, Xt, _ = digits
    index = EmbeddingIndex(X.shape[1], metric="l2", device="cpu")
    index.add(X, labels=y, ids=np.arange(len(X)) + 1000)
    from_index = KNNClassifier.from_index(index, n_neighbors=5, weights="uniform")
    fitted = KNNClassifier(n_neighbors=5, weights="uniform", device="cpu").fit(X, y)
    np.testing.assert_array_equal(from_index.predict(Xt), fitted.predict(Xt))
    np.testing.assert_array_equal(from_index.kneighbors(Xt)[1], fitted.kneighbors(Xt)[1] + 1000)
    np.testing.assert_allclose(from_index.kneighbors(Xt)[0], fitted.kneighbors(Xt)[0], rtol=1e-4)
    proba = KNNClassifier.from_index(index, n_neighbors=5).predict_proba(Xt)
    ref_dist, ref_ind = fitted.kneighbors(Xt)
    gain = 2 * _distance_gain(X, Xt, ref_dist, ref_ind)
    assert_f32_close(proba, KNNClassifier(5, device="cpu").fit(X, y).predict_proba(Xt), gain=gain)


def _distance_gain(X: np.ndarray, queries: np.ndarray, dist: np.ndarray, ind: np.ndarray) -> float:
    """How much float32 rounding is amplified in a Euclidean distance computed as |q|² + |x|² − 2q·x: the
    absolute error of d² is ~ε(|q|² + |x|²), so d's relative error is ~ε(|q|² + |x|²) / 2d², largest for the
    nearest pair (the cancellation that makes a fixed ``atol`` pass on one CPU and fail on another)."""
    sq = (queries.astype(np.float64) ** 2).sum(1)[:, None] + (X.astype(np.float64) ** 2).sum(1)[ind]
    return float(np.max(sq / (2 * np.maximum(dist, 1e-12) ** 2)))


def test_from_index_refuses_unlabelled_and_ip_indexes() -> None:
    index = EmbeddingIndex(2, metric="l2", device="cpu")
    index.add(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="the index carries no labels"):
        KNNClassifier.from_index(index)
    ip = EmbeddingIndex(2, metric="ip", device="cpu")
    ip.add(np.eye(2, dtype=np.float32), labels=[0, 1])
    with pytest.raises(ValueError, match="metric 'l2' or 'cosine', got 'ip'"):
        KNNClassifier.from_index(ip)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"n_neighbors": 0}, ValueError, "n_neighbors must be a positive integer, got 0"),
        ({"n_neighbors": 2.5}, TypeError, "n_neighbors must be an integer, got 2.5"),
        ({"weights": "gaussian"}, ValueError, "weights must be one of 'distance', 'uniform'; got 'gaussian'"),
        ({"metric": "ip"}, ValueError, "metric must be one of 'l2', 'cosine'; got 'ip'"),
        ({"kind": ""}, ValueError, "kind must be an index kind such as 'flat', got ''"),
    ],
)
def test_bad_parameters_are_named(params: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        KNNClassifier(**params).fit(np.eye(3), [0, 1, 1])


def test_more_neighbours_than_samples_and_wrong_width(blobs) -> None:
    X, y, _ = blobs
    knn = KNNClassifier(n_neighbors=11, device="cpu").fit(X[:10], y[:10])
    with pytest.raises(ValueError, match=r"n_neighbors=11 is larger than the number of indexed samples \(10\)"):
        knn.predict(X[:2])
    with pytest.raises(ValueError, match="X has 3 features, but KNNClassifier is expecting 8 features"):
        knn.set_params(n_neighbors=3).predict(X[:2, :3])
