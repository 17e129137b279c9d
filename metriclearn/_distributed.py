"""This process's place under ``torchrun``: rank, world size, main process, without importing torch.

A process group exists only after ``torch.distributed`` was imported and initialised (the CLI does it when
started by torchrun, :func:`metriclearn.training.distributed.init_from_env`). So when ``torch.distributed``
is not in ``sys.modules`` this is a plain single process: rank 0 of 1. Commands that never compute with torch
(``index query`` / ``index info`` / ``classify --method knn`` on ``.npy`` files) ask here and stay free of
torch's ~1.6 s import (BENCHMARKS.md, "CLI start-up").

    rank()            = dist.get_rank()       with a process group, else 0
    world_size()      = dist.get_world_size() with a process group, else 1
    is_main_process() = rank() == 0           (the only process that writes files and prints)

Example
-------
>>> rank(), world_size(), is_main_process()  # no process group in a plain interpreter
(0, 1, True)
"""

from __future__ import annotations

import sys


def is_distributed() -> bool:
    """Whether a process group is initialised (``False`` when torch.distributed was never imported)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and bool(dist.is_available()) and bool(dist.is_initialized())


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return int(sys.modules["torch.distributed"].get_rank()) if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return int(sys.modules["torch.distributed"].get_world_size()) if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the only process that writes files."""
    return rank() == 0
