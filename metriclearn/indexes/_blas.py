"""Small query batches on flat indexes: run faiss's own BLAS code path instead of its plain scan.

faiss searches a flat index with one SGEMM per block (plus a k-heap) only when Q·d reaches the global
``faiss.cvar.distance_compute_blas_threshold`` (128 000 by default, i.e. Q ≥ 1000 at d = 128); below
that it scans vector by vector, at a fraction of the SGEMM rate (≈ 5× slower per query at Q = 64,
N = 100k, d = 128 on one core). :func:`blas_search` lowers the threshold for the duration of one
search, so the neighbours come from the same faiss code that serves large batches.

The threshold is process-global. Overlapping searches from several threads share one lowered
value (a counter restores the caller's value when the last one leaves); another thread's faiss call
made meanwhile may take the BLAS path too, which changes its speed, not its results.

>>> import numpy as np
>>> before = faiss.cvar.distance_compute_blas_threshold
>>> index = faiss.IndexFlatL2(2)
>>> index.add(np.eye(2, dtype=np.float32))
>>> blas_search(index, np.ones((8, 2), dtype=np.float32), 1)[1][:2].ravel().tolist()
[0, 0]
>>> faiss.cvar.distance_compute_blas_threshold == before
True
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

MIN_QUERIES = 4  # below this the scan is faster: one pass over the vectors, no SGEMM set-up

_lock = threading.Lock()
_users = 0
_saved = 0


def use_blas(nq: int, dim: int) -> bool:
    """Whether a search of ``nq`` queries would scan without BLAS although BLAS is faster."""
    return MIN_QUERIES <= nq and nq * dim < faiss.cvar.distance_compute_blas_threshold


def blas_search(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(xq, k)`` with faiss's BLAS path forced on."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 0
        _users += 1
    try:
        return index.search(xq, k)
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                faiss.cvar.distance_compute_blas_threshold = _saved
