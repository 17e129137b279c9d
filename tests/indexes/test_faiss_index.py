"""EmbeddingIndex: exactness, ids/labels/metadata, remove, padding, training errors, save/load, damage."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from metriclearn.indexes import EmbeddingIndex, _flat_search, exact_search
from metriclearn.indexes._search import Searcher

DIM = 16
NEEDS_FAISS_GPU = pytest.mark.gpu(faiss=True)  # skipped unless faiss-gpu sees a GPU (tests/conftest.py)


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    """faiss's OpenMP threads spin badly on a shared 2-core machine; tests use one."""
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((600, DIM), dtype=np.float32)


@pytest.fixture
def q(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((30, DIM), dtype=np.float32)


@pytest.fixture(params=["one-task", "vector-slices", "query-blocks", "faiss-direct"])
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each flat search path: our threaded faiss k-NN as one task, over slices of the vectors (merged)
    or over blocks of queries; or plain ``index.search``."""
    if request.param in ("vector-slices", "query-blocks"):
        faiss.omp_set_num_threads(3)  # undone by _one_faiss_thread
        monkeypatch.setattr(_flat_search, "MIN_SLICE", 150)  # 600 vectors: 4 slices
        monkeypatch.setattr(_flat_search, "MIN_QUERY_CHUNK", 1000 if request.param == "vector-slices" else 2)
    if request.param == "faiss-direct":
        monkeypatch.setattr(Searcher, "_flat", staticmethod(lambda index: None))
    yield request.param


def _flat(metric: str, x: np.ndarray, **kwargs) -> EmbeddingIndex:
    index = EmbeddingIndex(DIM, metric=metric, kind="flat", device="cpu", **kwargs)
    index.add(x)
    return index


def _recall(I: np.ndarray, I_ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, I_ref, strict=True)]))


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_equals_sklearn_brute_force(x, q, metric: str, search_path: str) -> None:
    D, I = _flat(metric, x).search(q, 8)
    nn = NearestNeighbors(n_neighbors=8, algorithm="brute", metric="euclidean" if metric == "l2" else "cosine")
    dist, ind = nn.fit(x.astype(np.float64)).kneighbors(q.astype(np.float64))
    np.testing.assert_array_equal(I, ind)
    np.testing.assert_allclose(D, dist**2 if metric == "l2" else 1 - dist, rtol=1e-4, atol=1e-4)


def test_flat_inner_product_equals_full_sort(x, q, search_path: str) -> None:
    D, I = _flat("ip", x).search(q, 6)
    scores = q.astype(np.float64) @ x.T.astype(np.float64)  # (Q, N)
    order = np.argsort(-scores, axis=1)[:, :6]
    np.testing.assert_array_equal(I, order)
    np.testing.assert_allclose(D, np.take_along_axis(scores, order, 1), rtol=1e-5, atol=1e-5)


def test_blas_is_forced_for_small_batches_and_the_threshold_restored(x, q, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _flat("l2", x)
    limit = faiss.cvar.distance_compute_blas_threshold
    seen, real_knn = [], faiss.knn_L2sqr

    def spy(*args: object) -> None:
        seen.append(faiss.cvar.distance_compute_blas_threshold)
        real_knn(*args)

    monkeypatch.setattr(faiss, "knn_L2sqr", spy)
    index.search(q, 3)  # 30 queries: faiss alone would scan without BLAS
    index.search(q[:2], 3)  # 2 queries: the scan is faster
    assert seen == [0, limit] and faiss.cvar.distance_compute_blas_threshold == limit


def test_flat_search_splits_queries_or_vectors(x, q, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flat_search, "MIN_SLICE", 100)
    monkeypatch.setattr(_flat_search, "MIN_QUERY_CHUNK", 3)
    calls, real_knn = [], _flat_search._knn

    def spy(xb, xq, k, l2, norms, j0, j1):
        calls.append((len(xq), j0, j1))
        return real_knn(xb, xq, k, l2, norms, j0, j1)

    monkeypatch.setattr(_flat_search, "_knn", spy)
    cases = {  # 30 ≥ 8 tasks · 3 queries: 8 blocks of queries; 5 queries: 600 // 100 slices of x
        30: [(3, 0, 600)] * 2 + [(4, 0, 600)] * 6,
        5: [(5, i * 100, i * 100 + 100) for i in range(6)],
    }
    for nq, expected in cases.items():
        D_ref, I_ref = exact_search(q[:nq], x, 5)  # (torch shares faiss's OpenMP: set threads after it)
        faiss.omp_set_num_threads(2)  # 8 tasks; undone by _one_faiss_thread
        calls.clear()
        D, I = _flat_search.flat_search(x, q[:nq], 5, l2=True)
        assert sorted(calls) == sorted(expected)
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("nq", [1, 3, 4, 5, 33, 64, 70])
def test_shared_tasks_equal_brute_force_with_k_above_a_slice(
    rng: np.random.Generator, nq: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uneven N = 257 in slices of about 21 rows (k = 30 spans two), or blocks of queries from Q = 24 on."""
    monkeypatch.setattr(_flat_search, "MIN_SLICE", 20)
    monkeypatch.setattr(_flat_search, "MIN_QUERY_CHUNK", 2)
    x = rng.standard_normal((257, DIM), dtype=np.float32)
    q = rng.standard_normal((nq, DIM), dtype=np.float32)
    dist, ind = NearestNeighbors(n_neighbors=30, algorithm="brute").fit(x.astype(np.float64)).kneighbors(q)
    faiss.omp_set_num_threads(3)  # 12 tasks (caller + 2 helpers); undone by _one_faiss_thread
    D, I = _flat_search.flat_search(x, q, 30, l2=True)
    np.testing.assert_array_equal(I, ind)
    np.testing.assert_allclose(D, dist**2, rtol=1e-4, atol=1e-4)
    assert faiss.omp_get_max_threads() == 3


def test_concurrent_searches_from_several_threads(x, rng: np.random.Generator) -> None:
    """Callers in several Python threads at once: each gets its own answer; the BLAS threshold comes back."""
    index, limit = _flat("l2", x), faiss.cvar.distance_compute_blas_threshold
    batches = [rng.standard_normal((nq, DIM), dtype=np.float32) for nq in (5, 30, 64, 7, 41, 12)]
    expected = [index.search(b, 9) for b in batches]
    faiss.omp_set_num_threads(2)
    with ThreadPoolExecutor(max_workers=3) as callers:
        got = list(callers.map(lambda b: index.search(b, 9), batches))
    for (D, I), (D_ref, I_ref) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)
    assert faiss.cvar.distance_compute_blas_threshold == limit


