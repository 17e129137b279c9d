"""torch.distributed helpers: set-up from ``torchrun``, sharded class-balanced batches, gathered losses.

Batch losses (neighbourhood softmax, SNN, cache) compare every sample with every other one, so with
several processes each rank embeds its shard of the global batch and the loss is computed on the
embeddings of all ranks, gathered *with* gradients (:func:`all_gather_with_grad`). Every rank then
holds the same global loss L. The gather's backward sums the gradients all ranks computed for each
slice, so rank r receives W · ∂L/∂e_r (W = world size); DDP then averages the model gradients over the
ranks: (1/W) Σ_r W · ∂L/∂e_r · ∂e_r/∂θ = ∂L/∂θ, the single-process gradient of the global batch. The
objective's own parameters (heads, centroids) see the whole gathered batch on every rank, so their
gradients are already the full, identical ones. PCGrad takes per-task gradients with
``torch.autograd.grad``, which DDP's hooks never see, so the trainer runs those steps under
``no_sync()`` and averages each task gradient over the ranks (:func:`all_reduce_mean`) before the
projections, which need the global task gradients.

Run with ``torchrun --nproc_per_node=N -m metriclearn.cli train ...``; only rank 0 writes files.

Example
-------
>>> world_size(), rank()  # without torch.distributed
(1, 0)
>>> list(ShardedBatchSampler([[0, 1, 2, 3], [4, 5, 6, 7]], rank=1, world_size=2))
[[1, 3], [5, 7]]
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the only process that writes files."""
    return rank() == 0


def init_from_env(backend: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.

    Returns ``True`` when a group was initialised, ``False`` when the variables are absent (a plain
    single-process run). ``backend="auto"`` picks NCCL with CUDA, else gloo.
    """
    if is_distributed():
        return True
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun with GPUs, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class ShardedBatchSampler:
    """Give rank r the samples ``batch[r::world_size]`` of every batch of a batch sampler.

    Every rank builds the same batch sampler (same seed), so the shards of one step together form the
    global class-balanced batch; a strided slice keeps each shard balanced over the batch's classes
    (batches list a class's samples together). ``set_epoch``/``state_dict``/``load_state_dict`` pass through.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], rank: int | None = None, world_size: int | None = None):
        self.batch_sampler = batch_sampler
        self.rank = globals()["rank"]() if rank is None else rank
        self.world_size = globals()["world_size"]() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size={self.world_size}), got {self.rank}")

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            yield list(batch)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict() if hasattr(self.batch_sampler, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.batch_sampler, "load_state_dict"):
            self.batch_sampler.load_state_dict(state)


def shard_batches(batch_sampler: Any) -> Any:
    """The sampler itself in a single process, else a :class:`ShardedBatchSampler` for this rank."""
    return batch_sampler if world_size() == 1 else ShardedBatchSampler(batch_sampler)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (W * b, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]  # (b, ...)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (b, ...) from every rank along dim 0 (equal b on every rank).

    Gradients flow back to each rank's slice, summed over the ranks' losses.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_gather_tensor(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no gradient; equal shapes on every rank)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the processes (``x`` itself in a single process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def gather_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The global batch: embeddings (with gradients) and labels of every rank."""
    if world_size() == 1:
        return embeddings, labels
    return all_gather_with_grad(embeddings), all_gather_tensor(labels)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module | None:
    """``DistributedDataParallel(model)`` when running on several processes, else ``None``."""
    if world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
