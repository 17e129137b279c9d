"""torch.distributed helpers with the gloo backend, world_size=1, in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from metriclearn.training import Objective, Trainer, distributed
from metriclearn.training.objectives import lambda_loss


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gloo(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
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


def _train_linear(X: np.ndarray, y: np.ndarray, combine: str) -> dict[str, torch.Tensor]:
    from metriclearn.training import build_objective

    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    terms = [("neighborhood", 1.0)] if combine == "sum" else [("neighborhood", 1.0), ("softmax", 0.5)]
    objective = build_objective(terms, 4, 4, combine=combine,
                                loss_options={"neighborhood": {"temperature": 0.5, "distance": "cosine"}})
    # plain SGD: Adam would blow float round-off in near-zero gradients up to full-size steps
    optimizer = torch.optim.SGD([*model.parameters(), *objective.parameters()], lr=0.5)
    trainer = Trainer(model, objective, optimizer, batch_size=16, samples_per_class=4, scheduler="none",
                      device="cpu", verbose=False)
    trainer.fit((X, y), epochs=2)
    return {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()} | {
        f"objective.{k}": v.detach().clone() for k, v in objective.state_dict().items()}


def _worker(rank: int, world: int, port: int, X: np.ndarray, y: np.ndarray, out: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env(backend="gloo")
    try:
        weights = {combine: _train_linear(X, y, combine) for combine in ("sum", "pcgrad")}
        if rank == 0:
            torch.save(weights, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path) -> None:
    """2 gloo ranks, each embedding half of every class-balanced batch, reach the single-process weights."""
    # (sum: DDP's gradient averaging; pcgrad: autograd.grad outside DDP, task gradients averaged by hand)
    import torch.multiprocessing as mp

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 16)
    X = (rng.normal(size=(4, 6))[y] + rng.normal(size=(64, 6))).astype(np.float32)
    port = _free_port()
    mp.spawn(_worker, args=(2, port, X, y, str(tmp_path / "w.pt")), nprocs=2, join=True)
    two = torch.load(tmp_path / "w.pt", weights_only=True)
    for combine in ("sum", "pcgrad"):  # pcgrad: per-task gradients averaged over ranks before the surgery
        one = _train_linear(X, y, combine)
        for key in one:
            assert torch.allclose(one[key], two[combine][key], atol=1e-5), (combine, key)