@pytest.mark.parametrize("nq", [1, 2, 5])
def test_tiny_batches_equal_faiss(x, q, nq: int, search_path: str) -> None:
    index = _flat("l2", x)
    D, I = index.search(q[:nq], 4)
    D_ref, I_ref = index.faiss_index.search(q[:nq], 4)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-4)


def test_ids_follow_rows_after_remove(x, q, search_path: str) -> None:
    index = EmbeddingIndex(DIM, metric="l2", device="cpu")
    ids = index.add(x, ids=np.arange(len(x)) * 10 + 5)
    index.remove(ids[::2])
    D, I = index.search(q, 5)
    D_ref, rows = exact_search(q, x[1::2], 5)
    np.testing.assert_array_equal(I, ids[1::2][rows])
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-4)


def test_batched_search_equals_one_batch(x, rng: np.random.Generator) -> None:
    queries = rng.standard_normal((50, DIM), dtype=np.float32)
    index = _flat("cosine", x)
    D1, I1 = index.search(queries, 4)
    D2, I2 = index.search(queries, 4, batch_size=7)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-6)


def test_ivf_with_all_lists_probed_is_exact(x, q) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", nlist=8, nprobe=8, device="cpu")
    index.add(x)
    D, I = index.search(q, 10)
    D_ref, I_ref = exact_search(q, x, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-4, atol=1e-4)
    index.nprobe = 1
    assert index.nprobe == 1 and _recall(index.search(q, 10)[1], I_ref) < 1.0


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_hnsw_recall_at_10(x, q, metric: str) -> None:
    index = EmbeddingIndex(DIM, metric=metric, kind="hnsw", ef_search=64)
    index.add(x)
    I_ref = exact_search(q, x, 10, metric=metric)[1]
    assert _recall(index.search(q, 10)[1], I_ref) >= 0.9


