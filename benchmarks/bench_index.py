"""Flat exact search: EmbeddingIndex vs raw faiss vs scikit-learn brute force, side by side in one run.

Targets (issue 4): at N=100k, d=128, k=10
  - Q=10k: EmbeddingIndex >= 0.95x raw faiss (IndexFlatL2 with its defaults);
  - Q=64:  EmbeddingIndex >= 4x raw faiss with its defaults (faiss scans without BLAS when
           Q*d < faiss.cvar.distance_compute_blas_threshold = 128000; we force its SGEMM + heap path).
raw faiss and EmbeddingIndex are timed in turn inside each repeat (interleaved, order rotated), so load
on a shared machine hits both alike; for Q < 1000 each turn is 5 back-to-back timed calls (a steady
query loop; see run_case). scikit-learn is timed after them (3 repeats). Tables report
medians; ratios are between medians of the same run.
The neighbours are checked to be the same as raw faiss's before timing.

--interleaved (issue 23 item 5): the small-batch lead, Q < 1000, at the libraries' default threads and at
1 thread, under two schedules: raw faiss and EmbeddingIndex alternating call by call (each call of ours
right after a raw faiss call, so libgomp's threads may still be spinning), and blocks of 5 back-to-back
calls each. "before" is EmbeddingIndex as it ran until issue 23: its tasks handed to worker threads only
(the caller waiting) and the slices' merge at the caller's OpenMP threads (metriclearn/indexes/
_work_sharing.py explains both). Each is paired with raw faiss on its own, pairs interleaved within each repeat; the
order inside a pair flips every repeat.

Usage: python benchmarks/bench_index.py [--n 100000] [--dim 128] [--repeats 7] [--sweep] [--threads N]
                                       [--interleaved] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import threadpoolctl
import torch
from sklearn.neighbors import NearestNeighbors

from metriclearn.indexes import EmbeddingIndex, _flat_search, _work_sharing
from metriclearn.indexes.exact import exact_topk

K = 10


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_case(
    methods: dict[str, Callable[[], Any]], repeats: int, flops: float, calls: int = 1
) -> dict[str, dict[str, float]]:
    """Median seconds and GFLOP/s per method.

    Each repeat runs every method (order rotated) as a block of ``calls`` back-to-back calls, each
    timed: a steady query loop, as timeit does. Back to back matters for short calls: libgomp's idle
    threads spin for several ms after a parallel region (raw faiss's, torch's), stealing a core from
    whatever runs next, which would bias an alternate-every-call schedule against the method run
    after raw faiss.
    """
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up (thread pools, page faults)
        methods[name]()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].extend(timed(methods[name]) for _ in range(calls))
    return {
        name: {"median_s": statistics.median(t), "gflops": flops / statistics.median(t) / 1e9, "runs": len(t)}
        for name, t in times.items()
    }


def check_same(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], name: str) -> None:
    (D0, I0), (D1, I1) = reference, other
    agree = float((I0 == I1).mean())
    np.testing.assert_allclose(D0, D1, rtol=1e-3, atol=1e-2, err_msg=name)
    if agree < 0.999:  # ties only
        raise AssertionError(f"{name}: only {agree:.4f} of neighbour ids agree with raw faiss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, nargs="+", default=[10_000, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="also time Q = 1 .. 4096 (no scikit-learn)")
    parser.add_argument("--threads", type=int, help="faiss/torch/BLAS threads (default: the libraries' own)")
    parser.add_argument(
        "--interleaved", action="store_true", help="only the Q < 1000 lead: both schedules, default and 1 thread"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
        threadpoolctl.threadpool_limits(args.threads)  # scikit-learn's BLAS

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    raw = faiss.IndexFlatL2(args.dim)
    raw.add(xb)
    ours = EmbeddingIndex(args.dim, metric="l2", kind="flat", device="cpu")
    ours.add(xb)
    sk = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(xb)
    print(
        f"N={args.n} d={args.dim} k={K}; threads: faiss {faiss.omp_get_max_threads()}, torch "
        f"{torch.get_num_threads()}; faiss blas threshold {faiss.cvar.distance_compute_blas_threshold}; "
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )

    results: dict[str, Any] = {"n": args.n, "dim": args.dim, "k": K, "cases": {}}
    if args.interleaved:
        queries = [nq for nq in args.queries if nq < 1000] or [64]
        results["interleaved"] = interleaved(raw, ours, rng, queries, args.dim, args.repeats)
        args.queries, args.sweep = [], False
    for nq in args.queries:
        xq = rng.standard_normal((nq, args.dim), dtype=np.float32)
        reference = raw.search(xq, K)
        check_same(reference, ours.search(xq, K), "EmbeddingIndex")
        flops = 2.0 * nq * args.n * args.dim
        methods = {
            "raw faiss (defaults)": lambda xq=xq: raw.search(xq, K),
            "EmbeddingIndex": lambda xq=xq: ours.search(xq, K),
        }
        case = run_case(methods, args.repeats, flops, calls=5 if nq < 1000 else 1)
        # scikit-learn afterwards: its BLAS thread pool would otherwise slow down whatever runs next
        case.update(run_case({"scikit-learn brute": lambda xq=xq: sk.kneighbors(xq)}, 3, flops))
        results["cases"][nq] = case
        base = case["raw faiss (defaults)"]["median_s"]
        print(f"\n### Q={nq}\n\n| method | median | GFLOP/s | vs raw faiss |\n|---|---|---|---|")
        for name, row in case.items():
            print(f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['gflops']:.0f} | {base / row['median_s']:.2f}x |")

    if args.sweep:
        xt = torch.from_numpy(xb)
        norms = torch.einsum("ij,ij->i", xt, xt)
        print("\n### Sweep over Q (median ms)\n")
        print("| Q | raw faiss | EmbeddingIndex | torch exact_topk | raw faiss, BLAS forced |\n|---|---|---|---|---|")
        sweep = {}
        for nq in (1, 8, 64, 256, 999, 1000, 4096):
            xq = rng.standard_normal((nq, args.dim), dtype=np.float32)
            qt = torch.from_numpy(xq)
            methods = {
                "raw": lambda xq=xq: raw.search(xq, K),
                "ours": lambda xq=xq: ours.search(xq, K),
                "topk": lambda qt=qt: exact_topk(qt, xt, K, l2=True, reference_sq_norms=norms),
                "blas0": lambda xq=xq: _forced_blas(raw, xq),
            }
            case = run_case(methods, args.repeats, 2.0 * nq * args.n * args.dim, calls=5 if nq < 1000 else 1)
            sweep[nq] = case
            print(f"| {nq} | " + " | ".join(f"{case[m]['median_s'] * 1e3:.2f}" for m in methods) + " |")
        results["sweep"] = sweep

    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    results["load_average"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


def interleaved(
    raw: faiss.Index, ours: EmbeddingIndex, rng: np.random.Generator, queries: list[int], dim: int, repeats: int
) -> dict[str, Any]:
    """Median ms of raw faiss vs EmbeddingIndex (and "before") per threads x schedule x Q; see the module doc."""
    out: dict[str, Any] = {}
    default_threads = faiss.omp_get_max_threads()
    for threads in dict.fromkeys([default_threads, 1]):
        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)
        for nq in queries:
            xq = rng.standard_normal((nq, dim), dtype=np.float32)
            check_same(raw.search(xq, K), ours.search(xq, K), "EmbeddingIndex")
            check_same(raw.search(xq, K), _before(ours, xq), "before")
            rivals = {
                "EmbeddingIndex": lambda xq=xq: ours.search(xq, K),
                "before": lambda xq=xq: _before(ours, xq),
            }
            schedules = ("call by call", "blocks of 5")
            times: dict[tuple[str, str, str], list[float]] = {
                (s, m, who): [] for s in schedules for m in rivals for who in ("raw", "ours")
            }
            for r in range(repeats):
                for name, fn in rivals.items():
                    pair = [("raw", lambda xq=xq: raw.search(xq, K)), ("ours", fn)][:: 1 if r % 2 == 0 else -1]
                    for _ in range(5):  # call by call: raw, ours, raw, ours, ...
                        for who, call in pair:
                            times["call by call", name, who].append(timed(call))
                    for who, call in pair:  # blocks: 5 raw calls, then 5 of ours (order flipped every repeat)
                        times["blocks of 5", name, who].extend(timed(call) for _ in range(5))
            print(f"\n### Interleaved, Q={nq}, {threads} thread(s), load average {os.getloadavg()[0]:.2f}\n")
            print("| schedule | method | raw faiss | method | raw faiss / method |\n|---|---|---|---|---|")
            for schedule in schedules:
                for name in rivals:
                    a = statistics.median(times[schedule, name, "raw"])
                    b = statistics.median(times[schedule, name, "ours"])
                    key = f"threads={threads} Q={nq} {schedule} {name}"
                    runs = len(times[schedule, name, "raw"])
                    out[key] = {"raw_ms": a * 1e3, "ms": b * 1e3, "ratio": a / b, "runs": runs}
                    print(f"| {schedule} | {name} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | **{a / b:.2f}x** |")
    faiss.omp_set_num_threads(default_threads)
    torch.set_num_threads(default_threads)
    return out


def _before(index: EmbeddingIndex, xq: np.ndarray) -> Any:
    """EmbeddingIndex.search as it ran before issue 23: every task in the worker threads, the caller waiting,
    and the slices' merge at the caller's OpenMP threads."""
    saved = _flat_search.run_shared, _flat_search.one_faiss_thread
    _flat_search.run_shared = lambda tasks, helpers: list(_work_sharing._workers().map(lambda task: task(), tasks))
    _flat_search.one_faiss_thread = contextlib.nullcontext
    try:
        return index.search(xq, K)
    finally:
        _flat_search.run_shared, _flat_search.one_faiss_thread = saved


def _forced_blas(index: faiss.Index, xq: np.ndarray) -> Any:
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        return index.search(xq, K)
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


if __name__ == "__main__":
    main()
