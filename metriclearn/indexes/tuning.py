"""Tune an approximate index to a target recall@k, measured against exact search on held-out queries.

Recall@k (the "k-NN recall" of ann-benchmarks, Aumüller et al. 2020) of a query q with exact k-th
neighbour score s_k(q) is the share of the k ids returned whose exact score is at least as good as s_k:

    recall@k = mean_q  |{ r ∈ returned_k(q) : score(q, x_r) ⪰ s_k(q) − ε }| / k

(⪰: ≤ for squared L2 distances, ≥ for similarities; ε = 1e-5 absorbs float round-off, and ties at the
k-th distance, e.g. duplicate vectors, count as hits.)

Held-out queries: unless ``queries`` are given, a random sample of the stored vectors is set aside
and excluded from the ground-truth set; every candidate index is built on the remaining vectors, so a
query never finds itself. The sample is large (min(5000, max(50, n/10))) because recall near 1 is
measured on few misses: with 1 000 queries, the recall@10 of one hnsw setting on 50 k sentence embeddings
spanned 0.982–0.987 over three samples, enough to move the efSearch that reaches 0.99 from 32 to 54. The
report gives the standard error of the measured recall (the per-query recalls' standard deviation / √Q).
Speed is queries per second of ``search`` over the whole held-out batch (best round of three, after a
warm-up).

For each build parameter tried (``ivf``: nlist ∈ {a/2, a, 2a} with a the index's nlist, at most n/20 —
below faiss's advised 39 training points per list, but the recall of each is measured, so centroids trained
on fewer points are judged by what they find;
``hnsw``: M ∈ {16, 32, 48} and the index's own), the search parameter (``nprobe``; HNSW ``efSearch``) grows in
powers of two until recall@k reaches the target, then a bisection finds the smallest value that does
(recall grows with it). The builds' chosen settings are then timed side by side (in turn, within each
of three rounds) with a flat index, and the fastest that reaches the target wins. When none does, the most
accurate setting is kept and a :class:`TuningWarning` says so; another says when flat search is
faster than the chosen setting (then ``kind="flat"`` is the better index). ``pq`` codes and factory
strings keep their code parameters; for PQ (``kind="pq"`` or a factory string with ``PQ``) the
re-ranking depth is a build parameter too: no re-ranking, or an ``IndexRefineFlat`` wrapper re-ranking
the top k·k_factor candidates by exact distance (Jégou et al. 2011, "Searching in one billion vectors:
re-rank with source coding"), k_factor ∈ {2, 4, 8, 16, 32}, each with its own nprobe sweep. Re-ranking
keeps the raw vectors (4·d bytes each) beside the codes. ``flat`` is exact.

Example
-------
>>> import numpy as np, warnings
>>> from metriclearn.indexes import EmbeddingIndex
>>> rng = np.random.default_rng(0)
>>> x = (rng.standard_normal((20, 16)) * 4)[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 16))
>>> index = EmbeddingIndex(16, metric="l2", kind="ivf", device="cpu")
>>> _ = index.add(x.astype(np.float32))
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore", TuningWarning)  # flat may well be faster at this size
...     report = index.tune(0.9, k=10)
>>> report["recall_at_k"] >= 0.9, report["held_out_queries"], index.nprobe == report["params"]["nprobe"]
(True, 300, True)
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Protocol, TypeVar

import faiss
import numpy as np

from metriclearn._checks import check_interval, check_matrix, check_positive_int
from metriclearn.indexes import _factory, _structure
from metriclearn.indexes.exact import exact_search, normalize_rows

EPS = 1e-5
HNSW_M_GRID = (16, 32, 48)
K_FACTOR_GRID = (2, 4, 8, 16, 32)  # PQ re-ranking depths tried, besides none
MAX_EF_SEARCH = 4096
MAX_HELD_OUT = 5000  # default held-out queries at most (n/10 below that, at least 50)
MIN_POINTS_PER_LIST = 20  # ivf nlist tried at most n/20: coarser k-means than faiss's advised 39, but measured
_REPEATS = 3


class Tunable(Protocol):
    """The public surface of an ``EmbeddingIndex`` that tuning reads and sets (its class builds the candidates)."""

    dim: int
    metric: str
    kind: str
    nlist: int | None
    hnsw_m: int
    pq_nbits: int
    k_factor: int | None
    attrs: dict[str, Any]

    def __init__(self, dim: int, metric: str, kind: str, device: str, **params: Any) -> None: ...
    def __len__(self) -> int: ...
    @property
    def factory(self) -> str | None: ...
    @property
    def faiss_index(self) -> faiss.Index | None: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def ids(self) -> np.ndarray: ...
    @property
    def ef_search(self) -> int: ...
    def add(self, x: Any) -> np.ndarray: ...
    def vectors(self) -> np.ndarray: ...
    def search(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def empty_structure(self) -> faiss.Index: ...
    def use_structure(self, index: faiss.Index) -> None: ...


T = TypeVar("T", bound=Tunable)


class TuningWarning(UserWarning):
    """The target recall cannot be reached, or exact search is faster than the tuned index."""


def tune_index(
    index: Tunable,
    target_recall: float,
    k: int = 10,
    queries: Any = None,
    *,
    vectors: Any = None,
    n_queries: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Tune ``index`` in place (see :meth:`EmbeddingIndex.tune`); return what is stored in ``attrs["tuning"]``."""
    target = check_interval(target_recall, "target_recall", open_low=True)
    k = check_positive_int(k, "k")
    data = _data(index, vectors)
    if queries is None:
        xq, base, source = *_held_out(data, k, n_queries, seed), "held-out sample of the indexed vectors"
    else:
        xq, base, source = check_matrix(queries, "queries", dim=index.dim), data, "given queries"
        xq = normalize_rows(xq) if index.metric == "cosine" else xq
    if base.shape[0] < k:
        raise ValueError(f"k={k} is larger than the {base.shape[0]} vectors left to search after holding queries out")
    gt_scores = exact_search(xq, base, k, metric="ip" if index.metric == "cosine" else index.metric)[0]  # (Q, k)
    flat = _candidate(index, base, {"kind": "flat"})
    trials: list[dict[str, Any]] = []
    best: dict[str, Any]
    if index.kind == "flat":
        recall, se = _recall(flat, xq, base, gt_scores, k, index.metric)
        best = {"build": {}, "search": {}, "recall": recall, "se": se, "qps": _qps_many([flat], xq, k)[0]}
        flat_qps = best["qps"]
        trials.append(best)
    else:
        finalists: list[dict[str, Any]] = []
        for build in _build_grid(index, base.shape[0]):
            found = _sweep(_candidate(index, base, build), xq, base, gt_scores, k, target, index.metric)
            trials.extend(found["tried"])
            finalists.append(found["best"])
        reaching = [f for f in finalists if f["recall"] >= target]
        contenders = reaching or [max(finalists, key=lambda f: f["recall"])]
        *speeds, flat_qps = _qps_many([c["index"] for c in contenders] + [flat], xq, k)  # side by side
        for finalist in finalists:
            del finalist["index"]
        for contender, qps in zip(contenders, speeds, strict=True):
            contender["qps"] = qps
        best = max(contenders, key=lambda c: c["qps"])
        _apply(index, data, best)
    reached = best["recall"] >= target
    notes = []
    params = {**best["build"], **best["search"]}
    if not reached:
        notes.append(
            f"no setting of kind {index.kind!r} reaches recall@{k} {target:g}: the best found is "
            f"{best['recall']:.3f} with {_words(params)}; kept that"
        )
    flat_faster = index.kind != "flat" and flat_qps >= best["qps"]
    if flat_faster:
        notes.append(
            f"exact search is faster than kind {index.kind!r} at this size ({flat_qps:.0f} vs {best['qps']:.0f} "
            "queries/s): use kind 'flat'"
        )
    for note in notes:
        warnings.warn(note, TuningWarning, stacklevel=3)
    record = {
        "target_recall": target,
        "k": k,
        "recall_at_k": round(float(best["recall"]), 4),
        "recall_se": round(float(best["se"]), 4),
        "reached": bool(reached),
        "qps": round(float(best["qps"]), 1),
        "flat_qps": round(float(flat_qps), 1),
        "speed_vs_flat": round(float(best["qps"] / flat_qps), 3),
        "flat_faster": bool(flat_faster),
        "params": params,
        "held_out_queries": int(xq.shape[0]),
        "queries": source,
        "searched_vectors": int(base.shape[0]),
        "threads": int(faiss.omp_get_max_threads()),
        "tried": [_row(t) for t in trials],  # qps None: recall measured, not timed
        "notes": notes,
    }
    index.attrs = {**index.attrs, "tuning": record}
    return record