def test_pq_and_factory_kinds_return_valid_neighbours(rng: np.random.Generator, q) -> None:
    xb = rng.standard_normal((1000, DIM), dtype=np.float32)
    I_ref = exact_search(q, xb, 10)[1]
    with pytest.warns(UserWarning, match="PQ codebooks trained on 1000 vectors"):
        pq = EmbeddingIndex(DIM, metric="l2", kind="pq", nlist=4, nprobe=4)
        pq.add(xb)
    assert pq.factory == "IVF4,PQ4x8np"
    sq = EmbeddingIndex(DIM, metric="l2", kind="IVF4,SQ8", nprobe=4)
    sq.add(xb)
    for index, floor in ((pq, 0.2), (sq, 0.8)):  # lossy codes: recall well above chance (10/1000)
        D, I = index.search(q, 10)
        assert ((I >= 0) & (I < 1000)).all() and (np.diff(D, axis=1) >= 0).all()
        assert _recall(I, I_ref) >= floor


# ---------------------------------------------------------------- ids, labels, metadata


def test_auto_ids_continue_from_the_largest(x) -> None:
    index = EmbeddingIndex(DIM)
    assert index.add(x[:2], ids=[100, 7]).tolist() == [100, 7]
    assert index.add(x[2:4]).tolist() == [101, 102]
    index.remove([102])
    assert index.add(x[4:5]).tolist() == [103]  # removed ids are never handed out again
    assert len(index) == 4 and index.ids.tolist() == [100, 7, 101, 103]


def test_bad_ids_are_rejected(x) -> None:
    index = EmbeddingIndex(DIM)
    index.add(x[:3], ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"ids already in the index: \[2\]"):
        index.add(x[:2], ids=[2, 9])
    with pytest.raises(ValueError, match=r"ids must be unique, got duplicates \[5\]"):
        index.add(x[:2], ids=[5, 5])
    with pytest.raises(ValueError, match="ids must be non-negative"):
        index.add(x[:1], ids=[-1])
    with pytest.raises(ValueError, match="ids has 1 entries but x has 2 rows"):
        index.add(x[:2], ids=[8])
    with pytest.raises(TypeError, match="ids must be integers"):
        index.add(x[:1], ids=[1.5])
    assert len(index) == 3  # nothing was added by the failed calls


def test_labels_and_metadata_follow_their_ids(x) -> None:
    index = EmbeddingIndex(DIM, metric="l2")
    index.add(x[:3], labels=["cat", "dog", "cat"], metadata=[{"f": "a.png"}, None, [1, 2]])
    index.add(x[3:5], labels=["eel", "dog"])
    D, I = index.search(x[:2], 5)
    assert I[0, 0] == 0 and I[1, 0] == 1 and sorted(I[0].tolist()) == [0, 1, 2, 3, 4]
    labels = index.labels_for(np.concatenate([I, np.full((2, 1), -1)], axis=1))
    assert labels.shape == (2, 6) and labels[0, 0] == "cat" and labels[1, 0] == "dog" and labels[0, 5] == ""
    assert index.labels_for([4, 3, -1], missing="?").tolist() == ["dog", "eel", "?"]
    assert index.metadata_for([[0, 2], [4, -1]]) == [[{"f": "a.png"}, [1, 2]], [None, None]]
    with pytest.raises(ValueError, match=r"ids not in the index: \[42\]"):
        index.labels_for([0, 42])


