"""EmbeddingIndex.tune: recall@k against exact search on held-out queries, cheapest parameters, honest notes."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from metriclearn.indexes import EmbeddingIndex, _structure, exact_search, tuning
from metriclearn.indexes.tuning import TuningWarning

DIM = 24


def _clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, len(centers))  # uneven clusters
    pick = rng.choice(len(centers), n, p=sizes / sizes.sum())
    return (centers[pick] + rng.standard_normal((n, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def centers() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((40, DIM)) * 3


@pytest.fixture(scope="module")
def data(centers) -> np.ndarray:
    return _clustered(4000, 2, centers)


def _fresh_recall(index: EmbeddingIndex, x: np.ndarray, q: np.ndarray, k: int) -> float:
    """recall@k of the index on queries it never saw, ties at the k-th distance counted as hits."""
    gt = exact_search(q, x, k, metric=index.metric)[0]
    _, ids = index.search(q, k)
    found = x[ids]
    d = ((found - q[:, None]) ** 2).sum(-1)
    return float((d <= gt[:, -1:] + 1e-4).mean())


@pytest.mark.parametrize(("kind", "target"), [("ivf", 0.95), ("hnsw", 0.99)])
def test_tuning_reaches_the_target_on_fresh_queries(data, centers, kind: str, target: float) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind=kind, device="cpu", hnsw_m=8, ef_search=16)
    index.add(data, labels=np.arange(len(data)) % 7)
    with _maybe_flat_faster():
        report = index.tune(target, k=10)
    assert report["reached"] and report["recall_at_k"] >= target
    assert report["held_out_queries"] == 400 and report["searched_vectors"] == 3600
    assert 0 < report["recall_se"] < 0.02  # a few misses among 400 queries
    assert index.attrs["tuning"] == report and report["k"] == 10
    fresh = _clustered(300, 3, centers)
    assert _fresh_recall(index, data, fresh, 10) >= target - 0.02
    assert len(index) == 4000 and index.labels_for([3999]).tolist() == [3999 % 7]  # the table is untouched
    name = "nprobe" if kind == "ivf" else "ef_search"
    chosen = report["params"][name]
    assert getattr(index, name) == chosen
    build_key = "nlist" if kind == "ivf" else "hnsw_m"
    assert getattr(index, build_key) == report["params"][build_key]
    same_build = [t for t in report["tried"] if t[build_key] == report["params"][build_key]]
    below = [t["recall"] for t in same_build if t[name] == chosen - 1]
    assert all(r < target for r in below)  # the cheapest value that reaches it (bisection)
    if kind == "hnsw":
        assert {t["hnsw_m"] for t in report["tried"]} == {8, 16, 32, 48}


@contextlib.contextmanager
def _maybe_flat_faster() -> Iterator[None]:
    """At 4000 vectors exact search may be faster than the tuned index: that note is allowed here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "exact search is faster", TuningWarning)
        yield


def test_the_fastest_build_that_reaches_the_target_wins(data, monkeypatch: pytest.MonkeyPatch) -> None:
    # a deterministic speed model: time ∝ vectors scanned per query (nprobe · n / nlist); flat scans all
    def qps(candidate: EmbeddingIndex, xq: np.ndarray, k: int) -> float:
        if candidate.kind == "flat":
            return 1e9 / len(candidate)
        return 1e9 / (candidate.nprobe * len(candidate) / candidate.nlist)

    monkeypatch.setattr(tuning, "_qps", qps)
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", device="cpu", nlist=40)
    index.add(data)
    report = index.tune(0.9, k=5)
    timed = [t for t in report["tried"] if t["qps"] is not None]
    assert sorted(t["nlist"] for t in timed) == [20, 40, 80]  # the index's nlist, half and double
    best = max((t for t in timed if t["recall"] >= 0.9), key=lambda t: t["qps"])
    assert report["params"] == {"nlist": best["nlist"], "nprobe": best["nprobe"]}
    assert index.nlist == best["nlist"] and index.nprobe == best["nprobe"] and index.faiss_index.nlist == best["nlist"]
    assert report["flat_qps"] == pytest.approx(1e9 / 3600, rel=1e-3)


