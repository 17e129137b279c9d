"""The id table of an :class:`~metriclearn.indexes.EmbeddingIndex`: int64 ids with labels and metadata.

Rows are kept in insertion order; ``labels`` (ints or strings) and ``metadata`` (JSON objects) are aligned
with ``ids``. Ids are looked up through a sorted copy (``np.searchsorted``), built lazily after a change.
The faiss structure holds the same ids; this table answers id → row → label / metadata.

>>> table = IdTable()
>>> ids, labels, meta = table.check_new(None, ["a", "b"], None, 2)
>>> table.append(ids, labels, meta)
>>> table.labels_for([[1, -1]]).tolist()
[['b', '']]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from metriclearn._checks import check_labels, is_tensor


class IdTable:
    """Ids in insertion order, with optional labels and metadata aligned to them."""

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.labels: np.ndarray | None = None
        self.metadata: list[Any] | None = None
        self.has_labels: bool | None = None  # decided by the first add
        self.next_id = 0
        self._order: np.ndarray | None = None  # argsort of self.ids, for id -> row lookups

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    # ------------------------------------------------------------------ changes
    def check_new(
        self, ids: Any, labels: Any, metadata: Sequence[Any] | None, n: int
    ) -> tuple[np.ndarray, np.ndarray | None, list[Any] | None]:
        """Validate the ids, labels and metadata of ``n`` new rows (nothing changes): the arrays to append."""
        labels_arr = None if labels is None else as_labels(labels, n)
        self._check_labels_consistent(labels_arr)
        return self._new_ids(ids, n), labels_arr, as_metadata(metadata, n)

    def append(self, new_ids: np.ndarray, labels: np.ndarray | None, meta: list[Any] | None) -> None:
        """Append rows checked by :meth:`check_new`."""
        old, n = len(self), len(new_ids)
        self.ids = np.concatenate([self.ids, new_ids])
        if labels is not None:
            self.labels = labels if self.labels is None else np.concatenate([self.labels, labels])
        if meta is not None or self.metadata is not None:
            self.metadata = (self.metadata or [None] * old) + (meta or [None] * n)
        self.has_labels = labels is not None
        if n:
            self.next_id = max(self.next_id, int(new_ids.max()) + 1)
        self._order = None

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows where ``mask`` (len(self),) is true."""
        self.ids = self.ids[mask]
        if self.labels is not None:
            self.labels = self.labels[mask]
        if self.metadata is not None:
            self.metadata = [m for m, k in zip(self.metadata, mask, strict=True) if k]
        self._order = None

    def restore(
        self, ids: np.ndarray, labels: np.ndarray | None, metadata: list[Any] | None, has_labels: bool | None,
        next_id: int,
    ) -> None:
        """Set the whole table (from a saved index)."""
        self.ids, self.labels, self.metadata = ids.astype(np.int64), labels, metadata
        self.has_labels, self.next_id, self._order = has_labels, int(next_id), None

    def _check_labels_consistent(self, labels: np.ndarray | None) -> None:
        if self.has_labels is None:
            return
        if self.has_labels and labels is None:
            raise ValueError("this index holds labels: add() needs labels for the new vectors too")
        if not self.has_labels and labels is not None:
            raise ValueError("this index was built without labels: add() cannot start adding them")
        if labels is not None and self.labels is not None and labels.dtype.kind != self.labels.dtype.kind:
            kind = "str" if self.labels.dtype.kind == "U" else "int"
            raise TypeError(f"labels must be of the index's label type {kind}, got dtype {labels.dtype}")

    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        new = as_ids(ids, "ids")
        if new.shape[0] != n:
            raise ValueError(f"ids has {new.shape[0]} entries but x has {n} rows")
        if (new < 0).any():
            raise ValueError(f"ids must be non-negative (−1 marks a missing neighbour), got {int(new.min())}")
        uniq, counts = np.unique(new, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids must be unique, got duplicates {uniq[counts > 1][:5].tolist()}")
        taken = new[np.isin(new, self.ids)]
        if taken.size:
            raise ValueError(f"ids already in the index: {taken[:5].tolist()}")
        return new

    # ------------------------------------------------------------------ look-ups
    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in the insertion-order table (−1 where the id is not in the index)."""
        if len(self) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._order]
        j = np.minimum(np.searchsorted(sorted_ids, ids), len(self) - 1)  # ids.shape
        return np.where(sorted_ids[j] == ids, self._order[j], -1)

    def rows_for(self, ids: Any) -> np.ndarray:
        """Rows of ``ids`` (any shape); −1 stays −1, an unknown id is a ``ValueError``."""
        arr = as_ids(ids, "ids", ndim=None)
        rows = self.rows(arr)
        unknown = arr[(rows < 0) & (arr != -1)]
        if unknown.size:
            raise ValueError(f"ids not in the index: {unknown[:5].tolist()}")
        return rows

    def labels_for(self, ids: Any, missing: Any = None) -> np.ndarray:
        """Labels of ``ids`` (any shape); id −1 maps to ``missing`` (default −1, or ``""`` for strings)."""
        if self.labels is None:
            raise ValueError("this index holds no labels (add vectors with labels=...)")
        rows = self.rows_for(ids)
        fill = missing if missing is not None else ("" if self.labels.dtype.kind == "U" else -1)
        out = self.labels[np.maximum(rows, 0)] if len(self) else np.empty(rows.shape, self.labels.dtype)
        out = out.astype(np.result_type(out.dtype, np.asarray(fill).dtype), copy=False)
        out[rows < 0] = fill
        return out

    def metadata_for(self, ids: Any) -> Any:
        """Metadata of ``ids`` as nested lists of the same shape (``None`` for id −1 or no metadata)."""
        rows = self.rows_for(ids)
        meta = self.metadata
        pick = np.vectorize(lambda r: None if r < 0 or meta is None else meta[r], otypes=[object])
        return pick(rows).tolist() if rows.size else rows.tolist()


def as_ids(ids: Any, name: str, ndim: int | None = 1) -> np.ndarray:
    """``ids`` as int64 (a ``TypeError`` for non-integers, a ``ValueError`` for the wrong rank)."""
    arr = np.asarray(ids.detach().cpu().numpy() if is_tensor(ids) else ids)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def as_labels(labels: Any, n: int) -> np.ndarray:
    """``labels`` (n,) as int64 or str."""
    arr = check_labels(labels, "labels", n=n)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype == object and all(isinstance(v, str) for v in arr):
        return arr.astype(str)
    raise TypeError(f"labels must be integers or strings, got dtype {arr.dtype}")


def as_metadata(metadata: Sequence[Any] | None, n: int) -> list[Any] | None:
    """``metadata`` as a list of n JSON values, after a JSON round trip (what save/load will give back)."""
    if metadata is None:
        return None
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a sequence of {n} JSON-serialisable objects, got {type(metadata).__name__}")
    items = list(metadata)
    if len(items) != n:
        raise ValueError(f"metadata has {len(items)} entries but x has {n} rows")
    try:
        return json.loads(json.dumps(items))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
