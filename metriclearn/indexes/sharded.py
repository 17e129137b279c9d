"""``ShardedIndex``: an index directory split into N shards with global ids, searched shard by shard.

Layout (``metriclearn index build ... --shards N``)::

    DIR/index.json       the one sidecar: format "metriclearn.ShardedIndex", dim, metric, kind, count, per
                         shard its directory and size, and the SHA-256 of every shard's manifest
    DIR/shard-000/       an EmbeddingIndex directory (index.faiss, ids.npy, labels.npy, index.json with
    DIR/shard-001/ ...   the SHA-256 of each of its files); ids are global: shard r holds rows of one range

Shard r holds the rows ``np.array_split(range(n), N)[r]``. Trained kinds (IVF, PQ) are trained once on all
rows and every shard keeps that training (a copy of the whole index with the other rows removed), so the
union of the shards' candidates is exactly the unsharded index's; HNSW shards each build their own graph.

Search: each shard returns its k best (``EmbeddingIndex.search``) and faiss's ``ResultHeap`` keeps the k best
of all shards (min-heap for similarities, max-heap for distances), the merge faiss's own ``IndexShards`` and
``merge_knn_results`` do. For flat shards the result is the unsharded one, up to float round-off and ties.

Under ``torchrun`` (a torch.distributed process group) :meth:`ShardedIndex.load` gives rank r the shards
``r, r + W, ...`` (W = world size; with W = N, shard r). :meth:`~ShardedIndex.search` is then collective:
rank 0's queries are broadcast, every rank searches its shards, the (Q, k) results are all-gathered and
merged, and every rank holds the same answer. Ids and labels of every shard (small) are on every rank.

Example
-------
>>> import numpy as np, tempfile
>>> x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
>>> sharded = ShardedIndex.build(x, labels=np.arange(10) % 3, num_shards=3, metric="l2", device="cpu")
>>> [len(s) for s in sharded.shards], len(sharded)
([4, 3, 3], 10)
>>> D, I = sharded.search(x[:2], k=2)
>>> I[:, 0].tolist(), sharded.labels_for(I[:, :1]).ravel().tolist()
([0, 1], [0, 1])
>>> folder = tempfile.mkdtemp() + "/idx"
>>> sharded.save(folder)
>>> is_sharded(folder), np.array_equal(ShardedIndex.load(folder, device="cpu").search(x[:2], 2)[1], I)
(True, True)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from metriclearn import _distributed
from metriclearn._atomic import sha256
from metriclearn._checks import check_matrix, check_positive_int
from metriclearn.indexes import _storage
from metriclearn.indexes._table import IdTable
from metriclearn.indexes.exact import missing_distance
from metriclearn.indexes.faiss_index import SHARDED_FORMAT, EmbeddingIndex

FORMAT = SHARDED_FORMAT
FORMAT_VERSION = 1


def shard_name(r: int) -> str:
    """The directory of shard ``r`` inside a sharded index directory."""
    return f"shard-{r:03d}"


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :meth:`ShardedIndex.save` (by its manifest's format)."""
    return _storage.manifest_format(path) == FORMAT