def test_integer_labels_fill_with_minus_one(x) -> None:
    index = EmbeddingIndex(DIM)
    index.add(x[:2], labels=np.array([3.0, 4.0]))  # whole floats are integer labels
    assert index.labels_for([[1, -1]]).tolist() == [[4, -1]]
    assert index.labels.dtype == np.int64


def test_label_rules(x) -> None:
    unlabeled = EmbeddingIndex(DIM)
    unlabeled.add(x[:2])
    with pytest.raises(ValueError, match="built without labels"):
        unlabeled.add(x[:2], labels=[0, 1])
    with pytest.raises(ValueError, match="holds no labels"):
        unlabeled.labels_for([0])
    labeled = EmbeddingIndex(DIM)
    labeled.add(x[:2], labels=[0, 1])
    with pytest.raises(ValueError, match="needs labels for the new vectors too"):
        labeled.add(x[:2])
    with pytest.raises(TypeError, match="label type int"):
        labeled.add(x[:1], labels=["a"])
    with pytest.raises(ValueError, match="labels has 1 entries but there are 2 samples"):
        labeled.add(x[:2], labels=[0])


def test_metadata_must_be_json(x) -> None:
    index = EmbeddingIndex(DIM)
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        index.add(x[:1], metadata=[object()])
    with pytest.raises(ValueError, match="metadata has 1 entries but x has 2 rows"):
        index.add(x[:2], metadata=[{}])
    assert len(index) == 0


@pytest.mark.parametrize(("kind", "ids"), [("flat", None), ("hnsw", None), ("ivf", None), ("ivf", "sparse")])
def test_vectors_come_back_by_id(x, kind: str, ids: str | None) -> None:
    index = EmbeddingIndex(DIM, metric="cosine", kind=kind, nlist=4)
    index.add(x, ids=np.arange(len(x)) * 10**9 if ids == "sparse" else None)
    if kind != "hnsw":
        index.remove(index.ids[:5])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)  # cosine stores normalised rows
    kept = unit[len(x) - len(index) :]
    np.testing.assert_allclose(index.vectors(), kept, rtol=1e-6, atol=1e-6)
    picked = index.ids[[7, 2, 7]]
    np.testing.assert_allclose(index.vectors(picked), kept[[7, 2, 7]], rtol=1e-6, atol=1e-6)
    index.add(x[:2])  # the id -> entry map stays right after more adds
    np.testing.assert_allclose(index.vectors(index.ids[-2:]), unit[:2], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"ids not in the index: \[-5\]"):
        index.vectors([-5])


def test_pq_vectors_are_a_lossy_reconstruction(rng: np.random.Generator) -> None:
    xb = rng.standard_normal((700, DIM), dtype=np.float32)  # ≥ 39 per code: no warning
    index = EmbeddingIndex(DIM, metric="l2", kind="pq", nlist=2, pq_nbits=4)
    index.add(xb)
    error = np.linalg.norm(index.vectors() - xb, axis=1) / np.linalg.norm(xb, axis=1)
    assert 0 < error.mean() < 0.8


# ---------------------------------------------------------------- remove, padding, validation


@pytest.mark.parametrize("kind", ["flat", "ivf", "pq"])
def test_remove(kind: str, rng: np.random.Generator) -> None:
    xb = rng.standard_normal((400, DIM), dtype=np.float32)
    index = EmbeddingIndex(DIM, metric="l2", kind=kind, nlist=4, nprobe=4)
    with pytest.warns(UserWarning) if kind == "pq" else contextlib.nullcontext():
        ids = index.add(xb, labels=np.arange(400) % 5)
    gone = ids[:200]
    assert index.remove(gone) == 200 and len(index) == 200
    I = index.search(xb[:20], 10)[1]
    assert not np.isin(I, gone).any()
    np.testing.assert_array_equal(index.labels_for(I[I >= 0]), I[I >= 0] % 5)
    with pytest.raises(ValueError, match=r"ids not in the index: \[0\]"):
        index.remove([0])


