"""Atomic file writes: every file metriclearn writes goes to a temporary sibling, then is renamed.

A crash or a full disk in the middle of a write leaves the previous file intact, never a torn one.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_json(d / "m.json", {"a": 1})
>>> (d / "m.json").read_text()
'{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``.

    Use this for libraries that want a file name (``torch.save``, ``faiss.write_index``, matplotlib).
    """
    target = Path(path)
    if target.is_dir():  # os.replace would fail naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "Is a directory (expected a file name)", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # a read-only folder, no inodes left: name the file the user asked for
        raise name_target(exc, str(exc.filename), target) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, target)
    except Exception as exc:
        full = _disk_full(target.parent)  # before the temporary file is removed and frees its space
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        renamed = name_target(exc, tmp, target, disk_full=full)
        if renamed is exc:
            raise
        raise renamed from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def name_target(exc: Exception, tmp: str, target: Path, disk_full: bool = False) -> Exception:
    """``exc`` as the user should see it: naming ``target``, never the temporary file it was written as.

    An ``OSError`` on the temporary file or on no file (a full disk, a quota: numpy's ``10000 requested and 234
    written``) keeps its errno and names ``target``; any other error whose message quotes the temporary path
    (faiss's C++ ``write error`` on a full disk) becomes an ``OSError`` that names ``target``, with the gist
    of the original message as the reason. A library's own write failure on a full disk (torch's
    ``[enforce fail at inline_container.cc] unexpected pos``) becomes ``ENOSPC`` naming ``target``.
    """
    if isinstance(exc, OSError) and exc.filename in (tmp, None):
        if disk_full and exc.errno in (None, 0, errno.EIO):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return type(exc)(exc.errno or errno.EIO, exc.strerror or f"could not write the file ({exc})", str(target))
    text = str(exc)
    if not isinstance(exc, OSError) and (disk_full or _TORCH_WRITE_FAILURE in text):
        why = os.strerror(errno.ENOSPC) if disk_full else f"could not write the file ({' '.join(text.split())})"
        return OSError(errno.ENOSPC if disk_full else errno.EIO, why, str(target))
    if tmp not in text:
        return exc
    reason = text.replace(tmp, str(target)).strip().splitlines()[-1].strip()
    reason = reason.split(" failed: ", 1)[-1]  # faiss: "Error in <function> at <file>: Error: '<check>' failed: ..."
    return OSError(errno.EIO, f"could not write the file ({reason})", str(target))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing that only replaces ``path`` once the block finishes without error."""
    if not mode.startswith("w"):
        raise ValueError(f"mode must be a write mode ('w' or 'wb'), got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy scalars and arrays are converted)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Atomically write one array in ``.npy`` format."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def save_with(path: str | os.PathLike[str], writer: Callable[[str], None]) -> None:
    """Atomically write ``path`` with a function that takes a file name, e.g. ``torch.save``."""
    with atomic_path(path) as tmp:
        writer(str(tmp))


def sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_TORCH_WRITE_FAILURE = "inline_container.cc"  # torch.save's C++ writer: "unexpected pos", "file write failed"


def _disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has no block left for an unprivileged write."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder is gone
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
