"""Exact search (torch, blocked) against scikit-learn's brute-force neighbours and a plain numpy sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from metriclearn.indexes.exact import exact_search, exact_topk, normalize_rows


@pytest.fixture
def data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((40, 12), dtype=np.float32), rng.standard_normal((300, 12), dtype=np.float32)


def _sklearn(q: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn brute force, converted to exact_search's convention (squared L2 / similarity)."""
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean" if metric == "l2" else "cosine")
    dist, ind = nn.fit(x.astype(np.float64)).kneighbors(q.astype(np.float64))
    return (dist**2 if metric == "l2" else 1 - dist), ind


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("block_size", [1 << 23, 64])  # one tile per query block / many tiles merged
def test_matches_sklearn_brute_force(data, metric: str, block_size: int) -> None:
    q, x = data
    D, I = exact_search(q, x, k=7, metric=metric, block_size=block_size)
    D_ref, I_ref = _sklearn(q, x, 7, metric)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-4, atol=1e-4)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_inner_product_matches_full_sort(data) -> None:
    q, x = data
    D, I = exact_search(q, x, k=5, metric="ip", block_size=100)
    scores = q.astype(np.float64) @ x.T.astype(np.float64)  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(I, order)
    np.testing.assert_allclose(D, np.take_along_axis(scores, order, 1), rtol=1e-5, atol=1e-5)


def test_many_query_blocks_and_precomputed_norms(rng: np.random.Generator) -> None:
    q = rng.standard_normal((5000, 4), dtype=np.float32)  # > one 4096-query block
    x = rng.standard_normal((50, 4), dtype=np.float32)
    D, I = exact_search(q, x, k=3, reference_sq_norms=(x * x).sum(1), block_size=4096 * 16)
    D_ref, I_ref = _sklearn(q, x, 3, "l2")
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("metric", "fill"), [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)])
def test_k_beyond_reference_pads(data, metric: str, fill: float) -> None:
    q, x = data
    D, I = exact_search(q[:2], x[:3], k=5, metric=metric)
    assert (I[:, 3:] == -1).all() and (D[:, 3:] == fill).all()
    assert sorted(I[0, :3].tolist()) == [0, 1, 2]
    D, I = exact_search(q[:2], x[:0], k=2, metric=metric)
    assert (I == -1).all() and (D == fill).all()


def test_cosine_zero_rows_stay_finite() -> None:
    x = np.array([[0, 0], [1, 0], [0, 2]], dtype=np.float32)
    D, I = exact_search(np.array([[0, 0], [3, 0]], dtype=np.float32), x, k=3, metric="cosine")
    assert np.isfinite(D).all()
    assert I[1, 0] == 1 and D[1, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(normalize_rows(x), [[0, 0], [1, 0], [0, 1]])


def test_exact_topk_on_tensors_matches_exact_search(data) -> None:
    q, x = data
    D, I = exact_topk(torch.from_numpy(q), torch.from_numpy(x), 4, l2=True)
    D2, I2 = exact_search(q, x, 4)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)


def test_bad_arguments_are_named(data) -> None:
    q, x = data
    with pytest.raises(ValueError, match="metric must be one of"):
        exact_search(q, x, 3, metric="hamming")
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        exact_search(q, x, 0)
    with pytest.raises(ValueError, match="reference has dimension 5, expected 12"):
        exact_search(q, x[:, :5], 3)
    with pytest.raises(ValueError, match="queries contains NaN"):
        exact_search(np.full((1, 12), np.nan, dtype=np.float32), x, 3)