def test_ivf_tries_more_lists_than_faiss_advises_and_says_so_only_outside_the_tuner(data, monkeypatch) -> None:
    def qps(candidate: EmbeddingIndex, xq: np.ndarray, k: int) -> float:  # time ∝ vectors scanned per query
        scanned = len(candidate) if candidate.kind == "flat" else candidate.nprobe * len(candidate) / candidate.nlist
        return 1e9 / scanned

    monkeypatch.setattr(tuning, "_qps", qps)
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", device="cpu", nlist=150)
    with pytest.warns(UserWarning, match=r"inverted lists trained on 4000 vectors for nlist=150 \(27 per list\); "
                                         r"faiss recommends at least 39 per list \(5850\)"):
        index.add(data)  # faiss's own stderr line, as a Python warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the candidates' and the rebuild's few-points warnings stay inside
        report = index.tune(0.9, k=5)
    assert sorted({t["nlist"] for t in report["tried"]}) == [75, 150, 180]  # 2a = 300, at most 3600 / 20
    assert index.nlist == report["params"]["nlist"] and report["reached"]

def test_flat_is_faster_says_so(data, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "_qps", lambda c, xq, k: 1e6 if c.kind == "flat" else 1e3)
    index = EmbeddingIndex(DIM, metric="cosine", kind="ivf", device="cpu")
    index.add(data[:1000])
    with pytest.warns(TuningWarning, match=r"exact search is faster than kind 'ivf' at this size \(1000000 vs 1000 queries/s\): use kind 'flat'"):
        report = index.tune(0.9)
    assert report["flat_faster"] and report["reached"] and report["speed_vs_flat"] == 0.001


def test_an_unreachable_target_keeps_the_most_accurate_setting(data) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind="IVF16,SQ4", device="cpu")  # 4-bit scalar codes, no re-ranking
    index.add(data)
    with pytest.raises(ValueError, match="kind 'IVF16,SQ4' does not keep the vectors exactly: pass vectors="):
        index.tune(0.99)
    with _maybe_flat_faster(), pytest.warns(TuningWarning, match=r"no setting of kind 'IVF16,SQ4' reaches recall@10 0.99: the best found is 0\.\d+ with nprobe=16; kept that"):
        report = index.tune(0.99, vectors=data)
    assert not report["reached"] and report["recall_at_k"] < 0.99
    assert index.nprobe == 16 and report["params"]["nprobe"] == 16  # all lists: the most accurate


