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


@pytest.fixture
def blobs():
    """``blobs(n_per_class=12, classes=4, dim=6, spread=3.0, seed=0) -> (X float32 (n, dim), y int64 (n,))``:
    Gaussian clusters of unit variance around centres drawn with scale ``spread``."""

    def make(n_per_class: int = 12, classes: int = 4, dim: int = 6, spread: float = 3.0,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        gen = np.random.default_rng(seed)
        centers = gen.normal(scale=spread, size=(classes, dim))
        y = np.repeat(np.arange(classes), n_per_class)
        return (centers[y] + gen.normal(size=(len(y), dim))).astype(np.float32), y

    return make