class ShardedIndex:
    """N :class:`EmbeddingIndex` shards with global ids, searched as one index.

    Build with :meth:`build`, or :meth:`load` a directory; ``shards[r]`` is ``None`` for a shard another
    rank holds. ``ids``, ``labels``, ``labels_for`` and ``len`` always cover every shard.
    """

    def __init__(
        self,
        shards: Sequence[EmbeddingIndex | None],
        ids: Sequence[np.ndarray],
        labels: Sequence[np.ndarray | None] | None,
        dim: int,
        metric: str,
        kind: str,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        if not shards:
            raise ValueError("a ShardedIndex needs at least one shard, got none")
        self.shards = list(shards)
        self._shard_ids = [np.asarray(i, dtype=np.int64) for i in ids]
        self._shard_labels = None if labels is None else [np.asarray(lab) for lab in labels]
        self.dim, self.metric, self.kind = dim, metric, kind
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._manifest_checksum: str | None = None  # of the directory this index was loaded from / saved to
        self._table = IdTable()  # every shard's ids and labels: the id -> label look-up of EmbeddingIndex
        every = np.concatenate(self._shard_ids)
        self._table.restore(every, None if self._shard_labels is None else np.concatenate(self._shard_labels), None,
                            labels is not None, int(every.max()) + 1 if every.size else 0)
        # collective search when the shards are spread over the ranks of a process group
        self.collective = _distributed.world_size() > 1 and any(s is None for s in self.shards)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        x: Any,
        labels: Any = None,
        num_shards: int = 2,
        metric: str = "cosine",
        kind: str = "flat",
        device: str = "auto",
        **params: Any,
    ) -> ShardedIndex:
        """Index the rows of ``x`` (n, dim) in ``num_shards`` shards; ids are the row numbers 0..n−1.

        ``params`` go to every :class:`EmbeddingIndex` (nlist, nprobe, hnsw_m, ...). Each shard gets at
        least one row (``num_shards`` ≤ n).
        """
        num_shards = check_positive_int(num_shards, "num_shards")
        x = check_matrix(x, "x")
        n = x.shape[0]
        if num_shards > n:
            raise ValueError(f"num_shards={num_shards} is larger than the number of vectors ({n})")
        rows = np.array_split(np.arange(n, dtype=np.int64), num_shards)
        label_arr = None if labels is None else np.asarray(labels)
        whole = EmbeddingIndex(x.shape[1], metric=metric, kind=kind, device=device, **params)
        shards: list[EmbeddingIndex] = []
        if whole.kind == "hnsw":  # a graph per shard (faiss cannot remove from HNSW)
            for part in rows:
                shard = EmbeddingIndex(x.shape[1], metric=metric, kind=kind, device=device, **params)
                shard.add(x[part], labels=None if label_arr is None else label_arr[part], ids=part)
                shards.append(shard)
        else:  # trained once on every row; each shard is the whole index less the other shards' rows
            whole.add(x, labels=label_arr)
            with tempfile.TemporaryDirectory() as tmp:
                whole.save(tmp)
                for part in rows:
                    shard = EmbeddingIndex.load(tmp, device=device)
                    shard.remove(np.setdiff1d(whole.ids, part))
                    shards.append(shard)
        ids = [s.ids for s in shards]
        shard_labels = None if label_arr is None else [s.labels for s in shards]
        return cls(shards, ids, shard_labels, x.shape[1], whole.metric, whole.kind)

    # ------------------------------------------------------------------ the EmbeddingIndex surface
    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        held = [r for r, s in enumerate(self.shards) if s is not None]
        return (f"ShardedIndex(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, size={len(self)}, "
                f"shards={len(self.shards)}, held={held})")

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def device(self) -> str:
        held = [s for s in self.shards if s is not None]
        return held[0].device if held else "cpu"

    @property
    def factory(self) -> str | None:
        held = [s for s in self.shards if s is not None]
        return held[0].factory if held else None

    @property
    def ids(self) -> np.ndarray:
        """Every shard's ids, shard after shard (a copy)."""
        return self._table.ids.copy()

    @property
    def labels(self) -> np.ndarray | None:
        """Labels aligned with :attr:`ids` (a copy), or ``None``."""
        return None if self._table.labels is None else self._table.labels.copy()

    def shard_labels(self, r: int) -> np.ndarray | None:
        """Labels of shard ``r``, aligned with its ids."""
        return None if self._shard_labels is None else self._shard_labels[r]

    def labels_for(self, ids: Any, missing: Any = None) -> np.ndarray:
        """Labels of ``ids`` (any shape, e.g. the ``I`` of :meth:`search`); id −1 maps to ``missing``."""
        if self._table.labels is None:
            raise ValueError("this index holds no labels (build it with labels)")
        return self._table.labels_for(ids, missing)

    def vectors(self, ids: Any = None) -> np.ndarray:
        """The stored vectors of every shard (in :attr:`ids` order); all shards must be held here."""
        missing = [r for r, s in enumerate(self.shards) if s is None]
        if missing:
            raise ValueError(f"this process holds only some shards (not {missing}); vectors() needs them all")
        every = np.concatenate([s.vectors() for s in self.shards if s is not None])  # all of them (checked above)
        if ids is None:
            return every
        rows = self._table.rows_for(ids)
        if (rows < 0).any():
            raise ValueError("id -1 (a missing neighbour) has no vector")
        return every[rows]

    # ------------------------------------------------------------------ search
    def search(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest vectors over all shards: ``(D, I)`` as :meth:`EmbeddingIndex.search` (k clamped to ``len``).

        Collective under torch.distributed when the shards are spread over the ranks (every rank must
        call it; rank 0's queries are used and every rank gets the merged result).
        """
        k = min(check_positive_int(k, "k"), len(self))
        xq = check_matrix(q, "queries", dim=self.dim)
        if self.collective:  # a process group exists (torch is imported): its numpy collectives
            xq = _distributed.broadcast_array(xq)
        heap = faiss.ResultHeap(xq.shape[0], k, keep_max=self.metric != "l2")
        for shard in self.shards:
            if shard is not None:
                heap.add_result(*shard.search(xq, k))
        heap.finalize()
        D, I = heap.D, heap.I
        if self.collective:  # every rank's partial top-k, merged the same way on every rank
            heap = faiss.ResultHeap(xq.shape[0], k, keep_max=self.metric != "l2")
            for D_r, I_r in zip(_distributed.all_gather_array(D), _distributed.all_gather_array(I), strict=True):
                heap.add_result(D_r, I_r)
            heap.finalize()
            D, I = heap.D, heap.I
        D[I < 0] = missing_distance(self.metric)
        return D, I

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every shard (``shard-000/`` ...) and then the sidecar ``index.json`` with their checksums."""
        missing = [r for r, s in enumerate(self.shards) if s is None]
        if missing:
            raise ValueError(f"cannot save: this process does not hold shards {missing}")
        shards = [s for s in self.shards if s is not None]  # all of them

        def writer(shard: EmbeddingIndex) -> Any:  # saves the shard; its manifest is the file checksummed
            return lambda manifest_path: shard.save(Path(manifest_path).parent)

        writers = {f"{shard_name(r)}/{_storage.MANIFEST}": writer(s) for r, s in enumerate(shards)}
        entries = [{"path": shard_name(r), "count": len(s)} for r, s in enumerate(shards)]
        fields = {"dim": self.dim, "metric": self.metric, "kind": self.kind, "count": len(self),
                  "has_labels": self._table.labels is not None, "attrs": self.attrs, "shards": entries}
        # the whole directory is written in a hidden sibling and swapped in (metriclearn.indexes._storage)
        self._manifest_checksum = _storage.write_directory(path, writers, fields, FORMAT, FORMAT_VERSION)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str = "auto", held: Sequence[int] | None = None
    ) -> ShardedIndex:
        """Read a sharded directory; ``held``: the shards to load (default: under torch.distributed with
        W ranks, rank r loads shards ``r, r + W, ...``; else every shard). Ids and labels of all shards are read.

        Every shard's manifest must match its checksum in the sidecar; held shards are fully verified by
        :meth:`EmbeddingIndex.load`, the ids/labels files of the others against their manifests.
        """
        return _storage.read_stable(path, lambda: cls._load(Path(path), device, held))

    @classmethod
    def _load(cls, root: Path, device: str, held: Sequence[int] | None) -> ShardedIndex:
        manifest = _storage.read_directory(root, FORMAT, FORMAT_VERSION)
        entries = manifest.get("shards")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"index directory {root} is damaged: its manifest lists no shards")
        if held is None:
            held = range(_distributed.rank(), len(entries), _distributed.world_size())
        mine = set(held)
        shards: list[EmbeddingIndex | None] = []
        ids, labels = [], []
        for r, entry in enumerate(entries):
            shard_dir = root / entry["path"]  # its manifest was checked against the sidecar above
            if r in mine:
                shard = EmbeddingIndex.load(shard_dir, device=device)
                shards.append(shard)
                ids.append(shard.ids)
                labels.append(shard.labels)
            else:
                shards.append(None)
                ids_r, labels_r = _read_table(shard_dir)
                ids.append(ids_r)
                labels.append(labels_r)
            if len(ids[-1]) != entry["count"]:
                raise ValueError(f"index directory {root} is damaged: {entry['path']} holds {len(ids[-1])} vectors, "
                                 f"the sidecar says {entry['count']}")
        has_labels = bool(manifest["has_labels"])
        index = cls(shards, ids, labels if has_labels else None, int(manifest["dim"]), manifest["metric"],
                    manifest["kind"], manifest.get("attrs"))
        index._manifest_checksum = manifest["checksum"]
        return index

    def save_attrs(self, path: str | os.PathLike[str]) -> None:
        """Store :attr:`attrs` in the directory this index was loaded from or saved to: only the sidecar manifest
        is rewritten (see :meth:`EmbeddingIndex.save_attrs`)."""
        self._manifest_checksum = _storage.update_fields(path, {"attrs": _storage.json_attrs(self.attrs)}, FORMAT,
                                                         self._manifest_checksum, {"count": len(self)})


def _read_table(shard_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """ids.npy and labels.npy of a shard this rank does not search, checked against the shard's manifest."""
    manifest = json.loads((shard_dir / _storage.MANIFEST).read_text(encoding="utf-8"))
    arrays: list[np.ndarray | None] = []
    for name in ("ids.npy", "labels.npy"):
        info = manifest["files"].get(name)
        if info is None and name == "ids.npy":
            raise ValueError(f"index directory {shard_dir} is damaged: its manifest lists no ids.npy")
        if info is None:
            arrays.append(None)
            continue
        file = shard_dir / name
        if not file.is_file() or sha256(file) != info["sha256"]:
            raise ValueError(f"index directory {shard_dir} is damaged: {name} does not match its checksum")
        arrays.append(np.load(file, allow_pickle=False))
    ids, labels = arrays
    assert ids is not None  # checked above
    return ids, labels
