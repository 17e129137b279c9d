"""Exact search of a flat CPU index: faiss k-NN in the calling thread + helpers, with BLAS for small batches too.

faiss searches a flat index with SGEMM + a k-heap only when Q·d reaches the global
``faiss.cvar.distance_compute_blas_threshold`` (128 000 by default, i.e. Q ≥ 1000 at d = 128); below
it scans vector by vector, ≈ 5× slower per query at Q = 64, N = 100k, d = 128. And its OpenMP
threads meet at a barrier after every 1024-row database block, which costs little on an idle
machine but stalls whenever another process holds a core.

:func:`flat_search` therefore runs faiss's own ``knn_L2sqr`` / ``knn_inner_product`` as tasks (OpenMP
limited to 1 thread in each), with the BLAS path forced on for batches of ``MIN_QUERIES`` or more. A
large batch is cut into blocks of queries, one task each; a small one is run against slices of the
vectors, one task each, and the per-slice top-k lists are merged in faiss's ``ResultHeap`` (one k-heap
per query, the structure faiss's own sliced searches use). There are a few tasks per thread, run by
the calling thread and helper threads that join when they get a CPU
(:func:`metriclearn.indexes._work_sharing.run_shared`): a thread slowed down by another process
simply takes fewer, and a small search never waits for a helper to wake up. Same neighbours as
``index.search`` up to float round-off and ties; no OpenMP barrier anywhere.

The BLAS threshold is process-global: while any such search runs it is 0 (a counter restores the
previous value when the last one leaves), so another thread's faiss call made meanwhile may take
the BLAS path too, which changes its speed, not its results.

>>> x = np.array([[0, 0], [1, 0], [5, 5]], dtype=np.float32)
>>> D, I = flat_search(x, np.array([[0.9, 0.1]], dtype=np.float32), 2, l2=True)
>>> print(I, D.round(2))
[[1 0]] [[0.02 0.82]]
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Iterator

import faiss
import numpy as np

from metriclearn.indexes._work_sharing import one_faiss_thread, run_shared

MIN_QUERIES = 4  # below this the plain scan is faster than SGEMM set-up
TASKS_PER_THREAD = 4  # more tasks than threads: a thread slowed by another process takes fewer
MIN_QUERY_CHUNK = 64  # split the queries (not the vectors) once every task gets this many
MIN_SLICE = 8192  # vectors per slice at least (smaller ones are not worth a task)

_lock = threading.Lock()
_users = 0
_saved_threshold = 0


def flat_search(
    xb: np.ndarray, xq: np.ndarray, k: int, *, l2: bool, xb_sq_norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of ``xb`` (N, d) for each row of ``xq`` (Q, d): ``(D, I)`` with I row positions.

    ``l2``: squared L2 distances, ascending (``xb_sq_norms`` = ‖x‖² per row, optional cache);
    else inner products, descending. Missing neighbours (k > N): id −1, distance ±3.4e38 (faiss's).
    """
    n, nq = xb.shape[0], xq.shape[0]
    threads = faiss.omp_get_max_threads()
    tasks = TASKS_PER_THREAD * threads if threads > 1 else 1
    with _blas_forced(nq >= MIN_QUERIES):
        if nq >= tasks * MIN_QUERY_CHUNK:  # many queries: each task takes a block of them, no merge
            chunks = np.array_split(np.arange(nq), tasks)
            blocks = [functools.partial(_knn, xb, xq[c[0] : c[-1] + 1], k, l2, xb_sq_norms, 0, n) for c in chunks]
            D, I = zip(*run_shared(blocks, helpers=threads - 1), strict=True)
            return np.concatenate(D), np.concatenate(I)
        slices = max(1, min(tasks, n // MIN_SLICE))  # few queries: each task takes a slice of the vectors
        bounds = np.linspace(0, n, slices + 1).astype(int).tolist()
        parts = [functools.partial(_knn, xb, xq, k, l2, xb_sq_norms, *b) for b in itertools.pairwise(bounds)]
        results = run_shared(parts, helpers=threads - 1)
    if len(results) == 1:
        return results[0]
    with one_faiss_thread():  # its heapify / reorder are OpenMP loops: not worth waking a team for
        heap = faiss.ResultHeap(nq, k, keep_max=not l2)  # merge the slices' top k: one k-heap per query
        for D, I in results:
            heap.add_result(D, I)
        heap.finalize()
    return heap.D, heap.I


def _knn(
    xb: np.ndarray, xq: np.ndarray, k: int, l2: bool, norms: np.ndarray | None, j0: int, j1: int
) -> tuple[np.ndarray, np.ndarray]:
    """faiss's exhaustive k-NN of ``xq`` against rows j0:j1 of ``xb``, in the thread that runs the task."""
    nq, d = xq.shape
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    ptr = faiss.swig_ptr
    y = ptr(xb[j0:j1])
    if l2:
        norms_ptr = None if norms is None else ptr(norms[j0:j1])
        faiss.knn_L2sqr(ptr(xq), y, d, nq, j1 - j0, k, ptr(D), ptr(I), norms_ptr)
    else:
        faiss.knn_inner_product(ptr(xq), y, d, nq, j1 - j0, k, ptr(D), ptr(I))
    I[I >= 0] += j0
    return D, I


@contextlib.contextmanager
def _blas_forced(on: bool) -> Iterator[None]:
    """Set faiss's BLAS threshold to 0 while at least one caller is inside (thread-safe counter)."""
    global _users, _saved_threshold
    if not on:
        yield
        return
    with _lock:
        if _users == 0:
            _saved_threshold = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 0
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                faiss.cvar.distance_compute_blas_threshold = _saved_threshold
