"""One way to open an index directory: :func:`load_index` and :func:`describe`, chosen by the manifest's format.

An index directory is either one :class:`~metriclearn.indexes.EmbeddingIndex` (format
``"metriclearn.EmbeddingIndex"``) or a :class:`~metriclearn.indexes.sharded.ShardedIndex` (format
``"metriclearn.ShardedIndex"``: a sidecar manifest over ``shard-000/`` ...). Both answer ``search``,
``labels_for``, ``ids``, ``labels``, ``attrs`` and ``save_attrs``; commands open either through here.

Example
-------
>>> import numpy as np, tempfile
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(2, metric="l2", device="cpu")
>>> _ = index.add(np.eye(2, dtype=np.float32), labels=[3, 4])
>>> folder = tempfile.mkdtemp() + "/idx"
>>> index.save(folder)
>>> type(load_index(folder, device="cpu")).__name__, describe(folder)["size"], describe(folder)["shards"]
('EmbeddingIndex', 2, None)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metriclearn.indexes import _persist, _storage
from metriclearn.indexes.faiss_index import EmbeddingIndex
from metriclearn.indexes.sharded import FORMAT as SHARDED_FORMAT
from metriclearn.indexes.sharded import FORMAT_VERSION as SHARDED_VERSION
from metriclearn.indexes.sharded import ShardedIndex

#: The keys of :func:`describe`, in the order ``index info`` shows them.
DESCRIPTION_KEYS = ("path", "format_version", "kind", "factory", "metric", "size", "dim", "shards", "labels",
                    "metadata", "params", "tuning", "calibration", "model_fingerprint", "attrs")


def load_index(path: str | os.PathLike[str], device: str = "auto") -> EmbeddingIndex | ShardedIndex:
    """The index saved in directory ``path``: a :class:`ShardedIndex` for a sharded directory, else an
    :class:`EmbeddingIndex` (every file checked against its checksum either way).

    Under ``torchrun`` a sharded directory gives each rank its shards (see :meth:`ShardedIndex.load`).
    """
    if _storage.manifest_format(path) == SHARDED_FORMAT:
        return ShardedIndex.load(path, device=device)
    return EmbeddingIndex.load(path, device=device)


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an index directory holds, from its verified manifest (the vectors are not loaded).

    Keys (:data:`DESCRIPTION_KEYS`): ``path``, ``format_version``, ``kind``, ``factory``, ``metric``, ``size``,
    ``dim``, ``shards`` (``None`` for a single index, else N), ``labels`` and ``metadata`` (present or not),
    ``params``, and from ``attrs``: ``tuning`` (measured recall@k and speed, see :meth:`EmbeddingIndex.tune`),
    ``calibration`` and ``model_fingerprint`` (``None`` when absent), ``attrs`` (every key). A sharded
    directory's ``factory`` and ``params`` are its first shard's (every shard is built alike).
    """
    root = Path(path)
    if _storage.manifest_format(root) == SHARDED_FORMAT:
        manifest = _storage.read_stable(root, lambda: _storage.read_directory(root, SHARDED_FORMAT, SHARDED_VERSION))
        first = _storage.read_directory(root / manifest["shards"][0]["path"], _persist.FORMAT, _persist.FORMAT_VERSION)
        shards, labels, metadata = len(manifest["shards"]), bool(manifest["has_labels"]), False
    else:
        manifest = _storage.read_stable(root, lambda: _storage.read_directory(root, _persist.FORMAT,
                                                                              _persist.FORMAT_VERSION))
        first, shards = manifest, None
        labels, metadata = _persist.LABELS_FILE in manifest["files"], _persist.METADATA_FILE in manifest["files"]
    attrs = manifest.get("attrs") or {}
    return {
        "path": str(path),
        "format_version": manifest["format_version"],
        "kind": manifest.get("kind"),
        "factory": first.get("factory"),
        "metric": manifest.get("metric"),
        "size": manifest.get("count"),
        "dim": manifest.get("dim"),
        "shards": shards,
        "labels": labels,
        "metadata": metadata,
        "params": first.get("params") or {},
        "tuning": attrs.get("tuning"),
        "calibration": attrs.get("calibration"),
        "model_fingerprint": attrs.get("model_fingerprint"),
        "attrs": sorted(attrs),
    }
