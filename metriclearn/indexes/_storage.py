"""An index directory: data files plus a manifest (``index.json``) that checksums every one of them.

Layout written by :func:`write_directory`::

    DIR/index.faiss     the faiss index (``faiss.read_index`` reads it alone)
    DIR/ids.npy         ... any other data files
    DIR/index.json      manifest: format, format_version, the caller's fields, and for every file its
                        SHA-256 and size; plus ``checksum``, the SHA-256 of the manifest's own content

Every file is written atomically and the manifest last, so an interrupted save leaves files that no
longer match the old manifest: :func:`read_directory` then reports the directory as damaged instead of
loading a mix. A missing, truncated or altered file, or an edited manifest, is a ``ValueError`` that
names the file.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "idx"
>>> write_directory(d, {"a.txt": lambda p: pathlib.Path(p).write_text("hi")}, {"dim": 2}, "demo", 1)
>>> read_directory(d, "demo", 1)["dim"]
2
>>> _ = (d / "a.txt").write_text("ho")
>>> read_directory(d, "demo", 1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: index directory ... is damaged: a.txt does not match its checksum (truncated or altered)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from metriclearn._atomic import atomic_path, sha256, write_json

MANIFEST = "index.json"


def write_directory(
    path: str | os.PathLike[str],
    writers: Mapping[str, Callable[[str], None]],
    fields: Mapping[str, Any],
    format_name: str,
    format_version: int,
    stale: Iterable[str] = (),
) -> None:
    """Write each ``writers[name](tmp_path)`` atomically into ``path``, then the manifest.

    ``stale`` names optional files of an earlier save that this one does not write; they are removed
    after the new manifest is in place.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"cannot save an index to {root}: it exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, writer in writers.items():
        with atomic_path(root / name) as tmp:
            writer(str(tmp))
            files[name] = {"sha256": sha256(tmp), "bytes": tmp.stat().st_size}
    manifest = {"format": format_name, "format_version": format_version, **fields, "files": files}
    manifest["checksum"] = _manifest_checksum(manifest)
    write_json(root / MANIFEST, manifest)
    for name in stale:
        if name not in files and (root / name).is_file():
            (root / name).unlink()


def read_directory(path: str | os.PathLike[str], format_name: str, format_version: int) -> dict[str, Any]:
    """Verify the directory against its manifest and return the manifest (its ``files`` included).

    Raises ``FileNotFoundError`` for a missing directory, ``ValueError`` naming the file for anything
    missing, truncated, altered or of a newer format.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, "index directory does not exist", str(root))
    if not root.is_dir():
        raise ValueError(f"{root} is not an index directory (it is a file)")
    manifest = _read_manifest(root)
    if manifest.get("format") != format_name:
        raise ValueError(f"{root / MANIFEST} is not a {format_name} manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > format_version:
        raise ValueError(
            f"{root} was written in format_version {version!r}; this metriclearn reads up to {format_version}"
        )
    for name, info in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise _damaged(root, f"{name} is missing")
        if file.stat().st_size != info.get("bytes") or sha256(file) != info.get("sha256"):
            raise _damaged(root, f"{name} does not match its checksum (truncated or altered)")
    return manifest


def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not file.is_file():
        raise _damaged(root, f"{MANIFEST} is missing (or this is not a metriclearn index directory)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(root, f"{MANIFEST} is not valid JSON ({exc})") from exc
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("files"), dict)
        or manifest.get("checksum") != _manifest_checksum(manifest)
    ):
        raise _damaged(root, f"{MANIFEST} does not match its checksum (truncated or altered)")
    return manifest


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON, without its ``checksum`` field."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _damaged(root: Path, what: str) -> ValueError:
    return ValueError(f"index directory {root} is damaged: {what}")
