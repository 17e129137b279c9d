"""Search dispatch for an :class:`~metriclearn.indexes.EmbeddingIndex`: which path answers a query batch.

Three paths, chosen per batch:

1. a GPU copy of the index (faiss-gpu, ``device="cuda"``, k and nprobe within faiss's GPU limit), made
   on first use and dropped whenever the index changes;
2. a flat CPU index: :func:`metriclearn.indexes._flat_search.flat_search` (threaded, BLAS even for small
   batches), its rows mapped back to ids through the ``IndexIDMap``;
3. anything else: faiss's own ``search``.

Queries are searched ``batch_size`` rows at a time (a progress bar when there are several batches).
``k`` is clamped to the number of stored vectors, so neither the work nor the memory grows with a huge
``k``; neighbours an approximate index did not find get id −1 and distance ±inf.

>>> import numpy as np
>>> from metriclearn.indexes import _structure
>>> index = _structure.build("Flat", 2, "l2", ef_construction=40)
>>> index.add_with_ids(np.eye(2, dtype=np.float32), np.array([7, 9]))
>>> D, I = Searcher("l2", "cpu", "cpu", shard=False).search(index, np.eye(2, dtype=np.float32)[:1], 5, 16, "Flat")
>>> I.tolist()  # k=5 clamped to the 2 stored vectors
[[7, 9]]
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import faiss
import numpy as np

from metriclearn._progress import progress
from metriclearn.indexes import _factory, _flat_search, _gpu, _structure
from metriclearn.indexes.exact import missing_distance


class Searcher:
    """Searches a faiss structure; caches what it derives from it (GPU copy, ‖x‖²) until :meth:`reset`."""

    def __init__(self, metric: str, device: str, requested_device: str, *, shard: bool) -> None:
        self.metric, self.device, self.requested_device, self.shard = metric, device, requested_device, shard
        self.gpu_unsupported = False  # faiss could not copy this index to the GPU: search on CPU
        self.reset()

    def reset(self) -> None:
        """Forget everything derived from the stored vectors or the search parameters."""
        self._gpu_index: faiss.Index | None = None
        self._sq_norms: np.ndarray | None = None  # ‖x‖² of the flat index's rows ("l2")

    def search(
        self, index: faiss.Index | None, xq: np.ndarray, k: int, batch_size: int, factory: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of shape (Q, min(k, ntotal)) for prepared (normalised for cosine) queries ``xq``.

        ``index=None`` (an ivf/pq index before its first add) holds nothing: (Q, 0).
        """
        k = min(k, 0 if index is None else int(index.ntotal))  # no work, no memory in proportion to a huge k
        D = np.full((xq.shape[0], k), missing_distance(self.metric), dtype=np.float32)
        I = np.full((xq.shape[0], k), -1, dtype=np.int64)
        if k == 0 or index is None:
            return D, I
        steps = range(0, xq.shape[0], batch_size)
        for i0 in progress(steps, desc="searching", unit="batch", **single_step(steps)):
            D[i0 : i0 + batch_size], I[i0 : i0 + batch_size] = self._batch(index, xq[i0 : i0 + batch_size], k, factory)
        D[I < 0] = missing_distance(self.metric)  # faiss pads with ±FLT_MAX
        return D, I

    def _batch(self, index: faiss.Index, xq: np.ndarray, k: int, factory: str | None) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._gpu(index, k, factory)
        if gpu is not None:
            return gpu.search(xq, k)
        flat = self._flat(index)
        if flat is None:
            return index.search(xq, k)
        n, d = index.ntotal, index.d
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)  # (N, d) view, no copy
        l2 = self.metric == "l2"
        if l2 and self._sq_norms is None:
            self._sq_norms = np.einsum("ij,ij->i", xb, xb)  # (N,)
        D, rows = _flat_search.flat_search(xb, xq, k, l2=l2, xb_sq_norms=self._sq_norms)
        id_map = faiss.rev_swig_ptr(cast(faiss.IndexIDMap, index).id_map.data(), n)  # (N,) faiss row -> id
        return D, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)

    @staticmethod
    def _flat(index: faiss.Index) -> faiss.IndexFlat | None:
        """The exact flat index inside ``index`` (searched by our threaded path), or ``None``."""
        flat = _structure.inner(index)
        return flat if isinstance(flat, faiss.IndexFlat) else None

    def _gpu(self, index: faiss.Index, k: int, factory: str | None) -> faiss.Index | None:
        """The GPU copy to search with, or ``None`` to search on CPU."""
        part = _structure.ivf(index)
        too_large = k > _gpu.GPU_MAX_K or (part is not None and part.nprobe > _gpu.GPU_MAX_K)
        if self.device != "cuda" or too_large or self.gpu_unsupported:
            return None
        if self._gpu_index is None:
            try:
                self._gpu_index = _gpu.to_gpus(index, shard=self.shard)
            except RuntimeError as exc:
                reason = f"faiss cannot put {factory!r} on the GPU: {_factory.faiss_reason(exc)}"
                if self.requested_device == "cuda":
                    raise ValueError(f"{reason}; use device='cpu' or 'auto'") from exc
                warnings.warn(f"{reason}; searching on CPU", stacklevel=5)
                self.gpu_unsupported = True
        return self._gpu_index


def single_step(steps: range) -> dict[str, Any]:
    """Progress-bar kwargs: no bar for a single step (otherwise tqdm's own TTY / quiet logic)."""
    return {"disable": True} if len(steps) <= 1 else {}
