"""torch.distributed helpers with the gloo backend, world_size=1, in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from metriclearn.training import Objective, Trainer, distributed
from metriclearn.training.objectives import lambda_loss


@pytest.fixture
def gloo(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + np.random.default_rng().integers(0, 2000)))
    assert distributed.init_from_env(backend="gloo")
    yield
    dist.destroy_process_group()


def test_without_process_group() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.init_from_env() is False  # no torchrun variables


def test_sharded_batch_sampler_partitions_each_batch() -> None:
    batches = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    shards = [list(distributed.ShardedBatchSampler(batches, rank=r, world_size=3)) for r in range(3)]
    for step in range(2):
        assert sorted(sum((s[step] for s in shards), [])) == sorted(batches[step])
    assert len(distributed.ShardedBatchSampler(batches, rank=0, world_size=3)) == 2
    with pytest.raises(ValueError, match="rank must lie in"):
        distributed.ShardedBatchSampler(batches, rank=3, world_size=3)


def test_gather_with_gradients_under_gloo(gloo) -> None:
    assert distributed.is_distributed() and distributed.world_size() == 1
    x = torch.randn(4, 3, requires_grad=True)
    gathered = distributed.all_gather_with_grad(x)
    gathered.pow(2).sum().backward()
    assert torch.equal(gathered, x) and torch.allclose(x.grad, 2 * x)
    labels = torch.arange(4)
    e, y = distributed.gather_batch(x, labels)
    assert torch.equal(y, labels) and e.shape == x.shape


def test_trainer_runs_inside_a_process_group(gloo) -> None:
    X = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    y = np.repeat(np.arange(4), 8)
    trainer = Trainer(nn.Linear(5, 3), Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())}),
                      batch_size=16, device="cpu", verbose=False)
    assert trainer.is_main_process
    history = trainer.fit((X, y), epochs=1)
    assert len(history) == 1
