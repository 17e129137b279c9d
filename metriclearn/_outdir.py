"""Output folders that never lose a user's files: metriclearn's only when its record says so.

Every command that writes a folder (``train --out``, ``index build --out``, ``report --out`` …) claims it
first with :func:`claim_output_dir`:

* a folder that does not exist, or is empty, is created and marked as this tool's: a small JSON marker,
  ``.metriclearn.json``, names the kind of output and lists every file and folder metriclearn wrote there
  (``"entries"``, paths relative to the folder, e.g. ``"checkpoints/last.pt"``);
* a folder whose marker names the same kind is accepted only when the caller continues it (``resume=True``)
  or replaces it (``overwrite=True``); a different kind is always refused;
* anything else is refused and nothing is written, whatever its files are called: a folder holding
  ``model.pt`` or ``report.html`` but no marker is the user's, not a run or a report.

Ownership is by record, not by name: :func:`remove_recorded` (what ``--overwrite`` deletes) removes only
the marker's entries, so a file the user put inside a run's subfolder (``checkpoints/hand.pt``) survives.
Entries are recorded twice: the caller's planned ``writes`` when the folder is claimed (so a run killed
part-way still lists them), and everything that appeared in the folder while it was held.

For the duration of the ``with`` block the folder is locked (``fcntl.flock`` on ``.metriclearn.lock``,
:func:`folder_lock`), so a second process writing the same folder fails at once with a clear message
instead of silently mixing or losing the first one's work. A claim that is refused, or whose block fails
before writing anything, leaves the folder as it found it: no marker, no lock, and no folder if the claim
made it.

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with claim_output_dir(root / "run", "run") as d:
...     _ = (d / "model.pt").write_text("weights")
>>> recorded_entries(root / "run")
['model.pt']
>>> with claim_output_dir(root / "run", "run"):  # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
    ...
ValueError: ...run already holds a metriclearn run; pass --overwrite to replace it
>>> _ = (root / "mine").mkdir(); _ = (root / "mine" / "model.pt").write_text("my own model")
>>> with claim_output_dir(root / "mine", "run", overwrite=True):  # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
    ...
ValueError: ...mine is not empty and was not written by metriclearn (it holds model.pt); ...
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from metriclearn._atomic import write_json

try:  # POSIX advisory locks; on platforms without fcntl the folder is used unlocked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no such module on this platform

MARKER = ".metriclearn.json"
LOCK = ".metriclearn.lock"
_OWN = {MARKER, LOCK}
_HELD: dict[str, int] = {}  # folders this process holds the lock of (realpath -> depth), so locks nest


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind recorded in ``path``'s marker, or ``None`` when it has none (or it is unreadable)."""
    marker = _read_marker(Path(path))
    return None if marker is None else marker["kind"]


def recorded_entries(path: str | os.PathLike[str]) -> list[str]:
    """The files and folders ``path``'s marker says metriclearn wrote (relative, sorted); ``[]`` without one."""
    marker = _read_marker(Path(path))
    return [] if marker is None else sorted(marker["entries"])


