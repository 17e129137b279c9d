"""Saving and loading an :class:`~metriclearn.indexes.EmbeddingIndex` directory.

Files: ``index.faiss`` (a plain faiss index; for ``"cosine"`` normalised vectors under inner product),
``ids.npy``, optional ``labels.npy`` and ``metadata.json``, and the manifest ``index.json`` (format
version, the constructor's parameters, ``attrs`` and the SHA-256 of every file; see
:mod:`metriclearn.indexes._storage`). Loading checks the checksums, that the files agree on the number
of vectors, and that the faiss structure read is the one the manifest's kind and parameters build
(:func:`~metriclearn.indexes._structure.signature`: the faiss classes, nlist, HNSW M, PQ codes).

>>> import tempfile, numpy as np
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(2, metric="l2", device="cpu")
>>> _ = index.add(np.eye(2, dtype=np.float32), labels=[3, 4])
>>> path = tempfile.mkdtemp() + "/idx"
>>> checksum = save(index, path)
>>> loaded, same = load(EmbeddingIndex, path, "cpu")
>>> loaded.labels.tolist(), same == checksum
([3, 4], True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import faiss
import numpy as np

from metriclearn.indexes import _factory, _storage, _structure
from metriclearn.indexes._storage import json_attrs
from metriclearn.indexes._table import IdTable

FORMAT = "metriclearn.EmbeddingIndex"
FORMAT_VERSION = 1


class Persistable(Protocol):
    """What saving and loading read and set: the public surface of an ``EmbeddingIndex`` (no private parts)."""

    dim: int
    metric: str
    kind: str
    attrs: dict[str, Any]

    @property
    def factory(self) -> str | None: ...
    @property
    def faiss_index(self) -> faiss.Index | None: ...
    @property
    def table(self) -> IdTable: ...
    @property
    def params(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def empty_structure(self) -> faiss.Index: ...
    def use_structure(self, index: faiss.Index) -> None: ...


E = TypeVar("E", bound=Persistable)
FAISS_FILE, IDS_FILE, LABELS_FILE, METADATA_FILE = "index.faiss", "ids.npy", "labels.npy", "metadata.json"


def save(index: Persistable, path: str | os.PathLike[str]) -> str:
    """Write ``index`` to the directory ``path`` (see :meth:`EmbeddingIndex.save`); return the manifest's checksum."""
    structure, table = index.faiss_index, index.table
    if structure is None:
        raise ValueError(f"nothing to save: kind {index.kind!r} with nlist=None is built on the first add")
    labels, metadata = table.labels, table.metadata
    writers: dict[str, Callable[[Any], object]] = {
        FAISS_FILE: lambda p: faiss.write_index(structure, p),
        IDS_FILE: lambda p: _write_npy(p, table.ids),
    }
    if labels is not None:
        writers[LABELS_FILE] = lambda p: _write_npy(p, labels)
    if metadata is not None:
        writers[METADATA_FILE] = lambda p: Path(p).write_text(json.dumps(metadata), encoding="utf-8")
    fields = {
        "dim": index.dim,
        "metric": index.metric,
        "kind": index.kind,
        "factory": index.factory,
        "count": len(index),
        "next_id": table.next_id,
        "has_labels": table.has_labels,
        "attrs": json_attrs(index.attrs),
        "params": index.params,
    }
    return _storage.write_directory(path, writers, fields, FORMAT, FORMAT_VERSION)


def load(cls: Callable[..., E], path: str | os.PathLike[str], device: str) -> tuple[E, str]:
    """Read an index directory written by :func:`save`: ``(index, the manifest's checksum)``.

    Never a mix of two saves: the load is repeated when the directory was replaced while it ran
    (:func:`~metriclearn.indexes._storage.read_stable`).
    """
    return _storage.read_stable(path, lambda: _load(cls, path, device))


def _load(cls: Callable[..., E], path: str | os.PathLike[str], device: str) -> tuple[E, str]:
    manifest = _storage.read_directory(path, FORMAT, FORMAT_VERSION)
    root = Path(path)
    damaged = f"index directory {root} is damaged"
    try:
        obj = cls(manifest["dim"], manifest["metric"], manifest["kind"], device, **manifest["params"])
        structure = faiss.read_index(str(root / FAISS_FILE))
        ids = np.load(root / IDS_FILE, allow_pickle=False)
        labels = np.load(root / LABELS_FILE, allow_pickle=False) if LABELS_FILE in manifest["files"] else None
        metadata = None
        if METADATA_FILE in manifest["files"]:
            metadata = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    except (KeyError, TypeError, RuntimeError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{damaged}: {_factory.faiss_reason(exc)}") from exc
    n = manifest["count"]
    sizes = {FAISS_FILE: structure.ntotal, IDS_FILE: len(ids)}
    if labels is not None:
        sizes[LABELS_FILE] = len(labels)
    if metadata is not None:
        sizes[METADATA_FILE] = len(metadata)
    wrong = [f"{name} holds {size}" for name, size in sizes.items() if size != n]
    if structure.d != obj.dim or wrong or structure.metric_type != _factory.metric_type(obj.metric):
        raise ValueError(f"{damaged}: its files disagree (manifest: {n} vectors of dim {obj.dim}; {wrong})")
    expected, found = _structure.signature(obj.empty_structure()), _structure.signature(structure)
    if found != expected:
        raise ValueError(
            f"{damaged}: {FAISS_FILE} holds a {found} index but the manifest says kind {obj.kind!r} ({expected})"
        )
    obj.use_structure(structure)
    obj.table.restore(ids, labels, metadata, manifest["has_labels"], manifest["next_id"])
    obj.attrs = dict(manifest.get("attrs") or {})
    return obj, manifest["checksum"]


def save_attrs(index: Persistable, path: str | os.PathLike[str], checksum: str | None) -> str:
    """Write ``index.attrs`` into the manifest of ``path``, the directory ``index`` was loaded from (or saved to).

    ``checksum``: the manifest checksum of that load or save; returns the new one. Only ``index.json`` is
    rewritten (atomically), so storing a calibration in a large index costs nothing. Refused when the
    index's vectors, ids or parameters changed since (then :func:`save` it whole), or when the directory
    was saved again since.
    """
    unchanged = {"count": len(index), "next_id": index.table.next_id, "params": json_attrs(index.params)}
    return _storage.update_fields(path, {"attrs": json_attrs(index.attrs)}, FORMAT, checksum, unchanged)


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(fh, array, allow_pickle=False)
