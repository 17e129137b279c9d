"""``EmbeddingIndex``: a faiss index of embeddings with int64 ids, labels and metadata per id.

Metrics: ``"l2"`` (squared Euclidean distance), ``"ip"`` (inner product) and ``"cosine"`` (rows are
L2-normalised, then inner product). Kinds: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, ``"pq"`` (IVF with
product-quantised codes) or any ``faiss.index_factory`` string (see :mod:`metriclearn.indexes._factory`).

Search convention: ``search(q, k) -> (D, I)``. ``I`` holds the ids; ``D`` is the squared L2 distance
(ascending) for ``"l2"`` and the similarity (descending) for ``"cosine"``/``"ip"``. Where fewer than k
neighbours exist (a small index, or an approximate index that found fewer) the id is −1 and the
distance +inf (``"l2"``) or −inf (``"cosine"``, ``"ip"``): the Python API pads, it does not raise.

Speed: a flat CPU index is searched by :func:`metriclearn.indexes._flat_search.flat_search`: one database
slice per thread, each through faiss's own exhaustive k-NN, with the BLAS path forced on for small
batches that faiss would otherwise scan without BLAS (Q·d < ``distance_compute_blas_threshold``).
Same neighbours as ``faiss_index.search``, up to float round-off and ties.

Example
-------
>>> import numpy as np
>>> x = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
>>> index = EmbeddingIndex(dim=2, metric="l2")
>>> index.add(x, labels=["a", "b", "c"]).tolist()
[0, 1, 2]
>>> D, I = index.search(np.array([[0.9, 0.1]], dtype=np.float32), k=4)
>>> I.tolist(), index.labels_for(I).tolist()
([[0, 2, 1, -1]], [['a', 'c', 'b', '']])
>>> D[0, -1]
np.float32(inf)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from metriclearn._checks import check_choice, check_labels, check_matrix, check_positive_int
from metriclearn._progress import progress
from metriclearn.indexes import _flat_search, _factory, _gpu, _storage
from metriclearn.indexes.exact import METRICS, missing_distance, normalize_rows

FORMAT = "metriclearn.EmbeddingIndex"
FORMAT_VERSION = 1
_FAISS_FILE, _IDS_FILE, _LABELS_FILE, _METADATA_FILE = "index.faiss", "ids.npy", "labels.npy", "metadata.json"
_ADD_CHUNK = 65536  # vectors per add() step (progress bar granularity)


class EmbeddingIndex:
    """A faiss index of ``dim``-dimensional embeddings with ids, labels and metadata.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    metric : {"cosine", "l2", "ip"}
        ``"cosine"`` L2-normalises added and query vectors and ranks by inner product.
    kind : {"flat", "ivf", "hnsw", "pq"} or str
        Index structure, or any faiss factory string (e.g. ``"IVF256,SQ8"``, ``"PQ16"``).
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` searches on every visible GPU when faiss-gpu is installed (not for HNSW, nor for
        k > 2048), else on CPU. ``"cuda"`` without a GPU is a ``ValueError``.
    nlist : int, optional
        Inverted lists for ``"ivf"``/``"pq"``; ``None`` picks ≈ 4·√n from the first add.
    nprobe : int, optional
        Lists scanned per query (IVF kinds); ``None`` means max(8, √nlist). ``nprobe >= nlist`` is exact.
    hnsw_m, ef_search, ef_construction : int
        HNSW graph degree and search / construction beam widths.
    pq_m, pq_nbits : int
        PQ sub-quantizers (``None``: dim / 4 or the nearest divisor below) and bits per code.
    shard : bool
        With several GPUs: split the index across them (True) instead of replicating it (False).
    batch_size : int
        Queries per search step; larger query sets are searched in batches with a progress bar.

    Attributes
    ----------
    attrs : dict
        JSON-serialisable facts about the stored vectors, saved in the checksummed manifest (for example
        ``"model_fingerprint"``, ``"tuning"``, ``"calibration"``). ``add`` and ``remove`` clear it: what it
        says described the vectors as they were.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        kind: str = "flat",
        device: str = "auto",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 40,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        shard: bool = False,
        batch_size: int = 16384,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_choice(metric, METRICS, "metric")
        if not isinstance(kind, str) or not kind.strip():
            raise TypeError(f"kind must be one of {_factory.KINDS} or a faiss factory string, got {kind!r}")
        self.kind = kind.strip().lower() if kind.strip().lower() in _factory.KINDS else kind.strip()
        self._requested_device = device
        self.device = _gpu.resolve_device(device, self.kind)
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self._nprobe = None if nprobe is None else check_positive_int(nprobe, "nprobe")
        self.hnsw_m = check_positive_int(hnsw_m, "hnsw_m")
        self._ef_search = check_positive_int(ef_search, "ef_search")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.pq_m = None if pq_m is None else check_positive_int(pq_m, "pq_m")
        if self.pq_m is not None and self.dim % self.pq_m:
            raise ValueError(f"pq_m must divide dim={self.dim}, got {self.pq_m}")
        self.pq_nbits = check_positive_int(pq_nbits, "pq_nbits")
        self.shard = bool(shard)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._index: faiss.Index | None = None
        self._ids = np.empty(0, dtype=np.int64)  # insertion order, aligned with labels/metadata
        self._labels: np.ndarray | None = None
        self._metadata: list[Any] | None = None
        self._has_labels: bool | None = None  # decided by the first add
        self._next_id = 0
        self._gpu_unsupported = False  # faiss could not copy this index to the GPU: search on CPU
        self.attrs: dict[str, Any] = {}
        self._invalidate()
        if not (_factory.needs_nlist(self.kind) and self.nlist is None):
            self._index = self._build()

    # ------------------------------------------------------------------ structure
    @property
    def factory(self) -> str | None:
        """The faiss factory string (``None`` until an ``ivf``/``pq`` index with ``nlist=None`` is built)."""
        if _factory.needs_nlist(self.kind) and self.nlist is None:
            return None
        return _factory.factory_string(
            self.kind, self.dim, nlist=self.nlist, hnsw_m=self.hnsw_m, pq_m=self.pq_m, pq_nbits=self.pq_nbits
        )

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The CPU faiss index (ids inside it are the external ids), ``None`` before it is built."""
        return self._index

    @property
    def is_trained(self) -> bool:
        """Whether the index needs no more training (flat and HNSW never do)."""
        return self._index is not None and bool(self._index.is_trained)

    @property
    def nprobe(self) -> int | None:
        """Inverted lists scanned per query (IVF kinds), else ``None``. Settable."""
        ivf = self._ivf()
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = check_positive_int(value, "nprobe")
        self._apply_search_params()

    @property
    def ef_search(self) -> int:
        """HNSW search beam width (ignored by other kinds). Settable."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = check_positive_int(value, "ef_search")
        self._apply_search_params()

    def _build(self) -> faiss.Index:
        """A new, empty faiss index for this kind; ids are native for IVF kinds, an IndexIDMap otherwise."""
        base = _factory.build(self.factory or "", self.dim, self.metric)
        if faiss.try_extract_index_ivf(base) is not None:
            index = base
        else:
            index = faiss.IndexIDMap(base)
            base.this.disown()  # the IDMap now owns (and frees) the wrapped index
            index.own_fields = True
        hnsw = self._hnsw(index)
        if hnsw is not None:
            hnsw.hnsw.efConstruction = self.ef_construction
        self._apply_search_params(index)
        return index

    def _inner(self, index: faiss.Index | None = None) -> faiss.Index | None:
        """The index inside the IDMap wrapper (or the index itself for IVF kinds)."""
        index = self._index if index is None else index
        if isinstance(index, faiss.IndexIDMap):
            return faiss.downcast_index(index.index)
        return index

    def _ivf(self, index: faiss.Index | None = None) -> Any:
        index = self._index if index is None else index
        return None if index is None else faiss.try_extract_index_ivf(index)

    def _hnsw(self, index: faiss.Index | None = None) -> Any:
        inner = self._inner(index)
        return inner if isinstance(inner, faiss.IndexHNSW) else None

    def _apply_search_params(self, index: faiss.Index | None = None) -> None:
        index = self._index if index is None else index
        ivf = self._ivf(index)
        if ivf is not None:
            nprobe = self._nprobe if self._nprobe is not None else max(8, round(math.sqrt(ivf.nlist)))
            ivf.nprobe = max(1, min(nprobe, ivf.nlist))
        hnsw = self._hnsw(index)
        if hnsw is not None:
            hnsw.hnsw.efSearch = self._ef_search
        self._gpu_index = None

    def _invalidate(self) -> None:
        """Forget everything derived from the stored vectors (after add / remove / load)."""
        self._gpu_index: faiss.Index | None = None
        self._order: np.ndarray | None = None  # argsort of self._ids, for id -> row lookups
        self._sq_norms: np.ndarray | None = None  # ‖x‖² of the flat index's rows ("l2")

    # ------------------------------------------------------------------ adding and removing
    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, "
            f"device={self.device!r}, size={len(self)})"
        )

    def add(
        self,
        x: Any,
        labels: Any = None,
        ids: Any = None,
        metadata: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Add the rows of ``x`` (n, dim); return their int64 ids.

        ``ids=None`` numbers them on from the largest id ever added. ``labels`` (n,) ints or strings are
        required on every add once the first add had them, and refused if it had not. ``metadata`` is a
        sequence of n JSON-serialisable objects. IVF/PQ kinds train on the first add's vectors.
        """
        xb = check_matrix(x, "x", dim=self.dim)
        n = xb.shape[0]
        labels_arr = None if labels is None else _as_labels(labels, n)
        self._check_labels_consistent(labels_arr)
        new_ids = self._new_ids(ids, n)
        meta = _as_metadata(metadata, n)
        if self.metric == "cosine":
            xb = normalize_rows(xb)
        fresh = self._index is None
        if fresh:  # nlist chosen from the first add
            self.nlist = _factory.auto_nlist(n)
            self._index = self._build()
        if not self._index.is_trained:
            try:
                self._train(xb)
            except ValueError:
                if fresh:  # leave the index as it was: nlist still to be chosen
                    self.nlist, self._index = None, None
                raise
        steps = range(0, n, _ADD_CHUNK)
        for i0 in progress(steps, desc="adding", unit="chunk", **_single(steps)):
            self._index.add_with_ids(xb[i0 : i0 + _ADD_CHUNK], new_ids[i0 : i0 + _ADD_CHUNK])
        old = len(self)
        self._ids = np.concatenate([self._ids, new_ids])
        if labels_arr is not None:
            self._labels = labels_arr if self._labels is None else np.concatenate([self._labels, labels_arr])
        if meta is not None or self._metadata is not None:
            self._metadata = (self._metadata or [None] * old) + (meta or [None] * n)
        self._has_labels = labels_arr is not None
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        self._invalidate()
        self.attrs = {}
        return new_ids

    def _check_labels_consistent(self, labels: np.ndarray | None) -> None:
        if self._has_labels is None:
            return
        if self._has_labels and labels is None:
            raise ValueError("this index holds labels: add() needs labels for the new vectors too")
        if not self._has_labels and labels is not None:
            raise ValueError("this index was built without labels: add() cannot start adding them")
        if labels is not None and self._labels is not None and labels.dtype.kind != self._labels.dtype.kind:
            kind = "str" if self._labels.dtype.kind == "U" else "int"
            raise TypeError(f"labels must be of the index's label type {kind}, got dtype {labels.dtype}")

    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        new = _as_ids(ids, "ids")
        if new.shape[0] != n:
            raise ValueError(f"ids has {new.shape[0]} entries but x has {n} rows")
        if (new < 0).any():
            raise ValueError(f"ids must be non-negative (−1 marks a missing neighbour), got {int(new.min())}")
        uniq, counts = np.unique(new, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids must be unique, got duplicates {uniq[counts > 1][:5].tolist()}")
        taken = new[np.isin(new, self._ids)]
        if taken.size:
            raise ValueError(f"ids already in the index: {taken[:5].tolist()}")
        return new

    def _train(self, xb: np.ndarray) -> None:
        need = _factory.min_training_points(self.kind, self.nlist, self.pq_nbits)
        if xb.shape[0] < need:
            pq = self.kind == "pq"
            why = f"nlist={self.nlist}" + (f", 2**pq_nbits={2**self.pq_nbits} codes" if pq else "")
            raise ValueError(
                f"kind {self.kind!r} needs at least {need} vectors to train ({why}), got {xb.shape[0]}; "
                f"add more vectors in the first call or lower {'nlist/pq_nbits' if pq else 'nlist'}"
            )
        ivf = self._ivf()
        if self.kind == "pq" and ivf is not None:
            # faiss prints one stderr line per sub-quantizer when codebooks see < 39 points per code;
            # say it once, as a Python warning, instead
            pq = faiss.downcast_index(ivf).pq
            pq.cp.min_points_per_centroid = 1
            if xb.shape[0] < 39 * 2**self.pq_nbits:
                warnings.warn(
                    f"PQ codebooks trained on {xb.shape[0]} vectors; faiss recommends at least "
                    f"{39 * 2**self.pq_nbits} (39 per code) for pq_nbits={self.pq_nbits}",
                    stacklevel=3,
                )
        try:
            self._index.train(xb)
        except RuntimeError as exc:
            raise ValueError(
                f"could not train index {self.factory!r} on {xb.shape[0]} vectors: {_factory.faiss_reason(exc)}"
            ) from exc
        self._apply_search_params()

    def remove(self, ids: Any) -> int:
        """Remove the vectors with these ids; return how many were removed.

        Unknown ids are a ``ValueError``; so is a kind faiss cannot remove from (HNSW).
        """
        drop = np.unique(_as_ids(ids, "ids"))
        rows = self._rows(drop)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {drop[rows < 0][:5].tolist()}")
        if drop.size == 0:
            return 0
        try:
            removed = int(self._index.remove_ids(drop))
        except RuntimeError as exc:
            raise ValueError(
                f"kind {self.kind!r} cannot remove vectors ({_factory.faiss_reason(exc)}); "
                "rebuild the index without them instead"
            ) from exc
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        self._ids = self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._metadata is not None:
            self._metadata = [m for m, k in zip(self._metadata, keep, strict=True) if k]
        self._invalidate()
        self.attrs = {}
        return removed

    # ------------------------------------------------------------------ ids -> labels / metadata
    @property
    def ids(self) -> np.ndarray:
        """All ids, in insertion order (a copy)."""
        return self._ids.copy()

    @property
    def labels(self) -> np.ndarray | None:
        """Labels aligned with :attr:`ids` (a copy), or ``None`` for an index without labels."""
        return None if self._labels is None else self._labels.copy()

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in the insertion-order table (−1 where the id is not in the index)."""
        if len(self) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        if self._order is None:
            self._order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[self._order]
        j = np.minimum(np.searchsorted(sorted_ids, ids), len(self) - 1)  # ids.shape
        return np.where(sorted_ids[j] == ids, self._order[j], -1)

    def _rows_for(self, ids: Any) -> np.ndarray:
        arr = _as_ids(ids, "ids", ndim=None)
        rows = self._rows(arr)
        unknown = arr[(rows < 0) & (arr != -1)]
        if unknown.size:
            raise ValueError(f"ids not in the index: {unknown[:5].tolist()}")
        return rows

    def labels_for(self, ids: Any, missing: Any = None) -> np.ndarray:
        """Labels of ``ids`` (any shape, e.g. the ``I`` of :meth:`search`), same shape.

        Id −1 maps to ``missing`` (default −1 for integer labels, ``""`` for string labels).
        """
        if self._labels is None:
            raise ValueError("this index holds no labels (add vectors with labels=...)")
        rows = self._rows_for(ids)
        fill = missing if missing is not None else ("" if self._labels.dtype.kind == "U" else -1)
        out = self._labels[np.maximum(rows, 0)] if len(self) else np.empty(rows.shape, self._labels.dtype)
        out = out.astype(np.result_type(out.dtype, np.asarray(fill).dtype), copy=False)
        out[rows < 0] = fill
        return out

    def metadata_for(self, ids: Any) -> Any:
        """Metadata of ``ids`` as nested lists of the same shape (``None`` for id −1 or no metadata)."""
        rows = self._rows_for(ids)
        meta = self._metadata
        pick = np.vectorize(lambda r: None if r < 0 or meta is None else meta[r], otypes=[object])
        return pick(rows).tolist() if rows.size else rows.tolist()

    def vectors(self, ids: Any = None) -> np.ndarray:
        """The stored vectors (n, dim) of ``ids`` (default: all, in :attr:`ids` order), float32.

        As stored: L2-normalised for ``"cosine"``; PQ/SQ codes and factory pre-transforms (e.g. PCA) give
        their lossy reconstruction. A kind faiss cannot reconstruct from is a ``ValueError``.
        """
        want = self._ids if ids is None else _as_ids(ids, "ids")
        rows = self._rows(want)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {want[rows < 0][:5].tolist()}")
        if want.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            if isinstance(self._index, faiss.IndexIDMap):  # the wrapped index's rows are positions in id_map
                id_map = faiss.vector_to_array(self._index.id_map)  # (N,)
                order = np.argsort(id_map, kind="stable")
                positions = order[np.searchsorted(id_map[order], want)]  # (n,)
                out = self._inner().reconstruct_batch(positions)
            else:  # IVF: ids live in the inverted lists; faiss keeps an id -> entry hash table from now on
                ivf = self._ivf()
                if ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                out = self._index.reconstruct_batch(want)
        except RuntimeError as exc:
            raise ValueError(f"kind {self.kind!r} cannot give back its vectors ({_factory.faiss_reason(exc)})") from exc
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------ search
    def search(self, q: Any, k: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored vectors of each query row: ``(D, I)``, both (Q, k).

        ``I`` holds ids (−1 where fewer than k were found); ``D`` squared L2 distances (ascending) for
        ``"l2"``, similarities (descending) for ``"cosine"``/``"ip"``, ±inf where the id is −1.
        """
        xq = check_matrix(q, "queries", dim=self.dim)
        k = check_positive_int(k, "k")
        bs = self.batch_size if batch_size is None else check_positive_int(batch_size, "batch_size")
        if self.metric == "cosine":
            xq = normalize_rows(xq)
        D = np.full((xq.shape[0], k), missing_distance(self.metric), dtype=np.float32)
        I = np.full((xq.shape[0], k), -1, dtype=np.int64)
        if len(self) == 0:
            return D, I
        steps = range(0, xq.shape[0], bs)
        for i0 in progress(steps, desc="searching", unit="batch", **_single(steps)):
            D[i0 : i0 + bs], I[i0 : i0 + bs] = self._search_batch(xq[i0 : i0 + bs], k)
        D[I < 0] = missing_distance(self.metric)  # faiss pads with ±FLT_MAX
        return D, I

    def _search_batch(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._gpu(k)
        if gpu is not None:
            return gpu.search(xq, k)
        flat = self._inner()
        if not isinstance(flat, faiss.IndexFlat):
            return self._index.search(xq, k)
        n = self._index.ntotal
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)  # (N, d) view, no copy
        l2 = self.metric == "l2"
        if l2 and self._sq_norms is None:
            self._sq_norms = np.einsum("ij,ij->i", xb, xb)  # (N,)
        D, rows = _flat_search.flat_search(xb, xq, k, l2=l2, xb_sq_norms=self._sq_norms)
        id_map = faiss.rev_swig_ptr(self._index.id_map.data(), n)  # (N,) faiss row -> id
        return D, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)

    def _gpu(self, k: int) -> faiss.Index | None:
        """The GPU copy to search with, or ``None`` to search on CPU."""
        ivf = self._ivf()
        too_large = k > _gpu.GPU_MAX_K or (ivf is not None and ivf.nprobe > _gpu.GPU_MAX_K)
        if self.device != "cuda" or too_large or self._gpu_unsupported:
            return None
        if self._gpu_index is None:
            try:
                self._gpu_index = _gpu.to_gpus(self._index, shard=self.shard)
            except RuntimeError as exc:
                reason = f"faiss cannot put {self.factory!r} on the GPU: {_factory.faiss_reason(exc)}"
                if self._requested_device == "cuda":
                    raise ValueError(f"{reason}; use device='cpu' or 'auto'") from exc
                warnings.warn(f"{reason}; searching on CPU", stacklevel=4)
                self._gpu_unsupported = True
        return self._gpu_index

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to directory ``path`` (created if needed); every file atomically.

        ``path/index.faiss`` is a plain faiss index (``faiss.read_index`` reads it; for ``"cosine"`` it
        holds normalised vectors under inner product), beside ``ids.npy``, ``labels.npy``,
        ``metadata.json`` and the manifest ``index.json`` with SHA-256 checksums of them all.
        """
        if self._index is None:
            raise ValueError(f"nothing to save: kind {self.kind!r} with nlist=None is built on the first add")
        writers = {
            _FAISS_FILE: lambda p: faiss.write_index(self._index, p),
            _IDS_FILE: lambda p: _write_npy(p, self._ids),
        }
        if self._labels is not None:
            writers[_LABELS_FILE] = lambda p: _write_npy(p, self._labels)
        if self._metadata is not None:
            writers[_METADATA_FILE] = lambda p: Path(p).write_text(json.dumps(self._metadata), encoding="utf-8")
        fields = {
            "dim": self.dim,
            "metric": self.metric,
            "kind": self.kind,
            "factory": self.factory,
            "count": len(self),
            "next_id": self._next_id,
            "has_labels": self._has_labels,
            "attrs": _json_attrs(self.attrs),
            "params": {
                "nlist": self.nlist,
                "nprobe": self._nprobe,
                "hnsw_m": self.hnsw_m,
                "ef_search": self._ef_search,
                "ef_construction": self.ef_construction,
                "pq_m": self.pq_m,
                "pq_nbits": self.pq_nbits,
                "shard": self.shard,
                "batch_size": self.batch_size,
            },
        }
        stale = (_LABELS_FILE, _METADATA_FILE)
        _storage.write_directory(path, writers, fields, FORMAT, FORMAT_VERSION, stale=stale)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto") -> EmbeddingIndex:
        """Read an index saved by :meth:`save`, after checking every file against its checksum.

        A sharded directory (``index build --shards N``) gives a :class:`~metriclearn.indexes.sharded.ShardedIndex`.
        """
        from metriclearn.indexes import sharded  # the sharded format (it builds on this class)

        if sharded.is_sharded(path):
            return sharded.ShardedIndex.load(path, device=device)  # type: ignore[return-value]
        manifest = _storage.read_directory(path, FORMAT, FORMAT_VERSION)
        root = Path(path)
        damaged = f"index directory {root} is damaged"
        try:
            obj = cls(manifest["dim"], manifest["metric"], manifest["kind"], device, **manifest["params"])
            index = faiss.read_index(str(root / _FAISS_FILE))
            ids = np.load(root / _IDS_FILE, allow_pickle=False)
            labels = np.load(root / _LABELS_FILE, allow_pickle=False) if _LABELS_FILE in manifest["files"] else None
            metadata = None
            if _METADATA_FILE in manifest["files"]:
                metadata = json.loads((root / _METADATA_FILE).read_text(encoding="utf-8"))
        except (KeyError, TypeError, RuntimeError, OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{damaged}: {_factory.faiss_reason(exc)}") from exc
        n = manifest["count"]
        sizes = {"index.faiss": index.ntotal, "ids.npy": len(ids)}
        if labels is not None:
            sizes["labels.npy"] = len(labels)
        if metadata is not None:
            sizes["metadata.json"] = len(metadata)
        wrong = [f"{name} holds {size}" for name, size in sizes.items() if size != n]
        if index.d != obj.dim or wrong or index.metric_type != _factory.METRIC_TYPES[obj.metric]:
            raise ValueError(f"{damaged}: its files disagree (manifest: {n} vectors of dim {obj.dim}; {wrong})")
        obj._index, obj._ids, obj._labels, obj._metadata = index, ids.astype(np.int64), labels, metadata
        obj._has_labels, obj._next_id = manifest["has_labels"], int(manifest["next_id"])
        obj.attrs = dict(manifest.get("attrs") or {})
        obj._invalidate()
        obj._apply_search_params()
        return obj


def _single(steps: range) -> dict[str, Any]:
    """Progress-bar kwargs: no bar for a single step (otherwise tqdm's own TTY / quiet logic)."""
    return {"disable": True} if len(steps) <= 1 else {}


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(fh, array, allow_pickle=False)


def _as_ids(ids: Any, name: str, ndim: int | None = 1) -> np.ndarray:
    arr = np.asarray(ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _as_labels(labels: Any, n: int) -> np.ndarray:
    arr = check_labels(labels, "labels", n=n)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype == object and all(isinstance(v, str) for v in arr):
        return arr.astype(str)
    raise TypeError(f"labels must be integers or strings, got dtype {arr.dtype}")


def _json_attrs(attrs: Any) -> dict[str, Any]:
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON-serialisable values, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(attrs))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attrs must be JSON-serialisable: {exc}") from exc


def _as_metadata(metadata: Sequence[Any] | None, n: int) -> list[Any] | None:
    if metadata is None:
        return None
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a sequence of {n} JSON-serialisable objects, got {type(metadata).__name__}")
    items = list(metadata)
    if len(items) != n:
        raise ValueError(f"metadata has {len(items)} entries but x has {n} rows")
    try:
        return json.loads(json.dumps(items))  # a JSON round trip: what save/load will give back
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
