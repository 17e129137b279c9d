"""Helpers of the Lightning tests: a quiet CPU ``lightning.Trainer`` and uneven blobs with integer codes."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest




def quiet_trainer(max_epochs: int, callbacks: list[Any] | None = None, **kwargs: Any) -> Any:
    """``lightning.Trainer`` on one CPU process without logger, progress bar, summary or default checkpoints."""
    import lightning as L

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    options = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks or [])
    options.update(kwargs)
    return L.Trainer(**options)


def coded_blobs(counts: dict, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``make_blobs`` with labels as int codes 0..K-1 (uneven class counts on purpose)."""
    from conftest import make_blobs

    X, labels = make_blobs(counts, dim=dim, seed=seed)
    return X, np.unique(labels, return_inverse=True)[1].astype(np.int64)
