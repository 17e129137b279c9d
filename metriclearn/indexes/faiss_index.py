"""``EmbeddingIndex``: a faiss index of embeddings with int64 ids, labels and metadata per id.

Metrics: ``"l2"`` (squared Euclidean distance), ``"ip"`` (inner product) and ``"cosine"`` (rows are
L2-normalised, then inner product). Kinds: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, ``"pq"`` (IVF with
product-quantised codes) or any ``faiss.index_factory`` string (see :mod:`metriclearn.indexes._factory`).

Search convention: ``search(q, k) -> (D, I)``, both (Q, min(k, len(index))): ``k`` above the index size
is clamped to it (no work or memory in proportion to a huge k). ``I`` holds the ids; ``D`` is the
squared L2 distance (ascending) for ``"l2"`` and the similarity (descending) for ``"cosine"``/``"ip"``.
Where an approximate index found fewer than k neighbours the id is −1 and the distance +inf (``"l2"``)
or −inf (``"cosine"``, ``"ip"``): the Python API pads, it does not raise.

The class composes four parts, one file each: the faiss structure (:mod:`._structure`: build, train,
search parameters), the id / label / metadata table (:mod:`._table`), the search dispatch
(:mod:`._search`: GPU copy, threaded exact flat search, faiss's own search) and persistence
(:mod:`._persist`, over the checksummed directory of :mod:`._storage`).

Example
-------
>>> import numpy as np
>>> x = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
>>> index = EmbeddingIndex(dim=2, metric="l2")
>>> index.add(x, labels=["a", "b", "c"]).tolist()
[0, 1, 2]
>>> D, I = index.search(np.array([[0.9, 0.1]], dtype=np.float32), k=2)
>>> I.tolist(), index.labels_for(I).tolist()
([[0, 2]], [['a', 'c']])
>>> index.search(np.array([[0.9, 0.1]], dtype=np.float32), k=10**9)[1].tolist()  # k clamped to the size
[[0, 2, 1]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from metriclearn._checks import check_choice, check_matrix, check_positive_int
from metriclearn._progress import progress
from metriclearn._scale import check_norm_range
from metriclearn.indexes import _factory, _gpu, _persist, _storage, _structure
from metriclearn.indexes._search import Searcher, single_step
from metriclearn.indexes._table import IdTable, as_ids
from metriclearn.indexes.exact import METRICS, normalize_rows

FORMAT, FORMAT_VERSION = _persist.FORMAT, _persist.FORMAT_VERSION
SHARDED_FORMAT = "metriclearn.ShardedIndex"  # the format of metriclearn.indexes.sharded (which builds on this class)
_ADD_CHUNK = 65536  # vectors per add() step (progress bar granularity)


class EmbeddingIndex:
    """A faiss index of ``dim``-dimensional embeddings with ids, labels and metadata.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    metric : {"cosine", "l2", "ip"}
        ``"cosine"`` L2-normalises added and query vectors (at any finite scale; zero rows stay zero and are
        similar to nothing) and ranks by inner product. ``"l2"`` and ``"ip"`` take rows of L2 norm up to
        1e18: their distances are float32.
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
        HNSW graph degree (at least 2) and search / construction beam widths.
    pq_m, pq_nbits : int
        PQ sub-quantizers (``None``: dim / 4 or the nearest divisor below) and bits per code.
    k_factor : int, optional
        Re-ranking depth: wrap the index in a faiss ``IndexRefineFlat``, which also keeps the raw vectors
        and re-ranks the top ``k·k_factor`` approximate candidates by exact distance (``None``: no
        re-ranking). :meth:`tune` chooses it for PQ kinds.
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
        k_factor: int | None = None,
        shard: bool = False,
        batch_size: int = 16384,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_choice(metric, METRICS, "metric")
        if not isinstance(kind, str) or not kind.strip():
            raise TypeError(f"kind must be one of {_factory.KINDS} or a faiss factory string, got {kind!r}")
        self.kind = kind.strip().lower() if kind.strip().lower() in _factory.KINDS else kind.strip()
        self.device = _gpu.resolve_index_device(device, self.kind)
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self._nprobe = None if nprobe is None else check_positive_int(nprobe, "nprobe")
        self.hnsw_m = check_positive_int(hnsw_m, "hnsw_m")
        if self.hnsw_m < _factory.MIN_HNSW_M:  # faiss segfaults on HNSW1 and aborts on HNSW0
            raise ValueError(f"hnsw_m must be at least {_factory.MIN_HNSW_M} (faiss crashes below it), "
                             f"got {self.hnsw_m}")
        self._ef_search = check_positive_int(ef_search, "ef_search")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.pq_m = None if pq_m is None else check_positive_int(pq_m, "pq_m")
        if self.pq_m is not None and self.dim % self.pq_m:
            raise ValueError(f"pq_m must divide dim={self.dim}, got {self.pq_m}")
        self.pq_nbits = check_positive_int(pq_nbits, "pq_nbits")
        self.k_factor = None if k_factor is None else check_positive_int(k_factor, "k_factor")
        self.shard = bool(shard)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._index: faiss.Index | None = None
        self._table = IdTable()  # ids in insertion order, with labels / metadata
        self._searcher = Searcher(self.metric, self.device, device, shard=self.shard)
        self.attrs: dict[str, Any] = {}
        self._manifest_checksum: str | None = None  # of the directory this index was loaded from / saved to
        if not (_factory.needs_nlist(self.kind) and self.nlist is None):
            self.use_structure(self.empty_structure())

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
        ivf = _structure.ivf(self._index)
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

    def empty_structure(self) -> faiss.Index:
        """A new, empty faiss structure for this kind and these parameters (what :meth:`add` fills)."""
        return _structure.build(
            self.factory or "", self.dim, self.metric, ef_construction=self.ef_construction,
            refine=self.k_factor is not None
        )

    def use_structure(self, index: faiss.Index) -> None:
        """Search ``index`` from now on (with this object's search parameters), e.g. one rebuilt by tuning or read
        from a file; it must hold exactly the ids of :attr:`table`."""
        self._index = index
        self._apply_search_params()

    def _built(self) -> faiss.Index:
        """The faiss structure; ivf/pq kinds with ``nlist=None`` build it on their first add."""
        if self._index is None:
            raise ValueError(f"kind {self.kind!r} with nlist=None holds nothing before its first add")
        return self._index

    def _apply_search_params(self) -> None:
        _structure.apply_search_params(self._index, self._nprobe, self._ef_search, self.k_factor)
        self._searcher.reset()

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's keyword parameters (what the manifest records), a new dict."""
        return {
            "nlist": self.nlist,
            "nprobe": self._nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self._ef_search,
            "ef_construction": self.ef_construction,
            "pq_m": self.pq_m,
            "pq_nbits": self.pq_nbits,
            "k_factor": self.k_factor,
            "shard": self.shard,
            "batch_size": self.batch_size,
        }

    @property
    def table(self) -> IdTable:
        """The id / label / metadata table (:class:`~metriclearn.indexes._table.IdTable`); read it, change the
        index through :meth:`add` and :meth:`remove`."""
        return self._table

    # ------------------------------------------------------------------ adding and removing
    def __len__(self) -> int:
        return len(self._table)

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
        xb = check_norm_range(check_matrix(x, "x", dim=self.dim), "x", self.metric)
        n = xb.shape[0]
        new_ids, labels_arr, meta = self._table.check_new(ids, labels, metadata, n)
        if self.metric == "cosine":
            xb = normalize_rows(xb)
        fresh = self._index is None
        if fresh:  # nlist chosen from the first add
            self.nlist = _factory.auto_nlist(n)
            self.use_structure(self.empty_structure())
        index = self._built()
        if not index.is_trained:
            try:
                _structure.train(index, xb, self.kind, self.nlist, self.pq_nbits, self.factory or "")
            except ValueError:
                if fresh:  # leave the index as it was: nlist still to be chosen
                    self.nlist, self._index = None, None
                raise
            self._apply_search_params()
        steps = range(0, n, _ADD_CHUNK)
        for i0 in progress(steps, desc="adding", unit="chunk", **single_step(steps)):
            index.add_with_ids(xb[i0 : i0 + _ADD_CHUNK], new_ids[i0 : i0 + _ADD_CHUNK])
        self._table.append(new_ids, labels_arr, meta)
        self._searcher.reset()
        self.attrs = {}
        return new_ids

    def remove(self, ids: Any) -> int:
        """Remove the vectors with these ids; return how many were removed.

        Unknown ids are a ``ValueError``; so is a kind faiss cannot remove from (HNSW).
        """
        drop = np.unique(as_ids(ids, "ids"))
        rows = self._table.rows(drop)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {drop[rows < 0][:5].tolist()}")
        if drop.size == 0:
            return 0
        try:
            # faiss's Python wrapper takes an id array; its stubs list only an IDSelector
            removed = int(self._built().remove_ids(drop))  # type: ignore[arg-type]
        except RuntimeError as exc:
            raise ValueError(
                f"kind {self.kind!r} cannot remove vectors ({_factory.faiss_reason(exc)}); "
                "rebuild the index without them instead"
            ) from exc
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        self._table.keep(keep)
        self._searcher.reset()
        self.attrs = {}
        return removed

    # ------------------------------------------------------------------ ids -> labels / metadata / vectors
    @property
    def ids(self) -> np.ndarray:
        """All ids, in insertion order (a copy)."""
        return self._table.ids.copy()

    @property
    def labels(self) -> np.ndarray | None:
        """Labels aligned with :attr:`ids` (a copy), or ``None`` for an index without labels."""
        return None if self._table.labels is None else self._table.labels.copy()

    def labels_for(self, ids: Any, missing: Any = None) -> np.ndarray:
        """Labels of ``ids`` (any shape, e.g. the ``I`` of :meth:`search`), same shape.

        Id −1 maps to ``missing`` (default −1 for integer labels, ``""`` for string labels).
        """
        return self._table.labels_for(ids, missing)

    def metadata_for(self, ids: Any) -> Any:
        """Metadata of ``ids`` as nested lists of the same shape (``None`` for id −1 or no metadata)."""
        return self._table.metadata_for(ids)

    def vectors(self, ids: Any = None) -> np.ndarray:
        """The stored vectors (n, dim) of ``ids`` (default: all, in :attr:`ids` order), float32.

        As stored: L2-normalised for ``"cosine"``; PQ/SQ codes and factory pre-transforms (e.g. PCA) give
        their lossy reconstruction. A kind faiss cannot reconstruct from is a ``ValueError``.
        """
        want = self._table.ids if ids is None else as_ids(ids, "ids")
        rows = self._table.rows(want)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {want[rows < 0][:5].tolist()}")
        if want.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return _structure.reconstruct(self._built(), want, self.kind)

    # ------------------------------------------------------------------ search
    def search(self, q: Any, k: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored vectors of each query row: ``(D, I)``, both (Q, min(k, len(self))).

        ``I`` holds ids (−1 where an approximate index found fewer than k); ``D`` squared L2 distances
        (ascending) for ``"l2"``, similarities (descending) for ``"cosine"``/``"ip"``, ±inf where the id
        is −1. ``k`` above the index size is clamped to it.
        """
        xq = check_norm_range(check_matrix(q, "queries", dim=self.dim), "queries", self.metric)
        k = check_positive_int(k, "k")
        bs = self.batch_size if batch_size is None else check_positive_int(batch_size, "batch_size")
        if self.metric == "cosine":
            xq = normalize_rows(xq)
        return self._searcher.search(self._index, xq, k, bs, self.factory)

    # ------------------------------------------------------------------ tuning
    def tune(
        self,
        target_recall: float,
        k: int = 10,
        queries: Any = None,
        *,
        vectors: Any = None,
        n_queries: int | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Choose the cheapest parameters that reach ``target_recall`` (recall@k against exact search).

        Measures recall@k on held-out queries — ``queries`` (q, dim), or a random sample of ``n_queries``
        stored vectors (default min(5000, max(50, n/10))) excluded from the ground-truth set — and sets
        the cheapest search parameter (``nprobe``, ``ef_search``) reaching the target, after trying a few
        build parameters (``nlist`` for ivf, ``hnsw_m`` for hnsw, the re-ranking depth ``k_factor`` for PQ)
        and keeping the fastest; the index is rebuilt when those change. Kinds that store lossy codes
        (``pq``, factory strings) need ``vectors=`` (the added embeddings, in :attr:`ids` order).
        A :class:`~metriclearn.indexes.tuning.TuningWarning` says when no setting reaches the target (the most
        accurate is kept) and when flat search is faster. Returns the record also stored in
        ``attrs["tuning"]``: ``recall_at_k`` and its standard error ``recall_se``, ``qps``, ``flat_qps``,
        ``speed_vs_flat``, ``params``, ``held_out_queries``, ``reached``, ``flat_faster``, ``tried``. See
        :mod:`metriclearn.indexes.tuning` for the method.
        """
        from metriclearn.indexes.tuning import tune_index

        return tune_index(self, target_recall, k, queries, vectors=vectors, n_queries=n_queries, seed=seed)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to directory ``path`` (created if needed); every file atomically.

        ``path/index.faiss`` is a plain faiss index (``faiss.read_index`` reads it; for ``"cosine"`` it
        holds normalised vectors under inner product), beside ``ids.npy``, ``labels.npy``,
        ``metadata.json`` and the manifest ``index.json`` with SHA-256 checksums of them all.
        """
        self._manifest_checksum = _persist.save(self, path)

    def save_attrs(self, path: str | os.PathLike[str]) -> None:
        """Store :attr:`attrs` in the directory this index was loaded from or saved to: only its manifest is rewritten.

        For metadata added after loading (a calibration, a note): the data files are not rewritten, so it
        costs the same for a large index as for a small one. A ``ValueError`` when the vectors, ids or
        parameters changed since loading (use :meth:`save`), or the directory was saved again since.
        """
        self._manifest_checksum = _persist.save_attrs(self, path, self._manifest_checksum)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto") -> EmbeddingIndex:
        """Read an index saved by :meth:`save`, after checking every file against its checksum.

        A sharded directory (``index build --shards N``) is a ``ValueError`` that says to open it with
        :func:`metriclearn.indexes.load_index` (which opens either kind, by the manifest's format).
        """
        if _storage.manifest_format(path) == SHARDED_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is a sharded index directory: open it with "
                             "metriclearn.indexes.load_index (or ShardedIndex.load)")
        index, checksum = _persist.load(cls, path, device)
        index._manifest_checksum = checksum
        return index
