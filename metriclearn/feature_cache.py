"""Frozen-encoder features kept on disk, so ``train`` → ``embed`` → ``evaluate`` on the same texts encode them once.

A frozen transformer is a fixed function of its input: its pooled output for a text depends only on the
weights and the encoding settings (``max_length``, pooling). :class:`FeatureCache` stores those outputs under

    ROOT/features/<model key>/<h[:2]>.npz      (arrays ``hashes`` (m,) str and ``features`` (m, H) float32)

where ``model key`` is a SHA-256 of the model's fingerprint (:func:`metriclearn.fingerprint.model_fingerprint`)
and the settings, and ``h`` the SHA-256 of a text's UTF-8 bytes. ROOT is ``$METRICLEARN_CACHE``, else
``$XDG_CACHE_HOME/metriclearn``, else ``~/.cache/metriclearn``; ``METRICLEARN_CACHE=off`` turns the cache off.

Shards are written atomically (:mod:`metriclearn._atomic`); a shard that cannot be read, or holds arrays of
the wrong shape, dtype or non-finite values, counts as empty (its texts are encoded again and the shard is
rewritten). Two processes adding to one shard at once may drop the other's new rows: they are then encoded
again later, never wrong.

Example
-------
>>> import tempfile, numpy as np
>>> cache = FeatureCache("model-and-settings", dim=3, root=tempfile.mkdtemp())
>>> cache.get(["a cat", "a dog"])
{}
>>> cache.put(["a cat"], np.ones((1, 3), np.float32))
>>> {text: row.tolist() for text, row in cache.get(["a cat", "a dog"]).items()}
{'a cat': [1.0, 1.0, 1.0]}
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metriclearn._atomic import atomic_open

ENV = "METRICLEARN_CACHE"
_OFF = ("off", "0", "false", "none")


def cache_root() -> Path | None:
    """``$METRICLEARN_CACHE``, else ``$XDG_CACHE_HOME/metriclearn``, else ``~/.cache/metriclearn``; ``None``: off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF or not value.strip() else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metriclearn"


def text_hash(text: str) -> str:
    """SHA-256 (hex) of ``text``'s UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Per-text feature rows of one model (``key``) on disk; ``dim`` is the width H of a row.

    ``root=None`` uses :func:`cache_root`; when that is off, :meth:`get` finds nothing and :meth:`put` keeps
    nothing.
    """

    def __init__(self, key: str, dim: int, root: str | os.PathLike[str] | None = None) -> None:
        base = cache_root() if root is None else Path(root)
        self.folder = None if base is None else base / "features" / hashlib.sha256(key.encode()).hexdigest()[:32]
        self.dim = int(dim)

    def _shard(self, prefix: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{prefix}.npz"

    def _read(self, prefix: str) -> dict[str, np.ndarray]:
        """The rows of one shard; a missing or damaged shard is empty."""
        path = self._shard(prefix)
        try:
            with np.load(path, allow_pickle=False) as stored:
                hashes, features = stored["hashes"], stored["features"]
        # missing, truncated, not an npz, another layout
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return {}
        ok = (features.dtype == np.float32 and features.ndim == 2 and features.shape == (len(hashes), self.dim)
              and hashes.ndim == 1 and bool(np.isfinite(features).all()))
        return dict(zip(hashes.tolist(), features, strict=True)) if ok else {}

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{text: (H,) float32}`` for the ``texts`` found on disk."""
        if self.folder is None or not self.folder.is_dir():
            return {}
        by_shard: dict[str, dict[str, str]] = defaultdict(dict)
        for text in dict.fromkeys(texts):
            h = text_hash(text)
            by_shard[h[:2]][h] = text
        found: dict[str, np.ndarray] = {}
        for prefix, wanted in by_shard.items():
            rows = self._read(prefix)
            found.update({text: rows[h] for h, text in wanted.items() if h in rows})
        return found

    def put(self, texts: Sequence[str], features: np.ndarray) -> None:
        """Add the rows ``features`` (n, H) of ``texts`` (n,) to their shards (rewritten atomically)."""
        if self.folder is None or len(texts) == 0:
            return
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (len(texts), self.dim):
            raise ValueError(f"features must have shape ({len(texts)}, {self.dim}), got {features.shape}")
        by_shard: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        for text, row in zip(texts, features, strict=True):
            h = text_hash(text)
            by_shard[h[:2]][h] = row
        for prefix, rows in by_shard.items():
            merged = {**self._read(prefix), **rows}
            # a cache that cannot be written (read-only, full) is only slower
            with contextlib.suppress(OSError), atomic_open(self._shard(prefix), "wb") as fh:
                np.savez(fh, hashes=np.array(list(merged)), features=np.stack(list(merged.values())))