def test_hnsw_cannot_remove(x) -> None:
    index = EmbeddingIndex(DIM, kind="hnsw")
    index.add(x[:50])
    with pytest.raises(ValueError, match="kind 'hnsw' cannot remove vectors"):
        index.remove([1])
    assert len(index) == 50 and index.search(x[1:2], 1)[1][0, 0] == 1


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_k_larger_than_the_index_is_clamped(x, metric: str, kind: str) -> None:
    index = EmbeddingIndex(DIM, metric=metric, kind=kind)
    D, I = index.search(x[:2], 3)  # empty index
    assert I.shape == D.shape == (2, 0)
    index.add(x[:4])
    D, I = index.search(x[:2], 6)
    assert I.shape == D.shape == (2, 4)
    assert sorted(I[0].tolist()) == [0, 1, 2, 3] and np.isfinite(D).all()


def test_bad_arguments_are_named(x) -> None:
    index = _flat("l2", x[:10])
    with pytest.raises(ValueError, match="queries has dimension 3, expected 16"):
        index.search(x[:2, :3], 1)
    with pytest.raises(ValueError, match="queries must be a 2-D array"):
        index.search(x[:8].reshape(2, 4, DIM), 1)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        index.search(x[:2], 0)
    with pytest.raises(ValueError, match="x contains NaN"):
        index.add(np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="metric must be one of"):
        EmbeddingIndex(DIM, metric="hamming")
    with pytest.raises(ValueError, match="device must be one of"):
        EmbeddingIndex(DIM, device="tpu")
    with pytest.raises(ValueError, match="not a faiss index factory string"):
        EmbeddingIndex(DIM, kind="Bogus9")
    with pytest.raises(ValueError, match="drop the 'IDMap' prefix"):
        EmbeddingIndex(DIM, kind="IDMap,Flat")
    with pytest.raises(ValueError, match="pq_m must divide dim=16"):
        EmbeddingIndex(DIM, kind="pq", pq_m=3)
    with pytest.raises(ValueError, match="k_factor must be a positive integer, got 0"):
        EmbeddingIndex(DIM, kind="pq", k_factor=0)


# ---------------------------------------------------------------- training


def test_training_needs_enough_points(x) -> None:
    ivf = EmbeddingIndex(DIM, kind="ivf", nlist=64)
    with pytest.raises(ValueError, match=r"kind 'ivf' needs at least 64 vectors to train \(nlist=64\), got 10"):
        ivf.add(x[:10])
    assert len(ivf) == 0 and not ivf.is_trained
    ivf.add(x[:100])
    assert len(ivf) == 100 and ivf.is_trained
    pq = EmbeddingIndex(DIM, kind="pq")
    with pytest.raises(ValueError, match="kind 'pq' needs at least 256 vectors to train"):
        pq.add(x[:100])
    assert pq.nlist is None  # still chosen from the next first add
    custom = EmbeddingIndex(DIM, kind="IVF200,Flat")
    with pytest.raises(ValueError, match=r"could not train index 'IVF200,Flat' on 100 vectors.*\(200\)"):
        custom.add(x[:100])


