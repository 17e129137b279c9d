"""Replace a directory by a complete new one in one step, keeping the files the old one did not own.

:func:`swap_in` puts a fully written staging directory (a hidden sibling of the target) in place of the
target. On Linux it uses ``renameat2(RENAME_EXCHANGE)``, which swaps the two names atomically: at every
instant the target path is either the complete old directory or the complete new one. Elsewhere (or on
file systems without the flag) it falls back to two renames, with a few microseconds in between where
the target name is absent (the old directory is then still intact under the hidden name).

After the swap, every entry of the old directory that the caller does not claim as its own (``owned``)
is moved into the new one: files a user put there, or another tool's marker and lock, are never
deleted. What remains of the old directory (only owned files) is then removed; should an unowned entry
clash with a name of the new directory, the old directory is left under its hidden name instead.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "idx").mkdir(); _ = (root / "idx" / "old.bin").write_text("1")
>>> _ = (root / "idx" / "notes").write_text("mine")
>>> (root / ".idx.new").mkdir(); _ = (root / ".idx.new" / "new.bin").write_text("2")
>>> swap_in(root / ".idx.new", root / "idx", owned={"old.bin"})
>>> sorted(p.name for p in (root / "idx").iterdir()), (root / ".idx.new").exists()
(['new.bin', 'notes'], False)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Collection
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def swap_in(staging: Path, target: Path, owned: Collection[str]) -> None:
    """Put ``staging`` in place of ``target`` (created when missing); keep target's entries not in ``owned``."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        old = staging  # after the exchange the staging name holds the old directory
    else:
        old = staging.with_name(staging.name + ".old")
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(old, target)
            raise
    kept = [entry for entry in old.iterdir() if entry.name not in owned]
    for entry in kept:
        if not (target / entry.name).exists():
            os.rename(entry, target / entry.name)
    if not any(entry.exists() for entry in kept):  # only owned files are left: remove them
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux ``renameat2``); ``False`` where not supported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
