"""Tests for metriclearn.metrics: hand-computed cases, pytorch-metric-learning cross-checks, blocking, ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.metrics import silhouette_score

from metriclearn import metrics
from metriclearn.data import stratified_subsample
from metriclearn.metrics import retrieval_metrics, separation_metrics

PML_KEYS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision", "map_at_r": "mean_average_precision_at_r"}


def col(values: list[float]) -> np.ndarray:
    """1-D points as an (n, 1) float32 matrix."""
    return np.array(values, dtype=np.float32)[:, None]


# --------------------------------------------------------------------------------------------- by hand
def test_leave_one_out_by_hand() -> None:
    # x = 0, 1, 2.5, 4, 7 with labels 0, 1, 0, 0, 1. Class 0 has 3 members (R = 2), class 1 has 2 (R = 1).
    # Rankings (nearest first, equal distances in index order), with the labels and rel(i):
    #   q0 (0):   1(1) 2(0) 3(0) 4(1)   R=2: rel 0,1  P@1 0  RP 1/2  MAP (1/2)(1/2) = 1/4  3-NN 1,0,0 -> 0 ok
    #   q1 (1):   0(0) 2(0) 3(0) 4(1)   R=1: rel 0    P@1 0  RP 0    MAP 0               3-NN 0,0,0 -> 0 no
    #   q2 (2.5): 1(1) 3(0) 0(0) 4(1)   d(1)=d(3)=1.5, index 1 first
    #                                   R=2: rel 0,1  P@1 0  RP 1/2  MAP 1/4             3-NN 1,0,0 -> 0 ok
    #   q3 (4):   2(0) 1(1) 4(1) 0(0)   d(1)=d(4)=3
    #                                   R=2: rel 1,0  P@1 1  RP 1/2  MAP (1/2)(1) = 1/2  3-NN 0,1,1 -> 1 no
    #   q4 (7):   3(0) 2(0) 1(1) 0(0)   R=1: rel 0    P@1 0  RP 0    MAP 0               3-NN 0,0,1 -> 0 no
    # Means over 5 queries: P@1 1/5, RP 1.5/5, MAP 1/5, kNN 2/5.
    out = retrieval_metrics(col([0, 1, 2.5, 4, 7]), [0, 1, 0, 0, 1], k=3)
    assert out == pytest.approx({"precision_at_1": 0.2, "r_precision": 0.3, "map_at_r": 0.2, "knn_accuracy": 0.4})


def test_reference_set_by_hand() -> None:
    # references x = 1, 2, 3, 4, 5 with labels 0, 1, 0, 0, 1.
    #   q (0.0, label 0): ranking 1(0) 2(1) 3(0) 4(0) 5(1); R = 3, rel 1,0,1:
    #       P@1 1, RP 2/3, MAP (1/3)(1/1 + 2/3) = 5/9, 3-NN 0,1,0 -> 0 ok
    #   q (5.5, label 1): ranking 5(1) 4(0) 3(0) 2(1) 1(0); R = 2, rel 1,0:
    #       P@1 1, RP 1/2, MAP (1/2)(1/1) = 1/2, 3-NN 1,0,0 -> 0 no
    #   q (0.0, label 2): no reference of class 2 (R = 0): left out.
    # Means over 2 queries: P@1 1, RP 7/12, MAP 19/36, kNN 1/2.
    out = retrieval_metrics(col([0, 5.5, 0]), [0, 1, 2], col([1, 2, 3, 4, 5]), [0, 1, 0, 0, 1], k=3)
    assert out == pytest.approx({"precision_at_1": 1, "r_precision": 7 / 12, "map_at_r": 19 / 36, "knn_accuracy": 0.5})


def test_cosine_ranks_by_angle_not_length() -> None:
    # q = (1, 0). Reference A = (10, 1), label 0: cos 0.995 but Euclidean distance 9.06.
    #             Reference B = (0.5, 0.5), label 1: cos 0.707, Euclidean distance 0.707.
    # l2 retrieves B first (P@1 = 0); cosine retrieves A first (P@1 = 1).
    q, ref = np.array([[1.0, 0.0]]), np.array([[10.0, 1.0], [0.5, 0.5]])
    assert retrieval_metrics(q, [0], ref, [0, 1], metric="l2", k=1)["precision_at_1"] == 0
    assert retrieval_metrics(q, [0], ref, [0, 1], metric="cosine", k=1)["precision_at_1"] == 1


def test_knn_vote_tie_goes_to_the_nearer_label() -> None:
    # references 1 (label 1) and 2 (label 0); with k = 2 each label has one vote: the nearer one (1) wins
    ref = col([1, 2])
    assert retrieval_metrics(col([0]), [1], ref, [1, 0], k=2)["knn_accuracy"] == 1
    assert retrieval_metrics(col([0]), [0], ref, [1, 0], k=2)["knn_accuracy"] == 0
    # k = 3 over references 1(a) 2(b) 3(b) 4(a) 5(a): a has 3 votes in 5, but in the 3 nearest b leads 2:1
    ref5, labels5 = col([1, 2, 3, 4, 5]), ["a", "b", "b", "a", "a"]
    assert retrieval_metrics(col([0]), ["b"], ref5, labels5, k=3)["knn_accuracy"] == 1
    assert retrieval_metrics(col([0]), ["a"], ref5, labels5, k=5)["knn_accuracy"] == 1


def test_k_is_capped_at_the_number_of_references() -> None:
    # leave-one-out over 3 points: at most 2 neighbours vote, so k = 50 acts as k = 2
    x, y = col([0, 1, 5]), [0, 0, 1]
    assert retrieval_metrics(x, y, k=50) == retrieval_metrics(x, y, k=2)


# --------------------------------------------------------------------------------------------- self-exclusion
def test_same_embeddings_as_reference_exclude_self() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), rng.integers(0, 4, 60)
    loo = retrieval_metrics(x, y)
    assert retrieval_metrics(x, y, x, y) == loo  # same object
    assert retrieval_metrics(x, y, x.copy(), y.copy()) == loo  # same values
    with_self = retrieval_metrics(x, y, x, y, exclude_self=False)
    assert with_self["precision_at_1"] == 1.0  # every point retrieves itself first
    assert loo["precision_at_1"] < 1.0


def test_exclude_self_with_reference_that_starts_with_the_queries() -> None:
    rng = np.random.default_rng(1)
    ref, ref_y = rng.normal(size=(80, 5)).astype(np.float32), rng.integers(0, 5, 80)
    q, qy = ref[:30], ref_y[:30]
    calc = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"))
    expected = calc.get_accuracy(q, qy, ref, ref_y, ref_includes_query=True)
    ours = retrieval_metrics(q, qy, ref, ref_y, exclude_self=True)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(expected[pml_key], abs=1e-12)


# --------------------------------------------------------------------------------------------- vs PML
def clustered(rng: np.random.Generator, n: int, num_classes: int, dim: int, spread: float) -> tuple:
    labels = rng.integers(0, num_classes, n)
    centers = rng.normal(size=(num_classes, dim)) * spread
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_matches_pytorch_metric_learning(seed: int, metric: str) -> None:
    rng = np.random.default_rng(seed)
    x, y = clustered(rng, 600, 8, 6, spread=1.0)
    q, qy = x[:300], y[:300]
    ref, ref_y = x[300:][y[300:] != 7], y[300:][y[300:] != 7]  # class 7 has no reference: left out
    knn = None if metric == "l2" else CustomKNN(CosineSimilarity())
    calc = AccuracyCalculator(
        include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"), knn_func=knn
    )
    for args in [(q, qy), (q, qy, ref, ref_y)]:
        expected = calc.get_accuracy(*args)
        ours = retrieval_metrics(*args, metric=metric)
        for key, pml_key in PML_KEYS.items():
            assert ours[key] == pytest.approx(expected[pml_key], abs=1e-12), (key, len(args))
    assert 0.2 < ours["precision_at_1"] < 0.95  # the data is neither trivial nor random


# --------------------------------------------------------------------------------------------- blocks, ties
def naive(q: np.ndarray, qy: np.ndarray, ref: np.ndarray, ry: np.ndarray, k: int, exclude_self: bool) -> dict:
    """Loop reference: full stable sort of exact float64 distances per query (ties by index)."""
    sums, used = np.zeros(4), 0
    for i in range(len(q)):
        d = ((ref.astype(np.float64) - q[i]) ** 2).sum(1)
        order = [j for j in np.argsort(d, kind="stable") if not (exclude_self and j == i)]
        r = int((ry == qy[i]).sum()) - int(exclude_self)
        if r == 0:
            continue
        rel = ry[order] == qy[i]
        prec = [rel[: j + 1].mean() for j in range(r)]
        votes = list(ry[order][: min(k, len(order))])
        winner = max(votes, key=lambda lab: (votes.count(lab), -votes.index(lab)))
        sums += [rel[0], rel[:r].mean(), sum(p for p, hit in zip(prec, rel[:r]) if hit) / r, winner == qy[i]]
        used += 1
    return dict(zip(metrics.RETRIEVAL_KEYS, sums / used))


@pytest.mark.parametrize("block_size", [1, 3, 7, None])
def test_blocks_and_ties_match_a_naive_loop(block_size: int | None) -> None:
    rng = np.random.default_rng(3)
    # points on a small integer grid: many exactly equal distances, computed exactly in float32
    x = rng.integers(0, 3, size=(70, 2)).astype(np.float32)
    y = rng.integers(0, 4, 70)
    ref, ry = rng.integers(0, 3, size=(50, 2)).astype(np.float32), rng.integers(0, 4, 50)
    assert retrieval_metrics(x, y, k=4, block_size=block_size) == pytest.approx(naive(x, y, x, y, 4, True))
    assert retrieval_metrics(x, y, ref, ry, k=4, block_size=block_size) == pytest.approx(
        naive(x, y, ref, ry, 4, False)
    )


def test_tie_order_does_not_depend_on_the_knn_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # a kNN backend that returns tied candidates highest index first (faiss happens to keep the lowest):
    # the index-order rule must still hold, via the straddle re-computation
    def reversed_ties(q: np.ndarray, r: np.ndarray, k: int, metric: str) -> tuple:
        d = ((q[:, None, :].astype(np.float64) - r[None]) ** 2).sum(2)  # (b, N)
        order = np.lexsort((-np.arange(len(r))[None].repeat(len(q), 0), d), axis=1)[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.float32), order

    monkeypatch.setattr(metrics, "_knn", reversed_ties)
    rng = np.random.default_rng(9)
    x, y = rng.integers(0, 3, size=(60, 2)).astype(np.float32), rng.integers(0, 3, 60)
    assert retrieval_metrics(x, y, k=3) == pytest.approx(naive(x, y, x, y, 3, True))


def test_blockwise_equals_unblocked_on_random_data() -> None:
    rng = np.random.default_rng(4)
    x, y = clustered(rng, 200, 5, 8, spread=0.8)
    whole = retrieval_metrics(x, y, block_size=200)
    for block_size in (1, 2, 13):
        assert retrieval_metrics(x, y, block_size=block_size) == pytest.approx(whole, abs=1e-12)


def test_blocks_stay_within_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    knn_calls, exact_calls = [], []
    real_knn, real_distances = metrics._knn, metrics._distances

    def spy_knn(q: np.ndarray, r: np.ndarray, k: int, metric: str) -> tuple:
        knn_calls.append((len(q), k))
        return real_knn(q, r, k, metric)

    def spy_distances(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
        exact_calls.append((len(q), len(r)))
        return real_distances(q, r, metric)

    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 1000)
    monkeypatch.setattr(metrics, "_knn", spy_knn)
    monkeypatch.setattr(metrics, "_distances", spy_distances)
    x, y = clustered(np.random.default_rng(5), 300, 3, 4, spread=1.0)
    retrieval_metrics(x, y)
    assert knn_calls and all(rows * k <= 1000 for rows, k in knn_calls)  # (rows, neighbours) tables
    assert sum(rows for rows, _ in knn_calls) == 300
    x_ties = np.round(x)  # many exact ties: the exact path runs, in bounded (rows, N) blocks
    retrieval_metrics(x_ties, y)
    assert exact_calls and all(rows * n <= 1000 for rows, n in exact_calls)


def test_all_tied_points_rank_by_index_without_self() -> None:
    # four copies of one point, labels 0, 0, 1, 1: every distance is 0, so each query ranks the others in
    # index order. With k = 1 (R = 1 for everyone):
    #   q0: 1(0) 2 3 -> P@1 1, RP 1, MAP 1, 1-NN ok      q1: 0(0) 2 3 -> 1, 1, 1, ok
    #   q2: 0(0) 1 3 -> 0, 0, 0, wrong                    q3: 0(0) 1 2 -> 0, 0, 0, wrong
    # (faiss may return three tied copies without self; the tie straddling place 1 forces the exact path)
    x = np.ones((4, 3), dtype=np.float32)
    assert retrieval_metrics(x, [0, 0, 1, 1], k=1) == {key: 0.5 for key in metrics.RETRIEVAL_KEYS}


def test_huge_values_do_not_overflow() -> None:
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.2, 1]], dtype=np.float32) * np.float32(1e30)
    assert float(np.abs(x).max()) ** 2 > float(np.finfo(np.float32).max)  # naive squared norms would overflow
    for metric in ("l2", "cosine"):
        assert retrieval_metrics(x, [0, 0, 1, 1], metric=metric, k=1)["precision_at_1"] == 1


def test_string_labels() -> None:
    out = retrieval_metrics(col([0, 0.1, 5, 5.1]), ["cat", "cat", "dog", "dog"], k=1)
    assert out == {"precision_at_1": 1.0, "r_precision": 1.0, "map_at_r": 1.0, "knn_accuracy": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query_labels": [0, 1]}, ValueError, r"query_labels has 2 entries but there are 3 samples"),
        ({"reference": col([1, 2])}, ValueError, r"reference was given without reference_labels"),
        ({"reference_labels": [0, 1]}, ValueError, r"reference_labels was given without reference"),
        (
            {"reference": np.zeros((2, 2)), "reference_labels": [0, 1]},
            ValueError,
            r"reference has dimension 2, expected 1",
        ),
        ({"metric": "ip"}, ValueError, r"metric must be one of 'l2', 'cosine'; got 'ip'"),
        ({"k": 0}, ValueError, r"k must be a positive integer, got 0"),
        ({"block_size": 0}, ValueError, r"block_size must be a positive integer, got 0"),
        ({"query_labels": [0, 1, 2]}, ValueError, r"no query has a same-class item in the reference set"),
        ({"reference": col([1]), "reference_labels": ["a"]}, TypeError, r"must both be strings or both integers"),
        (
            {"reference": col([1]), "reference_labels": [0], "exclude_self": True},
            ValueError,
            r"start with the 3 queries",
        ),
        ({"query": col([0, np.nan, 1])}, ValueError, r"query contains NaN or inf values in 1 of 3 rows"),
    ],
)
def test_retrieval_errors(kwargs: dict, error: type, match: str) -> None:
    args = {"query": col([0, 1, 2]), "query_labels": [0, 0, 1]} | kwargs
    with pytest.raises(error, match=match):
        retrieval_metrics(**args)


# --------------------------------------------------------------------------------------------- separation
def test_separation_orders_separated_above_mixed() -> None:
    rng = np.random.default_rng(6)
    separated, y = clustered(rng, 300, 4, 5, spread=10.0)
    mixed = rng.normal(size=(300, 5)).astype(np.float32)
    good, bad = separation_metrics(separated, y), separation_metrics(mixed, y)
    assert set(good) == set(metrics.SEPARATION_KEYS)
    assert good["silhouette"] > 0.5 > bad["silhouette"]
    assert good["davies_bouldin"] < bad["davies_bouldin"]
    assert good["calinski_harabasz"] > 10 * bad["calinski_harabasz"]
    assert good["nmi"] > 0.9 > 0.2 > bad["nmi"]
    assert good["ami"] > 0.9 > 0.2 > bad["ami"]


def test_separation_is_seeded() -> None:
    x, y = clustered(np.random.default_rng(7), 200, 5, 3, spread=1.5)
    assert separation_metrics(x, y, seed=1) == separation_metrics(x, y, seed=1)


def test_silhouette_uses_a_stratified_subsample() -> None:
    x, y = clustered(np.random.default_rng(8), 400, 4, 3, spread=2.0)
    sub = stratified_subsample(y, 100, seed=2)
    assert len(sub) == 100 and len(set(sub)) == 100
    assert np.bincount(y[sub], minlength=4) == pytest.approx(np.bincount(y, minlength=4) / 4, abs=1)
    out = separation_metrics(x, y, seed=2, silhouette_sample=100)
    assert out["silhouette"] == pytest.approx(silhouette_score(x[sub], y[sub]))
    assert separation_metrics(x, y, silhouette_sample=400)["silhouette"] == pytest.approx(silhouette_score(x, y))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 0, 0], r"need at least 2 classes and fewer classes than points; got 1 classes for 3 points"),
        ([0, 1, 2], r"got 3 classes for 3 points"),
        ([0, 1], r"labels has 2 entries but there are 3 samples"),
    ],
)
def test_separation_errors(labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        separation_metrics(col([0, 1, 2]), labels)