def test_auto_nlist_is_chosen_on_first_add(x) -> None:
    index = EmbeddingIndex(DIM, kind="ivf")
    assert index.factory is None and index.faiss_index is None
    with pytest.raises(ValueError, match="nothing to save"):
        index.save("unused")
    index.add(x)
    assert index.factory == "IVF15,Flat" and index.nprobe == 8  # min(4·√600, 600 // 39); max(8, √15)


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(("kind", "metric"), [("flat", "cosine"), ("ivf", "l2"), ("hnsw", "ip"), ("PQ4np", "l2")])
def test_save_load_round_trip(tmp_path: Path, x, q, kind: str, metric: str) -> None:
    index = EmbeddingIndex(DIM, metric=metric, kind=kind, nlist=4, nprobe=2, ef_search=32)
    index.add(x, labels=np.arange(len(x)) % 3, ids=np.arange(len(x)) + 1000, metadata=[{"i": i} for i in range(len(x))])
    if kind != "hnsw":
        index.remove([1000])
    D, I = index.search(q, 5)
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    D2, I2 = loaded.search(q, 5)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, rtol=1e-6)
    assert (loaded.kind, loaded.metric, loaded.dim, len(loaded)) == (index.kind, metric, DIM, len(index))
    assert loaded.nprobe == index.nprobe and loaded.ef_search == 32
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.labels_for(I2), index.labels_for(I))
    assert loaded.metadata_for(I2[:, 0]) == [{"i": int(i) - 1000} for i in I2[:, 0]]
    assert loaded.add(x[:1], labels=[0]).tolist() == [1000 + len(x)]  # id numbering carries on


def test_saved_faiss_file_is_readable_by_faiss_alone(tmp_path: Path, x, q) -> None:
    index = EmbeddingIndex(DIM, metric="cosine")
    index.add(x, ids=np.arange(len(x)) * 3)
    index.save(tmp_path)
    raw = faiss.read_index(str(tmp_path / "index.faiss"))
    assert raw.ntotal == len(x) and raw.metric_type == faiss.METRIC_INNER_PRODUCT
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)  # cosine = inner product of unit vectors
    np.testing.assert_array_equal(raw.search(qn, 4)[1], index.search(q, 4)[1])


def test_resave_without_labels_drops_the_old_labels_file(tmp_path: Path, x) -> None:
    labeled = EmbeddingIndex(DIM)
    labeled.add(x[:5], labels=[1, 2, 3, 4, 5], metadata=[{}] * 5)
    labeled.save(tmp_path)
    plain = EmbeddingIndex(DIM)
    plain.add(x[:5])
    plain.save(tmp_path)
    assert not (tmp_path / "labels.npy").exists() and not (tmp_path / "metadata.json").exists()
    assert EmbeddingIndex.load(tmp_path).labels is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["dim"] = 8
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("index.faiss", _truncate, "index.faiss does not match its checksum"),
        ("index.faiss", _flip_byte, "index.faiss does not match its checksum"),
        ("ids.npy", _flip_byte, "ids.npy does not match its checksum"),
        ("labels.npy", Path.unlink, "labels.npy is missing"),
        ("metadata.json", _truncate, "metadata.json does not match its checksum"),
        ("index.json", Path.unlink, "index.json is missing"),
        ("index.json", _truncate, "index.json is not valid JSON"),
        ("index.json", _edit_manifest, "index.json does not match its checksum"),
    ],
)
def test_damaged_directory_is_reported(tmp_path: Path, x, file: str, damage, message: str) -> None:
    index = EmbeddingIndex(DIM)
    index.add(x[:50], labels=np.arange(50), metadata=[{"n": i} for i in range(50)])
    index.save(tmp_path)
    damage(tmp_path / file)
    with pytest.raises(ValueError, match=f"index directory {tmp_path} is damaged: {message}"):
        EmbeddingIndex.load(tmp_path)


def test_missing_directory_and_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index directory does not exist"):
        EmbeddingIndex.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not an index directory"):
        EmbeddingIndex.load(tmp_path / "file")
    with pytest.raises(ValueError, match="index.json is missing"):
        EmbeddingIndex.load(tmp_path)


# ---------------------------------------------------------------- devices


