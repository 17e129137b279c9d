"""Resuming a run directory: the same command plus ``--resume`` continues a killed run exactly.

The rule
--------
* Every checkpoint carries the run's configuration *as it started* (``metadata["config"]``).
* :func:`resume_config` accepts settings equal to it — so re-running the very same command with
  ``--resume`` works — and refuses, in one message, every setting that differs (naming the key and
  both values) and every edit made to ``config.toml`` since the run started. Only :data:`RUNTIME_KEYS`
  (where the run computes, not what it computes) may change.
* :func:`run_state` tells a finished run (``model.pt`` is written last) from one that can continue.
* :func:`data_stamp` records what ``--data`` held when the run started (in every checkpoint's metadata);
  :func:`check_same_data` refuses, naming the file, to continue on data that changed since.
* :func:`clean_stale_temp_files` removes the temporary files a killed atomic write left behind.

Example
-------
>>> import tempfile, pathlib
>>> run_state(pathlib.Path(tempfile.mkdtemp()) / "new")
'new'
>>> differences({"epochs": 3, "lr": 0.1}, {"epochs": 9, "lr": 0.1})
['epochs (3 in the run, 9 now)']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from metriclearn._atomic import sha256
from metriclearn.training.config import TrainConfig
from metriclearn.training.trainer import load_checkpoint

RUNTIME_KEYS = ("device", "threads", "amp", "compile")
_TEMP_DIRS = ("", "checkpoints", "report")


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where the last full training state of a run lives."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def run_state(run_dir: str | os.PathLike[str]) -> str:
    """``"new"`` (no run yet), ``"started"`` (configured, no checkpoint yet), ``"partial"`` or ``"finished"``."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").exists():
        return "finished"
    if checkpoint_path(run_dir).exists():
        return "partial"
    return "started" if (run_dir / "config.toml").exists() else "new"


def started_config(run_dir: str | os.PathLike[str], checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configuration the run started with: the checkpoint's copy, else ``config.toml`` (no checkpoint yet)."""
    run_dir = Path(run_dir)
    if checkpoint is None and checkpoint_path(run_dir).exists():
        checkpoint = load_checkpoint(checkpoint_path(run_dir))
    if checkpoint is not None:
        saved = checkpoint.get("metadata", {}).get("config")
        if not isinstance(saved, dict):
            raise ValueError(f"{checkpoint_path(run_dir)}: the checkpoint does not record the run's configuration "
                             f"(written by another metriclearn version); start a new run")
        return TrainConfig.from_dict(saved).to_dict()
    path = run_dir / "config.toml"
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory (no run to resume; start it without --resume)",
                                str(path))
    return TrainConfig.from_toml(path).to_dict()


def differences(before: Mapping[str, Any], after: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """``"key (old in the run, new now)"`` for every key whose value differs, in key order."""
    keys = sorted((set(before) | set(after)) - set(skip))
    return [f"{k} ({before.get(k)!r} in the run, {after.get(k)!r} now)" for k in keys if before.get(k) != after.get(k)]


class ResumePoint(NamedTuple):
    """What :func:`resume_config` decided: the configuration to continue with and the checkpoint it continues
    (``None``: the run was killed before its first checkpoint and starts over). Unpacks as ``config, checkpoint``."""

    config: TrainConfig
    checkpoint: dict[str, Any] | None


def resume_config(run_dir: str | os.PathLike[str], requested: Mapping[str, Any] | None = None) -> ResumePoint:
    """The configuration to continue ``run_dir`` with, given the settings the user passed again, and its checkpoint.

    ``requested`` holds the keys given on the command line or in ``--config`` (all optional). Values
    equal to the started run's are accepted; any difference outside :data:`RUNTIME_KEYS`, and any edit
    of ``config.toml`` since the run started, raises ``ValueError`` naming each key and both values.
    The one place where a resume is checked: ``checkpoints/last.pt`` is loaded here, once, and handed on
    (:func:`~metriclearn.training.run.train_run` takes the :class:`ResumePoint`).
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(checkpoint_path(run_dir)) if checkpoint_path(run_dir).exists() else None
    started = started_config(run_dir, checkpoint)
    toml_path = run_dir / "config.toml"
    if toml_path.exists() and checkpoint is not None:
        edits = differences(started, TrainConfig.from_toml(toml_path).to_dict())
        if edits:
            raise ValueError(f"{toml_path} was edited since the run started: {'; '.join(edits)}; "
                             f"undo the edit to resume, or start a new run in another --out")
    try:
        config = TrainConfig.from_dict({**started, **dict(requested or {})})
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"--resume: {exc}") from None
    changed = differences(started, config.to_dict(), skip=RUNTIME_KEYS)
    if changed:
        raise ValueError(f"--resume continues {run_dir} with the settings it started with, but these differ: "
                         f"{'; '.join(changed)}; drop them, or start a new run in another --out")
    return ResumePoint(config, checkpoint)


def data_stamp(source: str, n: int, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """What the training data is: its source, size, sample shape, classes and, for a file, its SHA-256."""
    stamp: dict[str, Any] = {"source": str(source), "n": int(n), "shape": [int(s) for s in input_shape],
                             "classes": int(num_classes)}
    if Path(source).is_file():
        stamp["sha256"] = sha256(source)
    return stamp


def check_same_data(checkpoint: Mapping[str, Any] | None, now: Mapping[str, Any]) -> None:
    """Refuse to resume on data other than the run's: a ``ValueError`` naming the file and what changed.

    Checkpoints written before the data was recorded carry no stamp and are not checked.
    """
    before = None if checkpoint is None else checkpoint.get("metadata", {}).get("data")
    if before is None or dict(before) == dict(now):
        return
    def shape(s: Mapping[str, Any]) -> str:
        return f"{s['n']} samples of shape {tuple(s['shape'])} in {s['classes']} classes"
    what = (f"{shape(before)} then, {shape(now)} now" if shape(before) != shape(now)
            else "same size, other contents: its SHA-256 differs")
    raise ValueError(f"--data {now['source']} changed since the run started ({what}); restore the file to resume, "
                     "or start a new run in another --out")


def clean_stale_temp_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.NAME.XXXX.tmp`` files killed atomic writes left in the run's folders; return them."""
    removed = []
    for sub in _TEMP_DIRS:
        folder = Path(run_dir) / sub
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed
