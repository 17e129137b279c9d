"""build_scheduler: the plateau schedule follows the monitored metric's direction and refuses any other."""

from __future__ import annotations

import pytest
import torch

from metriclearn.training.optim import build_scheduler


def test_plateau_scheduler_follows_mode_and_refuses_others() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    assert build_scheduler("plateau", opt, total_steps=10, mode="min").mode == "min"
    assert build_scheduler("plateau", opt, total_steps=10).mode == "max"
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'up'"):
        build_scheduler("plateau", opt, total_steps=10, mode="up")