def check_output_dir(
    path: str | os.PathLike[str], kind: str, *, overwrite: bool = False, resume: bool = False,
    hint: str = "--overwrite",
) -> None:
    """Refuse ``path`` as :func:`claim_output_dir` would, without writing or locking anything.

    For checks before slow work (``--resume`` reads the run's files: refuse a user's folder first). Under
    torchrun only rank 0 checks (``RANK``): the other ranks never write, and their check would race with rank
    0's claim of the folder; when rank 0 refuses, torchrun stops the others.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose a folder for the output")
    if root.is_dir():
        _check(root, kind, _read_marker(root), overwrite or resume, hint)


@contextlib.contextmanager
def claim_output_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    writes: Iterable[str] = (),
    hint: str = "--overwrite",
) -> Iterator[Path]:
    """Claim ``path`` as an output folder of ``kind`` and hold its lock for the ``with`` block.

    Parameters
    ----------
    path : path-like
        The output folder; created (with parents) when missing.
    kind : str
        What the folder holds (``"run"``, ``"index"``, ``"report"`` …); a marker of another kind is refused.
    overwrite, resume : bool
        Accept a folder whose marker says it holds an output of this kind (the caller replaces or continues
        it; :func:`remove_recorded` deletes what the previous one wrote).
    writes : iterable of str
        Paths (relative to ``path``) the caller is about to write, recorded in the marker before the block
        runs, so that an interrupted command still lists them.
    hint : str
        How the user asks to replace an existing output, quoted in the refusal (``"--overwrite"``;
        ``"overwrite=True"`` from Python).

    Raises
    ------
    ValueError
        ``path`` is a file, holds another kind of output or files without a metriclearn marker, or holds
        an output of this kind and neither ``overwrite`` nor ``resume`` was given.
    RuntimeError
        Another process holds the folder's lock.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose a folder for the output")
    made = _missing_parents(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(root, nest=False):  # removes a lock file it made, unless the folder is marked when it lets go
            marker = _read_marker(root)
            _check(root, kind, marker, overwrite or resume, hint)
            before = _tree(root)
            planned = {*(marker["entries"] if marker else ()), *(_relative(w) for w in writes)}
            _write_marker(root, kind, planned)
            finished = False
            try:
                yield root
                finished = True
            finally:
                new = _tree(root) - before
                present = {entry for entry in planned if (root / entry).exists()}
                if finished:  # what is there now
                    _write_marker(root, kind, present | new)
                elif new or marker is not None:  # interrupted: keep the planned entries too (--resume)
                    _write_marker(root, kind, planned | new)
                else:  # a fresh claim whose command failed before writing anything: leave no trace
                    (root / MARKER).unlink(missing_ok=True)
    finally:
        for folder in made:  # the folders this claim created, if nothing was left in them
            with contextlib.suppress(OSError):
                folder.rmdir()


def remove_recorded(path: str | os.PathLike[str]) -> list[str]:
    """Delete what ``path``'s marker lists (files, then recorded folders left empty); return what went.

    Only the marker's entries: files the user added, inside recorded folders too, are kept (and so are the
    folders that hold them).
    """
    root = Path(path)
    gone = []
    for entry in sorted(recorded_entries(root), key=lambda e: (-e.count("/"), e)):  # deepest first
        target = root / entry
        if target.is_symlink() or target.is_file():
            target.unlink()
            gone.append(entry)
        elif target.is_dir():
            with contextlib.suppress(OSError):  # not empty: it holds a user's file
                target.rmdir()
                gone.append(entry)
    return gone


@contextlib.contextmanager
def record_written(path: str | os.PathLike[str], entry: str) -> Iterator[Path]:
    """Yield ``path/entry`` to write; afterwards add ``entry`` to the marker of ``path`` (if it has one).

    For a file a later command adds to an output folder (``evaluate`` writes ``evaluate.json`` into the run),
    so that the folder's record stays complete. The folder's lock is held meanwhile (waiting up to 10 s).
    """
    root = Path(path)
    if _read_marker(root) is None:  # not a marked output folder: nothing to record
        yield root / _relative(entry)
        return
    with folder_lock(root, wait=10.0):
        yield root / _relative(entry)
        marker = _read_marker(root)
        if marker is not None and (root / entry).exists():
            _write_marker(root, marker["kind"], {*marker["entries"], _relative(entry)})


def new_output_dir(parent: str | os.PathLike[str]) -> Path:
    """Reserve ``parent/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` … when taken) by creating it; return it.

    ``mkdir`` is atomic, so two processes started in the same second get different folders.
    """
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        candidate = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            n += 1
            continue
        return candidate


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike[str], wait: float = 0.0, nest: bool = True) -> Iterator[None]:
    """Hold ``path``'s writer lock (``flock`` on ``path/.metriclearn.lock``) for the ``with`` block.

    Waits up to ``wait`` seconds for another process to release it, then raises ``RuntimeError`` naming
    its pid. With ``nest``, code that already holds the lock in this process (a save inside a claim) just
    goes on; without it, that counts as another writer. A lock file that this call created in a folder
    without a marker is removed again on exit.
    """
    root = Path(path)
    key = os.path.realpath(root)
    if key in _HELD and not nest:
        raise RuntimeError(f"{root} is being written by another metriclearn process (pid {os.getpid()}); "
                           f"wait for it to finish or choose another folder")
    if fcntl is None or key in _HELD:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    existed = (root / LOCK).exists()
    with open(root / LOCK, "a+", encoding="utf-8") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "?"
                    raise RuntimeError(
                        f"{root} is being written by another metriclearn process (pid {holder}); "
                        f"wait for it to finish or choose another folder"
                    ) from None
                time.sleep(0.02)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            if not existed and not (root / MARKER).exists():
                (root / LOCK).unlink(missing_ok=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check(root: Path, kind: str, marker: dict[str, Any] | None, replace: bool, hint: str) -> None:
    """Refuse ``root`` (``ValueError``) unless it may hold an output of ``kind``."""
    found = None if marker is None else marker["kind"]
    if found is not None and found != kind:
        raise ValueError(f"{root} holds a metriclearn {found} output (this command writes a {kind}); "
                         "choose another folder")
    entries = sorted(p.name for p in root.iterdir() if p.name not in _OWN)
    if found is None and entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(
            f"{root} is not empty and was not written by metriclearn (it holds {shown}); "
            f"choose a new or empty folder"
        )
    if found == kind and entries and not replace:
        raise ValueError(f"{root} already holds a metriclearn {kind}; pass {hint} to replace it")


def _read_marker(root: Path) -> dict[str, Any] | None:
    """``{"kind", "entries"}`` of ``root``'s marker; ``None`` when missing, unreadable or not ours."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("tool") != "metriclearn" or not isinstance(marker.get("kind"), str):
        return None
    entries = marker.get("entries")
    entries = [e for e in entries if isinstance(e, str)] if isinstance(entries, list) else []
    return {"kind": marker["kind"], "entries": entries}


def _write_marker(root: Path, kind: str, entries: Iterable[str]) -> None:
    write_json(root / MARKER, {"tool": "metriclearn", "kind": kind, "entries": sorted(set(entries))})


def _tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative POSIX paths), but the marker, the lock and temp files."""
    found = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in (*dirs, *files):
            if not (rel == Path(".") and name in _OWN) and not (name.startswith(".") and name.endswith(".tmp")):
                found.add((rel / name).as_posix())
    return found


def _relative(entry: str) -> str:
    path = Path(entry)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"writes must be paths inside the output folder, got {entry!r}")
    return path.as_posix()


def _missing_parents(root: Path) -> list[Path]:
    """``root`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (root, *root.absolute().parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing
