"""Shared fixtures: small seeded data, a temporary directory, and a quiet, single-threaded torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs two workers on a 2-core machine


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def _torchrun(*args: str, nproc: int = 2, timeout: float = 300):
    """``torchrun --standalone --nproc_per_node=nproc $(command -v metriclearn) ARGS`` (gloo, 1 thread each)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("metriclearn")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def torchrun():
    """Run the real CLI under torchrun on 2 CPU processes (distributed tests)."""
    return _torchrun
