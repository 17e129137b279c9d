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