def _data(index: Tunable, vectors: Any) -> np.ndarray:
    """The exact stored vectors in ids order: given, or read back from a kind that stores them exactly."""
    if len(index) == 0:
        raise ValueError("cannot tune an empty index: add vectors first")
    if vectors is None:
        if index.kind not in ("flat", "ivf", "hnsw") and index.k_factor is None:
            raise ValueError(
                f"kind {index.kind!r} does not keep the vectors exactly: pass vectors= (the embeddings that were "
                "added, in index.ids order) so recall is measured against the true neighbours"
            )
        return index.vectors()
    data = check_matrix(vectors, "vectors", dim=index.dim)
    if data.shape[0] != len(index):
        raise ValueError(f"vectors has {data.shape[0]} rows but the index holds {len(index)} vectors")
    return normalize_rows(data) if index.metric == "cosine" else data


def _held_out(data: np.ndarray, k: int, n_queries: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of queries and the remaining vectors (the ground-truth set)."""
    n = data.shape[0]
    nq = n_queries if n_queries is not None else min(MAX_HELD_OUT, max(50, n // 10))
    nq = check_positive_int(nq, "n_queries")
    if n - nq < max(k, 1) or nq >= n:
        raise ValueError(f"the index holds {n} vectors: too few to hold {nq} queries out and keep k={k} to search")
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, nq, replace=False)] = True
    return data[held], data[~held]


def _build_grid(index: Tunable, n: int) -> list[dict[str, Any]]:
    """The build parameters to try for this kind."""
    if index.kind == "ivf":  # around the index's own nlist, at least MIN_POINTS_PER_LIST training points per list
        own = index.nlist or _factory.auto_nlist(n)
        grid = {max(1, min(nl, n // MIN_POINTS_PER_LIST)) for nl in (own // 2, own, 2 * own)}
        return [{"kind": "ivf", "nlist": nl} for nl in sorted(grid)]
    if index.kind == "hnsw":
        return [{"kind": "hnsw", "hnsw_m": m} for m in sorted({*HNSW_M_GRID, index.hnsw_m})]
    nlist = index.nlist if index.nlist is None or index.kind != "pq" else min(index.nlist, n)
    if not _is_pq(index.kind):
        return [{"kind": index.kind, "nlist": nlist}]
    return [{"kind": index.kind, "nlist": nlist, "k_factor": depth} for depth in (None, *K_FACTOR_GRID)]


def _is_pq(kind: str) -> bool:
    """Whether ``kind`` stores product-quantizer codes (``"pq"`` or a factory string with a PQ stage)."""
    return kind == "pq" or "PQ" in kind


def _candidate(index: T, base: np.ndarray, build: dict[str, Any]) -> T:
    """A CPU index like ``index`` but with ``build``'s parameters, holding ``base`` (ids = rows)."""
    params = {**index.params, **{key: value for key, value in build.items() if key != "kind"}}
    candidate = type(index)(index.dim, index.metric, build.get("kind", index.kind), "cpu", **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PQ's "few training points" warning is the index's, not the tuner's
        candidate.add(base)
    return candidate


def _sweep(
    candidate: Tunable, xq: np.ndarray, base: np.ndarray, gt: np.ndarray, k: int, target: float, metric: str
) -> dict[str, Any]:
    """The smallest search parameter reaching ``target`` (else the most accurate one), with its speed."""
    ivf = _structure.ivf(candidate.faiss_index)
    name = "nprobe" if ivf is not None else ("ef_search" if _structure.hnsw(candidate.faiss_index) else None)
    build = {key: value for key, value in candidate.params.items() if key in ("nlist", "hnsw_m", "pq_m", "k_factor")}
    build = {key: value for key, value in build.items() if value is not None and _matters(candidate.kind, key)}
    if name is None:  # nothing to tune at search time
        recall, se = _recall(candidate, xq, base, gt, k, metric)
        result = {"build": build, "search": {}, "recall": recall, "se": se, "qps": None}
        result["index"] = candidate
        return {"best": result, "tried": [result]}
    top = int(ivf.nlist) if ivf is not None else MAX_EF_SEARCH
    low = 1 if ivf is not None else min(k, top)
    recalls: dict[int, tuple[float, float]] = {}  # search parameter -> (recall@k, its standard error)

    def recall_at(value: int) -> float:
        if value not in recalls:
            setattr(candidate, name, value)
            recalls[value] = _recall(candidate, xq, base, gt, k, metric)
        return recalls[value][0]

    value, previous = low, None
    while recall_at(value) < target and value < top:
        previous, value = value, min(2 * value, top)
    if recall_at(value) >= target and previous is not None:  # bisect (previous, value]
        lo, hi = previous, value
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if recall_at(mid) >= target else (mid, hi)
        value = hi
    setattr(candidate, name, value)
    recall, se = recalls[value]
    best = {"build": build, "search": {name: value}, "recall": recall, "se": se, "qps": None, "index": candidate}
    tried = [{"build": build, "search": {name: v}, "recall": r, "qps": None}
             for v, (r, _) in sorted(recalls.items()) if v != value]
    return {"best": best, "tried": [*tried, best]}  # best's qps is filled in once the finalists are timed


def _matters(kind: str, key: str) -> bool:
    return (
        (key == "hnsw_m" and kind == "hnsw")
        or (key == "nlist" and kind in ("ivf", "pq"))
        or (key == "pq_m" and kind == "pq")
        or (key == "k_factor" and _is_pq(kind))
    )


def _recall(
    candidate: Tunable, xq: np.ndarray, base: np.ndarray, gt: np.ndarray, k: int, metric: str
) -> tuple[float, float]:
    """recall@k of ``candidate`` (ids = rows of ``base``) against the exact scores ``gt`` (Q, k), and its
    standard error over the queries (the per-query recalls' standard deviation / √Q)."""
    per_query = recall_per_query(candidate.search(xq, k)[1], xq, base, gt, metric)  # (Q,)
    se = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return float(per_query.mean()), se


def recall_at_k(rows: np.ndarray, xq: np.ndarray, base: np.ndarray, gt: np.ndarray, metric: str) -> float:
    """recall@k of neighbours ``rows`` (Q, k) (positions in ``base``, −1 for none) given exact scores ``gt`` (Q, k).

    ``gt`` holds each query's exact k best scores (squared L2 ascending, or similarities descending,
    as :func:`~metriclearn.indexes.exact_search` returns them); a neighbour is a hit when its exact
    score is within ``EPS`` of the k-th.

    >>> base = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32); q = np.array([[0.1]], dtype=np.float32)
    >>> recall_at_k(np.array([[0, 2]]), q, base, np.array([[0.01, 0.81]]), "l2")
    0.5
    """
    return float(recall_per_query(rows, xq, base, gt, metric).mean())


def recall_per_query(rows: np.ndarray, xq: np.ndarray, base: np.ndarray, gt: np.ndarray, metric: str) -> np.ndarray:
    """Each query's recall@k (Q,): the share of its ``rows`` that are true k nearest (see :func:`recall_at_k`)."""
    k = rows.shape[1]
    found = base[np.maximum(rows, 0)]  # (Q, k, d)
    kth = gt[:, k - 1 : k]  # (Q, 1)
    if metric == "l2":
        scores = np.einsum("qkd,qkd->qk", found - xq[:, None], found - xq[:, None])
        hit = scores <= kth + EPS * np.maximum(1.0, np.abs(kth))
    else:
        scores = np.einsum("qkd,qd->qk", found, xq)
        hit = scores >= kth - EPS * np.maximum(1.0, np.abs(kth))
    return (hit & (rows >= 0)).mean(axis=1)  # (Q,)


def _qps_many(candidates: list[Tunable], xq: np.ndarray, k: int) -> list[float]:
    """Queries/s of each candidate, timed in turn within each of a few rounds (best round each), after a warm-up.

    Timing the candidates side by side means a load change on a shared machine hits them alike.
    """
    for candidate in candidates:
        candidate.search(xq[: min(len(xq), 32)], k)
    best = [0.0] * len(candidates)
    for _ in range(_REPEATS):
        for j, candidate in enumerate(candidates):
            best[j] = max(best[j], _qps(candidate, xq, k))
    return best


def _qps(candidate: Tunable, xq: np.ndarray, k: int) -> float:
    """Queries per second of one search of the whole batch."""
    start = time.perf_counter()
    candidate.search(xq, k)
    return xq.shape[0] / max(time.perf_counter() - start, 1e-9)


def _apply(index: Tunable, data: np.ndarray, best: dict[str, Any]) -> None:
    """Give ``index`` the chosen build parameters (rebuilding it from ``data`` when they differ) and search ones."""
    wanted = {"k_factor": None, **best["build"]} if _is_pq(index.kind) else best["build"]  # no key: no re-ranking
    changed = {key: value for key, value in wanted.items() if getattr(index, key) != value}
    if changed:
        for key, value in changed.items():
            setattr(index, key, value)
        structure = index.empty_structure()
        _structure.apply_search_params(structure, None, index.ef_search)
        if not structure.is_trained:
            with warnings.catch_warnings():  # few points per list: chosen knowingly, its recall was measured
                warnings.filterwarnings("ignore", _structure.FEW_POINTS_PER_LIST)
                _structure.train(structure, data, index.kind, index.nlist, index.pq_nbits, index.factory or "")
        structure.add_with_ids(data, index.ids)
        index.use_structure(structure)
    for key, value in best["search"].items():
        setattr(index, key, value)


def _row(trial: dict[str, Any]) -> dict[str, Any]:
    qps = None if trial["qps"] is None else round(float(trial["qps"]), 1)
    return {**trial["build"], **trial["search"], "recall": round(float(trial["recall"]), 4), "qps": qps}


def _words(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items()) or "its defaults"