def test_pq_reaches_the_target_by_re_ranking_and_round_trips(
    data, centers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a deterministic speed model: codes scanned (nprobe · n / nlist) plus k · k_factor exact re-rankings
    def qps(candidate: EmbeddingIndex, xq: np.ndarray, k: int) -> float:
        if candidate.kind == "flat":
            return 1e9 / len(candidate)
        return 1e9 / (candidate.nprobe * len(candidate) / candidate.nlist + k * (candidate.k_factor or 0))

    monkeypatch.setattr(tuning, "_qps", qps)
    index = EmbeddingIndex(DIM, metric="l2", kind="pq", device="cpu", nlist=16, pq_m=2, pq_nbits=4)
    index.add(data, labels=np.arange(len(data)) % 5)
    with pytest.raises(ValueError, match="kind 'pq' does not keep the vectors exactly: pass vectors="):
        index.tune(0.95)
    report = index.tune(0.95, k=10, vectors=data)
    assert not report["flat_faster"] and report["notes"] == []
    plain = [t["recall"] for t in report["tried"] if "k_factor" not in t]
    assert plain and max(plain) < 0.95  # 2x4-bit codes alone cannot reach it, whatever nprobe
    assert {t.get("k_factor") for t in report["tried"]} == {None, *tuning.K_FACTOR_GRID}
    assert report["reached"] and report["recall_at_k"] >= 0.95
    depth = report["params"]["k_factor"]
    shallower = [t["recall"] for t in report["tried"] if t.get("k_factor", 1) < depth]
    assert all(r < 0.95 for r in shallower)  # the smallest depth that reaches it (recall grows with depth here)
    assert index.k_factor == depth and index.nprobe == report["params"]["nprobe"]
    assert isinstance(_structure.refine(index.faiss_index), faiss.IndexRefineFlat)
    assert _structure.refine(index.faiss_index).k_factor == depth
    np.testing.assert_array_equal(index.vectors([7, 3999]), data[[7, 3999]])  # the raw vectors, kept for re-ranking
    fresh = _clustered(300, 3, centers)
    assert _fresh_recall(index, data, fresh, 10) >= 0.95 - 0.02
    D, ids = index.search(fresh, 10)
    np.testing.assert_allclose(D, ((data[ids] - fresh[:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)  # exact distances
    index.save(tmp_path / "pq")
    back = EmbeddingIndex.load(tmp_path / "pq", device="cpu")
    assert back.k_factor == depth and back.attrs["tuning"] == report
    assert _structure.refine(back.faiss_index).k_factor == depth
    D2, ids2 = back.search(fresh, 10)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(D2, D)
    assert back.labels_for(ids2[:1]).tolist() == [(ids[0] % 5).tolist()]
    assert json.loads((tmp_path / "pq" / "index.json").read_text())["params"]["k_factor"] == depth
    assert _structure.signature(back.faiss_index) == "IndexIDMap(IndexRefineFlat, nlist=16, pq=2x4)"
    with pytest.raises(ValueError, match="kind 'pq' cannot remove vectors .*rebuild the index without them"):
        back.remove([3])
    # a re-ranked index keeps the raw vectors: no vectors= needed to tune it again
    assert back.tune(0.95, k=10)["params"] == report["params"]


def test_given_queries_are_the_held_out_set(data, centers, tmp_path: Path) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", device="cpu")
    index.add(data)
    queries = _clustered(120, 5, centers)
    with _maybe_flat_faster():
        report = index.tune(0.9, k=3, queries=queries)
    assert report["held_out_queries"] == 120 and report["searched_vectors"] == 4000
    assert report["queries"] == "given queries" and report["recall_at_k"] >= 0.9
    gt = exact_search(queries, data, 3, metric="l2")[0]  # the tuned index searches the same vectors (ids = rows)
    per_query = tuning.recall_per_query(index.search(queries, 3)[1], queries, data, gt, "l2")  # (120,)
    assert per_query.mean() == pytest.approx(report["recall_at_k"], abs=1e-4)
    assert report["recall_se"] == pytest.approx(per_query.std(ddof=1) / np.sqrt(120), abs=1e-4)
    index.attrs["model_fingerprint"] = "abc"
    index.save(tmp_path / "idx")
    back = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    assert back.attrs["tuning"] == report and back.attrs["model_fingerprint"] == "abc"
    assert back.nprobe == report["params"]["nprobe"] and back.nlist == report["params"]["nlist"]
    back.add(queries[:1])
    assert back.attrs == {}  # a measurement of other vectors


def test_flat_is_exact(data) -> None:
    index = EmbeddingIndex(DIM, metric="l2", device="cpu")
    index.add(data[:500])
    report = index.tune(0.95)
    assert report["recall_at_k"] == 1.0 and report["params"] == {} and report["notes"] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_recall": 0}, ValueError, r"target_recall must lie in \(0, 1\], got 0"),
        ({"target_recall": 1.5}, ValueError, r"target_recall must lie in \(0, 1\], got 1.5"),
        ({"target_recall": "high"}, TypeError, "target_recall must be a number in"),
        ({"target_recall": 0.9, "k": 0}, ValueError, "k must be"),
        ({"target_recall": 0.9, "n_queries": 4000}, ValueError, "too few to hold 4000 queries out"),
        ({"target_recall": 0.9, "queries": np.zeros((3, 5))}, ValueError, "queries"),
        ({"target_recall": 0.9, "vectors": np.zeros((3, DIM))}, ValueError, "vectors has 3 rows but the index holds 4000"),
    ],
)
def test_bad_arguments_are_named(data, kwargs: dict, error: type, match: str) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", device="cpu")
    index.add(data)
    with pytest.raises(error, match=match):
        index.tune(**kwargs)
    with pytest.raises(ValueError, match="cannot tune an empty index"):
        EmbeddingIndex(DIM, kind="hnsw", device="cpu").tune(0.9)


def test_recall_counts_ties_at_the_kth_distance_as_hits() -> None:
    base = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=np.float32)  # rows 1, 2: duplicates
    q = np.array([[0.9, 0.0]], dtype=np.float32)
    gt = exact_search(q, base, 2, metric="l2")[0]
    assert tuning.recall_at_k(np.array([[2, 1]]), q, base, gt, "l2") == 1.0  # either duplicate is right
    assert tuning.recall_at_k(np.array([[1, 3]]), q, base, gt, "l2") == 0.5
    assert tuning.recall_at_k(np.array([[1, -1]]), q, base, gt, "l2") == 0.5  # a missing neighbour is a miss
    sims = exact_search(q, base, 2, metric="ip")[0]
    assert tuning.recall_at_k(np.array([[3, 1]]), q, base, sims, "ip") == 1.0  # (5,5)·q = 4.5 is the best
    two = np.array([[0.9, 0.0], [4.0, 4.0]], dtype=np.float32)
    per_query = tuning.recall_per_query(np.array([[1, 3], [3, 2]]), two, base, exact_search(two, base, 2, metric="l2")[0], "l2")
    assert per_query.tolist() == [0.5, 1.0]  # (4,4)'s two nearest: (5,5) and a (1,0) duplicate