def test_cpu_device_and_hnsw_stay_on_cpu() -> None:
    assert EmbeddingIndex(DIM, device="cpu").device == "cpu"
    assert EmbeddingIndex(DIM, kind="hnsw", device="auto").device == "cpu"


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0, reason="a GPU is visible")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    assert EmbeddingIndex(DIM, device="auto").device == "cpu"
    with pytest.raises(ValueError, match="device='cuda' but faiss sees no GPU"):
        EmbeddingIndex(DIM, device="cuda")


@NEEDS_FAISS_GPU
@pytest.mark.parametrize("kind", ["flat", "ivf", "pq"])
def test_gpu_search_matches_cpu(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    xb = rng.standard_normal((3000, DIM), dtype=np.float32)
    queries = rng.standard_normal((40, DIM), dtype=np.float32)
    cpu = EmbeddingIndex(DIM, metric="l2", kind=kind, device="cpu", nlist=16, nprobe=16)
    gpu = EmbeddingIndex(DIM, metric="l2", kind=kind, device="cuda", nlist=16, nprobe=16)
    for index in (cpu, gpu):
        index.add(xb, ids=np.arange(3000) * 2)
    assert gpu.device == "cuda"
    D_cpu, I_cpu = cpu.search(queries, 10)
    D_gpu, I_gpu = gpu.search(queries, 10)
    assert _recall(I_gpu, I_cpu) >= (0.99 if kind != "pq" else 0.8)
    assert gpu._searcher._gpu_index is not None  # the search above ran on the GPU copy
    big_k = gpu.search(queries[:2], 2100)[1]  # above the GPU k limit: searched on CPU
    assert big_k.shape == (2, 2100) and (big_k[:, :2000] >= 0).all()
    gpu.save(tmp_path)  # the CPU index is saved; it answers as the GPU copy did
    np.testing.assert_array_equal(EmbeddingIndex.load(tmp_path, device="cpu").search(queries, 10)[1], I_cpu)


@NEEDS_FAISS_GPU
def test_index_types_without_a_gpu_version(x, q) -> None:
    auto = EmbeddingIndex(DIM, kind="PQ4np", device="auto")
    auto.add(x)
    with pytest.warns(UserWarning, match="faiss cannot put 'PQ4np' on the GPU"):
        I = auto.search(q, 5)[1]
    assert (I >= 0).all() and auto._searcher._gpu_index is None and auto._searcher.gpu_unsupported  # CPU answered
    cuda = EmbeddingIndex(DIM, kind="PQ4np", device="cuda")
    cuda.add(x)
    with pytest.raises(ValueError, match="faiss cannot put 'PQ4np' on the GPU"):
        cuda.search(q, 5)


@NEEDS_FAISS_GPU
def test_cuda_refuses_hnsw() -> None:
    with pytest.raises(ValueError, match="kind 'hnsw' has no faiss GPU implementation"):
        EmbeddingIndex(DIM, kind="hnsw", device="cuda")


def test_attrs_round_trip_through_save_and_are_cleared_by_add(tmp_path):
    rng = np.random.default_rng(0)
    idx = EmbeddingIndex(8, "cosine", "flat", device="cpu")
    idx.add(rng.normal(size=(20, 8)).astype(np.float32))
    idx.attrs["model_fingerprint"] = "abc"
    idx.attrs["calibration"] = {"alpha": 0.1, "q": [0.5, 0.25]}
    idx.save(tmp_path / "i")
    back = EmbeddingIndex.load(tmp_path / "i", device="cpu")
    assert back.attrs == {"model_fingerprint": "abc", "calibration": {"alpha": 0.1, "q": [0.5, 0.25]}}
    back.add(rng.normal(size=(3, 8)).astype(np.float32))
    assert back.attrs == {}
    back.attrs["bad"] = object()
    with pytest.raises(TypeError, match="attrs must be JSON-serialisable"):
        back.save(tmp_path / "j")
