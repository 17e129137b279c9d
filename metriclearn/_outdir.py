"""Output folders that never lose a user's files: claimed only when new, empty or made by metriclearn.

Every command that writes a folder (``train --out``, ``index build --out``, ``report --out`` …) claims it
first with :func:`claim_output_dir`:

* a folder that does not exist, or is empty, is created and marked as this tool's (a small JSON marker,
  ``.metriclearn.json``, that names the kind of output);
* a folder that carries the marker of the same kind is accepted only when the caller continues it
  (``resume=True``) or replaces it (``overwrite=True``); a different kind is always refused;
* anything else (a folder with files metriclearn did not make) is refused, and nothing is written.

For the duration of the ``with`` block the folder is locked (``fcntl.flock`` on ``.metriclearn.lock``),
so a second process writing the same folder fails at once with a clear message instead of silently
mixing or losing the first one's work.

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with claim_output_dir(root / "run", "run") as d:
...     _ = (d / "model.pt").write_text("weights")
>>> with claim_output_dir(root / "run", "run"):  # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
    ...
ValueError: ...run already holds a metriclearn run; pass --overwrite to replace it
>>> _ = (root / "mine").mkdir(); _ = (root / "mine" / "notes.txt").write_text("keep me")
>>> with claim_output_dir(root / "mine", "index"):  # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
    ...
ValueError: ...mine is not empty and was not written by metriclearn (it holds notes.txt); ...
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from metriclearn._atomic import write_json

try:  # POSIX advisory locks; on platforms without fcntl the folder is used unlocked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER = ".metriclearn.json"
LOCK = ".metriclearn.lock"
_OWN = {MARKER, LOCK}


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind recorded in ``path``'s marker, or ``None`` when it has none (or it is unreadable)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = marker.get("kind") if isinstance(marker, dict) else None
    return kind if isinstance(kind, str) else None


def check_output_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    legacy: Iterable[str] = (),
    hint: str = "--overwrite",
) -> None:
    """Refuse ``path`` now, for the reasons :func:`claim_output_dir` would later, without writing anything.

    Commands call it before any slow work (loading, embedding, tuning, training) so that a folder they may
    not write is refused at once; :func:`claim_output_dir` still checks again, under the lock, when writing.

    >>> import tempfile, pathlib
    >>> check_output_dir(pathlib.Path(tempfile.mkdtemp()) / "new", "index")  # missing: fine, and not created
    """
    root = Path(path)
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose a folder for the output")
    _claim(root, kind, overwrite or resume, legacy, hint, mark=False)


@contextlib.contextmanager
def claim_output_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    legacy: Iterable[str] = (),
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
        Accept a folder that already holds an output of this kind (the caller replaces or continues it).
    legacy : iterable of str
        File names that identify an output of this kind written before markers existed (e.g.
        ``("index.json",)``); such a folder counts as this tool's and gains the marker.
    hint : str
        How the user asks to replace an existing output, quoted in the refusal (``"--overwrite"``;
        ``"overwrite=True"`` from Python).

    Raises
    ------
    ValueError
        ``path`` is a file, holds another kind of output or files metriclearn did not write, or holds an
        output of this kind and neither ``overwrite`` nor ``resume`` was given.
    RuntimeError
        Another process holds the folder's lock.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose a folder for the output")
    root.mkdir(parents=True, exist_ok=True)
    lock_was_there = (root / LOCK).exists()
    with _locked(root):
        try:
            _claim(root, kind, overwrite or resume, legacy, hint)
        except ValueError:  # refused: leave no trace of this tool in a folder it may not write
            if not lock_was_there:
                (root / LOCK).unlink(missing_ok=True)
            raise
        yield root


def _claim(root: Path, kind: str, replace: bool, legacy: Iterable[str], hint: str, mark: bool = True) -> None:
    """Check ``root`` may hold an output of ``kind`` (the lock is held) and mark it; else ``ValueError``."""
    found = output_kind(root)
    entries = sorted(p.name for p in root.iterdir() if p.name not in _OWN)
    if found is None and entries and any((root / name).exists() for name in legacy):
        found = kind
    if found is not None and found != kind:
        raise ValueError(f"{root} holds a metriclearn {found} output (this command writes a {kind}); choose another folder")
    if found is None and entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(
            f"{root} is not empty and was not written by metriclearn (it holds {shown}); "
            f"choose a new or empty folder"
        )
    if found == kind and entries and not replace:
        raise ValueError(f"{root} already holds a metriclearn {kind}; pass {hint} to replace it")
    if mark:
        write_json(root / MARKER, {"tool": "metriclearn", "kind": kind})


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(root / LOCK, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise RuntimeError(
                f"{root} is being written by another metriclearn process (pid {holder}); "
                f"wait for it to finish or choose another folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

