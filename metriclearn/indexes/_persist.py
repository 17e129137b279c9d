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
>>> save(index, path)
>>> load(EmbeddingIndex, path, "cpu").labels.tolist()
[3, 4]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from metriclearn.indexes import _factory, _storage, _structure

if TYPE_CHECKING:
    from metriclearn.indexes.faiss_index import EmbeddingIndex

FORMAT = "metriclearn.EmbeddingIndex"
FORMAT_VERSION = 1
FAISS_FILE, IDS_FILE, LABELS_FILE, METADATA_FILE = "index.faiss", "ids.npy", "labels.npy", "metadata.json"


def save(index: EmbeddingIndex, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to the directory ``path`` (see :meth:`EmbeddingIndex.save`)."""
    structure, table = index.faiss_index, index._table
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
        "params": index._params(),
    }
    index._manifest_checksum = _storage.write_directory(path, writers, fields, FORMAT, FORMAT_VERSION)


def load(cls: type[EmbeddingIndex], path: str | os.PathLike[str], device: str) -> EmbeddingIndex:
    """Read an index directory written by :func:`save` (see :meth:`EmbeddingIndex.load`).

    Never a mix of two saves: the load is repeated when the directory was replaced while it ran
    (:func:`~metriclearn.indexes._storage.read_stable`).
    """
    return _storage.read_stable(path, lambda: _load(cls, path, device))


def _load(cls: type[EmbeddingIndex], path: str | os.PathLike[str], device: str) -> EmbeddingIndex:
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
    expected, found = _structure.signature(obj._build()), _structure.signature(structure)
    if found != expected:
        raise ValueError(
            f"{damaged}: {FAISS_FILE} holds a {found} index but the manifest says kind {obj.kind!r} ({expected})"
        )
    obj._set_structure(structure)
    obj._table.restore(ids, labels, metadata, manifest["has_labels"], manifest["next_id"])
    obj.attrs = dict(manifest.get("attrs") or {})
    obj._manifest_checksum = manifest["checksum"]
    return obj


def save_attrs(index: EmbeddingIndex, path: str | os.PathLike[str]) -> None:
    """Write ``index.attrs`` into the manifest of ``path``, the directory ``index`` was loaded from (or saved to).

    Only ``index.json`` is rewritten (atomically), so storing a calibration in a large index costs
    nothing. Refused when the index's vectors, ids or parameters changed since (then :func:`save` it
    whole), or when the directory was saved again since.
    """
    unchanged = {"count": len(index), "next_id": index._table.next_id, "params": json_attrs(index._params())}
    index._manifest_checksum = _storage.update_fields(path, {"attrs": json_attrs(index.attrs)}, FORMAT,
                                                      index._manifest_checksum, unchanged)


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an index directory holds, from its verified manifest (the vectors are not loaded).

    Keys: ``path``, ``format_version``, ``kind``, ``factory``, ``metric``, ``size``, ``dim``, ``shards``
    (``None`` for a single index), ``labels`` and ``metadata`` (present or not), ``params``, and from
    ``attrs``: ``tuning`` (measured recall@k and speed, see :meth:`EmbeddingIndex.tune`),
    ``calibration`` and ``model_fingerprint`` (``None`` when absent), ``attrs`` (every key).
    """
    from metriclearn.indexes import sharded

    if sharded.is_sharded(path):  # the sidecar of a sharded directory, plus its first shard's parameters
        return sharded.describe(path)
    manifest = _storage.read_stable(path, lambda: _storage.read_directory(path, FORMAT, FORMAT_VERSION))
    attrs = manifest.get("attrs") or {}
    return {
        "path": str(path),
        "format_version": manifest["format_version"],
        "kind": manifest.get("kind"),
        "factory": manifest.get("factory"),
        "metric": manifest.get("metric"),
        "size": manifest.get("count"),
        "dim": manifest.get("dim"),
        "shards": manifest.get("shards"),
        "labels": LABELS_FILE in manifest["files"],
        "metadata": METADATA_FILE in manifest["files"],
        "params": manifest.get("params") or {},
        "tuning": attrs.get("tuning"),
        "calibration": attrs.get("calibration"),
        "model_fingerprint": attrs.get("model_fingerprint"),
        "attrs": sorted(attrs),
    }


def json_attrs(attrs: Any) -> dict[str, Any]:
    """``attrs`` after a JSON round trip; a ``TypeError`` when it is not a dict of JSON values."""
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON-serialisable values, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(attrs))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attrs must be JSON-serialisable: {exc}") from exc


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(fh, array, allow_pickle=False)
