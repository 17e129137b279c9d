"""An index directory: data files plus a manifest (``index.json``) that checksums every one of them.

Layout written by :func:`write_directory`::

    DIR/index.faiss     the faiss index (``faiss.read_index`` reads it alone)
    DIR/ids.npy         ... any other data files
    DIR/index.json      manifest: format, format_version, the caller's fields, and for every file its
                        SHA-256 and size; plus ``checksum``, the SHA-256 of the manifest's own content

A save builds the whole directory in a hidden sibling and swaps it in only when complete, so an
interrupted or failed save leaves the previous directory loadable. It writes only into a missing or empty
folder or one that holds an index (recognised by its manifest), and never deletes a file that the
previous manifest did not list. A missing, truncated or altered file, or an edited manifest, is a
``ValueError`` that names the file. :func:`update_fields` rewrites the manifest alone (new metadata for
unchanged data files), atomically, and only over the manifest the caller read.

Concurrency. A save of an existing directory and :func:`update_fields` hold the folder's writer lock
(:func:`metriclearn._outdir.folder_lock`); :func:`update_fields` re-reads the manifest under it, so of two
concurrent updates from the same loaded state one lands and the other is refused, never silently lost.
Readers take no lock: :func:`read_stable` repeats a load when the manifest moved while it ran (a save
swapped the directory in between), so a reader gets the old index or the new one, never a mix.

The checksums detect damage, not tampering: they are not keyed, so whoever can write the directory can
also rewrite the manifest to match (see docs/search.md, "Trust model").

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "idx"
>>> _ = write_directory(d, {"a.txt": lambda p: pathlib.Path(p).write_text("hi")}, {"dim": 2}, "demo", 1)
>>> read_directory(d, "demo", 1)["dim"]
2
>>> _ = (d / "a.txt").write_text("ho")
>>> read_directory(d, "demo", 1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: index directory ... is damaged: a.txt does not match its checksum (truncated or altered)
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from metriclearn._atomic import name_target, sha256, write_json
from metriclearn._outdir import LOCK, MARKER, folder_lock
from metriclearn.indexes._dirswap import swap_in

MANIFEST = "index.json"
STAGING_SUFFIX = ".saving"  # .NAME.PID.RANDOM.saving: a save in progress (removed by a later save once PID is gone)
_OUTDIR_FILES = {MARKER, LOCK}  # metriclearn's output-folder marker and lock (see metriclearn._outdir)
ATTRS_LOCK_WAIT = 10.0  # seconds update_fields waits for another writer of the folder
READ_ATTEMPTS = 8  # loads repeated by read_stable while saves keep replacing the directory
T = TypeVar("T")


def write_directory(
    path: str | os.PathLike[str],
    writers: Mapping[str, Callable[[str], object]],
    fields: Mapping[str, Any],
    format_name: str,
    format_version: int,
) -> str:
    """Write ``writers[name](file)`` for each file and the manifest into a new directory, then swap it in.

    ``path`` must be missing, empty (but for metriclearn's output marker and lock) or a directory whose
    manifest is a ``format_name`` manifest; anything else is refused before anything is written. The new
    directory is built in a hidden sibling and replaces ``path`` only once complete
    (:func:`~metriclearn.indexes._dirswap.swap_in`), so a save that fails part-way (a full disk, a
    writer's error) leaves the previous directory as it was. Files of the previous save that this one
    does not write are gone with it; files that were not listed in its manifest are kept. Returns the
    new manifest's checksum (what :func:`update_fields` expects later).
    """
    root = Path(path)
    with folder_lock(root) if root.is_dir() else contextlib.nullcontext():  # one writer at a time
        return _write_directory(root, writers, fields, format_name, format_version)


def _write_directory(root: Path, writers: Mapping[str, Callable[[str], object]], fields: Mapping[str, Any],
                     format_name: str, format_version: int) -> str:
    owned = _check_target(root, format_name, writers)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.{os.getpid()}.", suffix=STAGING_SUFFIX, dir=root.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, writer in writers.items():
            target = staging / name
            try:
                writer(str(target))
            except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError; name the user's path
                raise name_target(exc, str(target), root / name) from exc
            files[name] = {"sha256": sha256(target), "bytes": target.stat().st_size}
        manifest = {"format": format_name, "format_version": format_version, **fields, "files": files}
        manifest["checksum"] = _manifest_checksum(manifest)
        write_json(staging / MANIFEST, manifest)
        swap_in(staging, root, owned)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # holds only what this save wrote
        raise
    return manifest["checksum"]


def _remove_dead_staging(root: Path) -> None:
    """Remove staging folders of earlier saves to ``root`` whose process is gone (killed mid-save)."""
    pattern = re.compile(rf"^\.{re.escape(root.name)}\.(\d+)\.[^.]+{re.escape(STAGING_SUFFIX)}$")
    for entry in root.parent.glob(f".{glob.escape(root.name)}.*{STAGING_SUFFIX}"):
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)  # only ever holds files a save wrote


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_target(root: Path, format_name: str, writers: Mapping[str, Any]) -> set[str]:
    """Refuse a ``root`` this save must not replace; return the names of the previous save's files."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"cannot save an index to {root}: it exists and is not a directory")
    if not root.exists():
        return set()
    entries = {p.name for p in root.iterdir()} - _OUTDIR_FILES
    if not entries:
        return set()
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        shown = ", ".join(sorted(entries)[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(
            f"cannot save an index to {root}: it is not empty and not a metriclearn index (it holds {shown}); "
            "choose a new or empty folder"
        )
    listed: dict[str, Any] = manifest["files"] if isinstance(manifest.get("files"), dict) else {}
    owned = {MANIFEST, *listed} | {name for name in entries if name.startswith(".") and name.endswith(".tmp")}
    clash = sorted((entries - owned) & set(writers))
    if clash:
        raise ValueError(
            f"cannot save an index to {root}: it holds {', '.join(clash)}, which its manifest does not list "
            "(not written by metriclearn); move it away first"
        )
    return owned


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


def update_fields(
    path: str | os.PathLike[str],
    updates: Mapping[str, Any],
    format_name: str,
    expected_checksum: str | None,
    unchanged: Mapping[str, Any] | None = None,
) -> str:
    """Rewrite only the manifest of ``path`` with ``updates`` to its fields; return its new checksum.

    ``expected_checksum`` is the checksum of the manifest the caller's object matches (it loaded or saved
    the directory): a directory saved again since then is refused, and so is a manifest whose fields
    differ from ``unchanged`` (the object changed since), so the new fields never describe data files
    they were not made for. The data files are not read or written; the manifest is replaced atomically,
    under the folder's lock (waiting up to :data:`ATTRS_LOCK_WAIT` seconds for another writer), and read
    again under it: of two updates from the same loaded state, the second is refused.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "index directory does not exist", str(root))
    with folder_lock(root, wait=ATTRS_LOCK_WAIT):
        return _update_fields(root, updates, format_name, expected_checksum, unchanged)


def _update_fields(root: Path, updates: Mapping[str, Any], format_name: str, expected_checksum: str | None,
                   unchanged: Mapping[str, Any] | None) -> str:
    manifest = _read_manifest(root)
    if manifest.get("format") != format_name:
        raise ValueError(f"{root / MANIFEST} is not a {format_name} manifest (format {manifest.get('format')!r})")
    if expected_checksum is None or manifest["checksum"] != expected_checksum:
        raise ValueError(f"index directory {root} is not the one this index was loaded from or saved to, or it was "
                         "saved again since: load it again, or save() the index whole")
    changed = [key for key, value in (unchanged or {}).items() if manifest.get(key) != value]
    if changed:
        raise ValueError(f"the index differs from {root} in {', '.join(changed)} since it was loaded: save() it whole")
    fixed = sorted({"files", "format", "format_version", "checksum"} & set(updates))
    if fixed:
        raise ValueError(f"the manifest fields {fixed} cannot be updated on their own")
    manifest = {**manifest, **updates}
    manifest["checksum"] = _manifest_checksum(manifest)
    write_json(root / MANIFEST, manifest)
    return manifest["checksum"]


def manifest_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` its manifest names (e.g. ``"metriclearn.EmbeddingIndex"``), ``None`` when unreadable.

    Not verified: what it names is then read (and checked) by the loader of that format.
    """
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    return found if isinstance(found, str) else None


def json_attrs(attrs: Any) -> dict[str, Any]:
    """``attrs`` after a JSON round trip; a ``TypeError`` when it is not a dict of JSON values.

    >>> json_attrs({"n": 1, "t": (1, 2)})
    {'n': 1, 't': [1, 2]}
    """
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON-serialisable values, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(attrs))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attrs must be JSON-serialisable: {exc}") from exc


def read_stable(path: str | os.PathLike[str], read: Callable[[], T]) -> T:
    """``read()`` (a load of the directory ``path``), repeated while a save replaces the directory under it.

    A load reads the manifest, then the files; a save that swaps in a new directory between the two makes
    the files disagree with the manifest read. The load counts only when the directory and its manifest are
    the same before and after it (same inodes, modification time and bytes: a save back to identical
    content still moves the time); an error is raised only when they did not move meanwhile (the directory
    really is damaged), or after :data:`READ_ATTEMPTS` tries.
    """
    root = Path(path)
    for attempt in range(1, READ_ATTEMPTS + 1):
        before = _stamp(root)
        try:
            result = read()
        except (ValueError, OSError):
            if attempt == READ_ATTEMPTS or _stamp(root) == before:
                raise
        else:
            if _stamp(root) == before:
                return result
            if attempt == READ_ATTEMPTS:
                raise RuntimeError(f"index directory {root} was saved again {attempt} times while it was being "
                                   "read; load it when the saves are done")
        time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _stamp(root: Path) -> tuple[Any, ...] | None:
    """What changes whenever a save or :func:`update_fields` replaces ``root`` or its manifest."""
    try:
        folder, manifest = os.stat(root), os.stat(root / MANIFEST)
        return folder.st_ino, manifest.st_ino, manifest.st_mtime_ns, (root / MANIFEST).read_bytes()
    except OSError:
        return None


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
