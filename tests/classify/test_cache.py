"""CacheClassifier: exactness of the blocked cache model, the estimator contract, second opinion and tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from conftest import assert_f32_close
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from metriclearn.classify import CacheClassifier, cache_probabilities, topk_cache_probabilities

FLOAT32_GEMM = (
    "float32 GEMM: a row's similarities depend in the last bits on the size of the batch it is computed in "
    "(BLAS picks other kernels), so probabilities on a subset agree to ~1e-6, not the 1e-7 this check demands "
    "(test_batch_invariance_to_float32_precision checks 1e-5 agreement and identical predictions)"
)


def _expected_failures(estimator: CacheClassifier) -> dict[str, str]:
    return {"check_methods_subset_invariance": FLOAT32_GEMM}


@parametrize_with_checks([CacheClassifier(device="cpu")], expected_failed_checks=_expected_failures)
def test_sklearn_estimator_contract(estimator: CacheClassifier, check) -> None:
    check(estimator)


def naive_cache(q: np.ndarray, keys: np.ndarray, labels: np.ndarray, classes: int, theta: float) -> np.ndarray:
    """p(y|x) = Σ_i exp(θ cos(x, k_i)) 1[y_i = y] / Σ_i exp(θ cos(x, k_i)), one query and key at a time."""
    out = np.zeros((len(q), classes))
    for a, x in enumerate(q.astype(np.float64)):
        x = x / np.linalg.norm(x)
        logits = [theta * x @ (k / np.linalg.norm(k)) for k in keys.astype(np.float64)]
        shift = max(logits)
        for logit, label in zip(logits, labels):
            out[a, label] += np.exp(logit - shift)
        out[a] /= out[a].sum()
    return out


@pytest.mark.parametrize("theta", [1.0, 50.0, 1000.0])
@pytest.mark.parametrize("blocks", [(512, 2048), (7, 13), (1, 1)])
def test_blocked_cache_matches_naive_formula(rng: np.random.Generator, theta: float, blocks) -> None:
    q = rng.normal(size=(9, 6)).astype(np.float32)
    keys = rng.normal(size=(40, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    labels[labels == 3] = 2  # class 3 has no keys: its probability must be exactly 0
    got = cache_probabilities(
        F.normalize(torch.from_numpy(q), dim=1),
        F.normalize(torch.from_numpy(keys), dim=1),
        torch.from_numpy(labels),
        4,
        theta,
        *blocks,
    ).numpy()
    want = naive_cache(q, keys, labels, 4, theta)
    assert_f32_close(got, want, gain=theta)  # float32 cosines, softmax of θ·cos
    assert got.dtype == np.float64 and np.all(got[:, 3] == 0.0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def test_worker_threads_give_the_same_result_and_keep_the_thread_count(rng: np.random.Generator) -> None:
    q = F.normalize(torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32)), dim=1)
    k = F.normalize(torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32)), dim=1)
    y = torch.from_numpy(rng.integers(0, 5, 300))
    before = torch.get_num_threads()
    inline = cache_probabilities(q, k, y, 5, 40.0, query_block=8, key_block=64, workers=1)
    threaded = cache_probabilities(q, k, y, 5, 40.0, query_block=8, key_block=64, workers=3)  # 7 blocks, 3 threads
    assert_f32_close(threaded.numpy(), inline.numpy(), gain=40.0)
    assert torch.get_num_threads() == before


def test_running_max_keeps_far_queries_finite() -> None:
    """A block of dissimilar keys first, then a near-duplicate: θ·Δcos = 900·2 would overflow a fixed shift."""
    keys = torch.tensor([[-1.0, 0.0], [-1.0, 0.001], [1.0, 0.0]])
    keys = F.normalize(keys, dim=1)
    p = cache_probabilities(torch.tensor([[1.0, 0.0]]), keys, torch.tensor([0, 0, 1]), 2, 900.0, 1, 2)
    assert torch.isfinite(p).all()
    assert p[0, 1] == pytest.approx(1.0)


def test_topk_probabilities_ignore_missing_neighbours() -> None:
    sims = torch.tensor([[0.9, 0.5, 0.0], [0.2, 0.1, 0.7]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, -1], [2, 2, 0]])
    got = topk_cache_probabilities(sims, labels, 3, theta=5.0).numpy()
    e = np.exp
    want = np.array(
        [
            [e(4.5) / (e(4.5) + e(2.5)), e(2.5) / (e(4.5) + e(2.5)), 0.0],
            [e(3.5) / (e(1.0) + e(0.5) + e(3.5)), 0.0, (e(1.0) + e(0.5)) / (e(1.0) + e(0.5) + e(3.5))],
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return X[:1000], y[:1000], X[1000:1400], y[1000:1400]


def test_cache_classifies_digits_and_keys_are_normalised(digits) -> None:
    X, y, Xt, yt = digits
    cache = CacheClassifier(theta=30.0, device="cpu").fit(X, y)
    np.testing.assert_allclose(np.linalg.norm(cache.keys_, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(cache.classes_, np.arange(10))
    assert cache.score(Xt, yt) > 0.9
    proba = cache.predict_proba(Xt[:50])
    assert_f32_close(proba, naive_cache(Xt[:50], X, y, 10, 30.0), gain=30.0)


def test_scale_invariance_and_string_labels(rng: np.random.Generator) -> None:
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 60)]
    cache = CacheClassifier(theta=10.0, device="cpu").fit(X, y)
    q = rng.normal(size=(8, 5)).astype(np.float32)
    assert_f32_close(cache.predict_proba(q), cache.predict_proba(3.0 * q), gain=10.0)
    assert set(cache.predict(q)) <= {"cat", "dog", "emu"}
    assert cache.classes_.tolist() == ["cat", "dog", "emu"]


def test_batch_invariance_to_float32_precision(digits) -> None:
    X, y, Xt, _ = digits
    cache = CacheClassifier(theta=50.0, device="cpu").fit(X, y)
    full = cache.predict_proba(Xt)
    parts = np.concatenate([cache.predict_proba(Xt[i : i + 7]) for i in range(0, len(Xt), 7)])
    assert_f32_close(parts, full, gain=50.0)
    np.testing.assert_array_equal(parts.argmax(1), full.argmax(1))


def test_clone_pipeline_and_params(digits) -> None:
    X, y, Xt, yt = digits
    cache = CacheClassifier(theta=20.0, lam=0.3, device="cpu")
    assert cache.get_params()["theta"] == 20.0
    twin = clone(cache.set_params(theta=25.0))
    assert twin.get_params() == cache.get_params() and not hasattr(twin, "keys_")
    pipe = make_pipeline(StandardScaler(), twin).fit(X, y)
    assert pipe.score(Xt, yt) > 0.85
    assert pipe[-1].theta_ == 25.0 and pipe[-1].lam_ == 0.3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"theta": 0.0}, "theta must be a finite positive number, got 0.0"),
        ({"theta": float("nan")}, "theta must be a finite positive number, got nan"),
        ({"lam": 1.5}, r"lam must lie in \[0, 1\], got 1.5"),
        ({"top_k": 0}, "top_k must be a positive integer, got 0"),
        ({"query_block": -1}, "query_block must be a positive integer, got -1"),
        ({"device": "tpu"}, "device must be one of 'auto', 'cpu', 'cuda'; got 'tpu'"),
        ({"kind": ""}, "kind must be an index kind such as 'flat', got ''"),
    ],
)
def test_bad_parameters_are_named(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CacheClassifier(**params).fit(np.eye(3), [0, 1, 1])


@pytest.mark.gpu
def test_gpu_matches_cpu(digits) -> None:
    X, y, Xt, _ = digits
    cpu = CacheClassifier(theta=40.0, device="cpu").fit(X, y).predict_proba(Xt)
    gpu = CacheClassifier(theta=40.0, device="cuda").fit(X, y).predict_proba(Xt)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)


# ---------------------------------------------------------------------- second opinion and tuning
@pytest.fixture(scope="module")
def opinion_data(digits):
    """A weak 'model' (noisy probabilities, right about half the time) that the cache can help."""
    X, y, Xt, yt = digits
    gen = np.random.default_rng(1)
    noisy = gen.dirichlet(np.ones(10), size=len(Xt))
    truth = np.eye(10)[yt]
    proba = 0.5 * noisy + 0.5 * np.where(gen.random((len(Xt), 1)) < 0.5, truth, np.eye(10)[(yt + 1) % 10])
    cache = CacheClassifier(theta=30.0, device="cpu").fit(X, y)
    return cache, Xt, proba, yt


def test_second_opinion_is_the_blend(opinion_data) -> None:
    cache, Xt, proba, _ = opinion_data
    p_cache = cache.predict_proba(Xt)
    for lam in (0.0, 0.25, 1.0):
        np.testing.assert_allclose(cache.second_opinion(Xt, proba, lam=lam), (1 - lam) * proba + lam * p_cache)
    np.testing.assert_allclose(cache.second_opinion(Xt, proba), 0.5 * proba + 0.5 * p_cache)  # lam_ = lam


@pytest.mark.parametrize(
    ("features", "proba", "lam", "match"),
    [
        (np.zeros((4, 63)), np.full((4, 10), 0.1), 0.5, "features has dimension 63, expected 64"),
        (np.zeros((4, 64)), np.full((3, 10), 0.1), 0.5, r"model_proba has 3 rows, but there are 4 rows of features"),
        (np.zeros((4, 64)), np.full((4, 9), 1 / 9), 0.5, "model_proba has 9 columns, but there are 10 classes in classes_"),
        (np.zeros((4, 64)), np.full((4, 10), 0.2), 0.5, "rows must be non-negative and sum to 1; row 0 sums to 2"),
        (np.zeros((4, 64)), np.full((4, 10), 0.1), -0.1, "lam must be a finite non-negative number, got -0.1"),
        (np.zeros((4, 64, 1)), np.full((4, 10), 0.1), 0.5, "features must be a 2-D array"),
    ],
)
def test_second_opinion_rejects_bad_inputs(opinion_data, features, proba, lam, match) -> None:
    cache = opinion_data[0]
    with pytest.raises(ValueError, match=match):
        cache.second_opinion(features, proba, lam=lam)


def test_tune_picks_the_best_grid_point_on_held_out_data(opinion_data) -> None:
    cache, Xt, proba, yt = opinion_data
    tuned = clone(cache).fit(cache.keys_, cache.classes_[cache.key_codes_])
    assert tuned.tune(Xt[:200], proba[:200], yt[:200]) is tuned
    grid = tuned.tuning_
    assert grid["accuracy"].shape == (9, 9) and grid["thetas"][0] == 10.0 and grid["lams"][-1] == 0.9
    best = grid["accuracy"].max()
    i, j = grid["thetas"].index(tuned.theta_), grid["lams"].index(tuned.lam_)
    assert grid["accuracy"][i, j] == best
    assert grid["log_loss"][i, j] == grid["log_loss"][grid["accuracy"] == best].min()
    # The recorded accuracy is the real accuracy of the blend, and it beats the weak model alone.
    blended = tuned.second_opinion(Xt[:200], proba[:200])
    assert np.mean(blended.argmax(1) == yt[:200]) == best > np.mean(proba[:200].argmax(1) == yt[:200])
    assert tuned.theta == 30.0 and tuned.lam == 0.5  # parameters untouched; the choice is in theta_ / lam_


def test_tune_breaks_accuracy_ties_by_log_loss(opinion_data) -> None:
    cache, Xt, _, yt = opinion_data
    sure = np.eye(10)[yt[:50]] * 0.99 + 0.001  # the model alone is always right and confident
    tuned = clone(cache).fit(cache.keys_, cache.classes_[cache.key_codes_])
    tuned.tune(Xt[:50], sure, yt[:50], thetas=[1.0], lams=[0.5, 0.0, 0.25])  # θ=1: a near-uniform cache
    assert tuned.tuning_["accuracy"][0].tolist() == [1.0, 1.0, 1.0]  # a three-way tie on accuracy ...
    assert tuned.lam_ == 0.0  # ... that the log-loss breaks: the flat cache only dilutes the model


def test_tuning_on_the_cache_features_leaks(digits) -> None:
    """What the docs warn about: on its own keys the cache is (almost) always right, so λ goes to the top."""
    X, y, _, _ = digits
    uniform = np.full((len(X), 10), 0.1)
    cache = CacheClassifier(device="cpu").fit(X, y).tune(X, uniform, y)
    assert cache.lam_ == 0.9 and cache.tuning_["accuracy"].max() == 1.0


def test_tune_rejects_unknown_labels_and_empty_grids(opinion_data) -> None:
    cache, Xt, proba, yt = opinion_data
    with pytest.raises(ValueError, match="y_val holds labels the classifier does not know, e.g. 11"):
        clone(cache).fit(cache.keys_, cache.key_codes_).tune(Xt[:3], proba[:3], [1, 2, 11])
    with pytest.raises(ValueError, match=r"y_val has 2 entries but there are 3 samples"):
        cache.tune(Xt[:3], proba[:3], [1, 2])
    with pytest.raises(ValueError, match=r"thetas must be a non-empty sequence of numbers, got \[\]"):
        cache.tune(Xt[:3], proba[:3], yt[:3], thetas=[])


# ---------------------------------------------------------------------- top-k mode and index-backed caches
def test_top_k_over_every_key_equals_exact(digits) -> None:
    X, y, Xt, _ = digits
    exact = CacheClassifier(theta=40.0, device="cpu").fit(X, y)
    top = CacheClassifier(theta=40.0, top_k=len(X), device="cpu", query_block=16).fit(X, y)  # 3 blocks
    assert_f32_close(top.predict_proba(Xt[:40]), exact.predict_proba(Xt[:40]), gain=40.0)


def test_top_k_is_the_formula_over_the_nearest_keys(digits) -> None:
    X, y, Xt, _ = digits
    cache = CacheClassifier(theta=40.0, top_k=5, device="cpu").fit(X, y)
    q = Xt[:20] / np.linalg.norm(Xt[:20], axis=1, keepdims=True)
    cos = q.astype(np.float64) @ cache.keys_.T.astype(np.float64)  # (20, N)
    nearest = np.argsort(-cos, axis=1)[:, :5]
    for row, idx in enumerate(nearest):
        want = naive_cache(Xt[row : row + 1], X[idx], y[idx], 10, 40.0)
        assert_f32_close(cache.predict_proba(Xt[row : row + 1]), want, gain=40.0)
    with pytest.raises(ValueError, match=r"top_k=1001 is larger than the cache \(1000 keys\)"):
        cache.set_params(top_k=1001).predict(Xt[:1])


def test_from_index_reads_keys_back(digits) -> None:
    from metriclearn.indexes import EmbeddingIndex

    X, y, Xt, _ = digits
    names = np.array(list("abcdefghij"))[y]
    for metric, kind in (("l2", "flat"), ("cosine", "hnsw"), ("ip", "ivf")):
        index = EmbeddingIndex(X.shape[1], metric=metric, kind=kind, device="cpu")
        index.add(X, labels=names, ids=np.arange(len(X))[::-1] * 3)
        cache = CacheClassifier.from_index(index, theta=30.0, device="cpu")
        assert cache.kind == kind and cache.classes_.tolist() == list("abcdefghij")
        want = CacheClassifier(theta=30.0, device="cpu").fit(X, names).predict_proba(Xt[:30])
        assert_f32_close(cache.predict_proba(Xt[:30]), want, gain=30.0)
    unlabelled = EmbeddingIndex(X.shape[1], device="cpu")
    unlabelled.add(X)
    with pytest.raises(ValueError, match="the index carries no labels"):
        CacheClassifier.from_index(unlabelled)


def test_from_index_searches_the_loaded_index_instead_of_a_copy(digits) -> None:
    from metriclearn.indexes import EmbeddingIndex

    X, y, Xt, yt = digits
    ids = np.arange(len(X))[::-1] * 3 + 7  # ids are not row numbers: the cache maps them back to its keys
    flat = EmbeddingIndex(X.shape[1], metric="cosine", device="cpu")
    flat.add(X, labels=y, ids=ids)
    top = CacheClassifier.from_index(flat, theta=30.0, top_k=7, device="cpu")
    assert top.index_ is flat  # no second index over copied vectors
    own = CacheClassifier(theta=30.0, top_k=7, device="cpu").fit(X, y)  # its own flat cosine index over the keys
    assert_f32_close(top.predict_proba(Xt[:50]), own.predict_proba(Xt[:50]), gain=30.0)
    exact = CacheClassifier.from_index(flat, theta=30.0, device="cpu")
    assert exact._neighbour_index is flat  # the calibration's nearest keys come from it too
    cal = slice(50, 350)
    for cache in (exact, top, own):
        cache.calibrate(Xt[cal], yt[cal], alpha=0.1, target_precision=0.9, random_state=0)
    built = CacheClassifier(theta=30.0, device="cpu").fit(X, y)  # builds its own flat index for the calibration
    built.calibrate(Xt[cal], yt[cal], alpha=0.1, target_precision=0.9, random_state=0)
    assert_f32_close(np.array(exact.calibration_["rejection"]["class_scales"]),
                     np.array(built.calibration_["rejection"]["class_scales"]))
    np.testing.assert_array_equal(top.predict_or_reject(Xt[:50]), own.predict_or_reject(Xt[:50]))
    pq = EmbeddingIndex(X.shape[1], metric="cosine", kind="pq", pq_nbits=4, nlist=4, device="cpu")
    pq.add(X, labels=y, ids=ids)
    trained = pq.faiss_index
    lossy = CacheClassifier.from_index(pq, theta=30.0, top_k=7, device="cpu")
    assert lossy.index_ is pq and pq.faiss_index is trained  # PQ codes are not retrained on their reconstructions
    assert np.mean(lossy.predict(Xt[:100]) == yt[:100]) > 0.8
    l2 = EmbeddingIndex(X.shape[1], metric="l2", device="cpu")
    l2.add(X, labels=y, ids=ids)
    ranked = CacheClassifier.from_index(l2, theta=30.0, top_k=7, device="cpu")
    assert ranked.index_ is not l2 and ranked.index_.metric == "cosine"  # l2 ranks otherwise: a cosine index
    fresh = CacheClassifier(theta=30.0, top_k=7, device="cpu").fit(X, y)  # `own` was calibrated: another θ
    assert_f32_close(ranked.predict_proba(Xt[:50]), fresh.predict_proba(Xt[:50]), gain=30.0)
