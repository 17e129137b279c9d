"""DDP training machinery: sharded class-balanced batches, gathers with gradients, global batch norm.

The generic helpers (joining torchrun's group, rank, :func:`decide_on_main`, numpy collectives,
:func:`embed_strided`) live in :mod:`metriclearn._distributed`; they are importable from here too.

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

Shards may differ in size (the last batch of an epoch rarely divides by the world size, and may leave
a rank nothing): :func:`gather_batch` exchanges the sizes, pads, gathers and trims. Batch norms become
global (:class:`GlobalBatchNorm`), so a step normalises the whole batch as one process would; the
gathered batch is bitwise the same on every rank, so the cache of ``CacheLoss`` and the EMA centroids
of ``PrototypeLoss`` (moved by class sums over the gathered batch, i.e. the all-reduced class sums)
stay identical on every rank. Rank 0 validates and decides (:func:`decide_on_main`,
:func:`broadcast_object`): early stopping, ``best.pt`` and the logs follow its numbers everywhere.

Run with ``torchrun --standalone --nproc_per_node=N $(command -v metriclearn) train ...``; only rank 0
writes files. ``docs/SCALING.md`` has the multi-node form and measured costs.

Example
-------
>>> world_size(), rank()  # without torch.distributed
(1, 0)
>>> list(ShardedBatchSampler([[0, 1, 2, 3], [4, 5, 6, 7]], rank=1, world_size=2))
[[1, 3], [5, 7]]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

# the generic helpers live in metriclearn._distributed; imported here by their old names too
from metriclearn._distributed import (
    _gather_padded,
    all_gather_array,
    broadcast_array,
    broadcast_object,
    decide_on_main,
    embed_strided,
    init_from_env,
    is_distributed,
    is_main_process,
    leave_group,
    local_device,
    process_group,
    rank,
    world_size,
)

__all__ = [
    "GlobalBatchNorm", "ShardedBatchSampler", "all_gather_array", "all_gather_tensor", "all_gather_with_grad",
    "all_reduce_mean", "broadcast_array", "broadcast_module", "broadcast_object", "convert_batchnorm",
    "decide_on_main", "embed_strided", "gather_batch", "gathered_sizes", "global_batch_size", "init_from_env",
    "is_distributed", "is_main_process", "leave_group", "local_device", "process_group", "rank", "shard_batches",
    "world_size", "wrap_model",
]


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
        self.last_batch_size = 0

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            self.last_batch_size = len(batch)  # the global batch this shard belongs to
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]  # a sized batch sampler, typed by what __iter__ needs

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


def global_batch_size(sampler: Any, shard: list[int]) -> int:
    """Samples in the global batch that ``shard`` (just drawn from ``sampler``) belongs to."""
    return sampler.last_batch_size if isinstance(sampler, ShardedBatchSampler) else len(shard)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (no-op in one process)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


class _GatherWithGrad(torch.autograd.Function):
    """Variable-size all_gather whose backward all-reduces (sums) the gradient and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.start = sum(sizes[: dist.get_rank()])
        ctx.rows = x.shape[0]
        return _gather_padded(x, sizes)  # (Σ sizes, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.rows], None  # (b_r, ...)


def gathered_sizes(rows: int) -> list[int]:
    """The number of rows every rank holds (one all_gather of one integer); ``[rows]`` in a single process."""
    if world_size() == 1:
        return [rows]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.tensor([rows], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [int(p) for p in parts]


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` (b_r, ...) from every rank along dim 0; the b_r may differ (and be 0).

    Sizes are exchanged (or given as ``sizes``), each part is padded to the largest, gathered and
    trimmed. Gradients flow back to each rank's own rows, summed over the ranks' losses.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x, sizes if sizes is not None else gathered_sizes(x.shape[0]))


def all_gather_tensor(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` (b_r, ...) from every rank along dim 0, b_r may differ (no gradient)."""
    if world_size() == 1:
        return x
    return _gather_padded(x.detach(), sizes if sizes is not None else gathered_sizes(x.shape[0]))


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the processes (``x`` itself in a single process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def gather_batch(
    embeddings: Tensor, labels: Tensor, ids: Tensor | None = None, sides: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The global batch: embeddings (with gradients), labels, ids and sides of every rank, in rank order.

    Shards may differ in size (the last batch of an epoch rarely divides by the world size); one
    exchange of sizes serves the gathers, and labels, ids and sides travel in one message.
    """
    if world_size() == 1:
        return embeddings, labels, ids, sides
    sizes = gathered_sizes(embeddings.shape[0])
    extra = [t for t in (ids, sides) if t is not None]
    tags = torch.stack([labels, *(t.to(labels.dtype) for t in extra)], dim=1)  # (b, 1..3)
    tags = all_gather_tensor(tags, sizes)  # (B, 1..3)
    ids = None if ids is None else tags[:, 1]
    sides = None if sides is None else tags[:, -1]
    return all_gather_with_grad(embeddings, sizes), tags[:, 0], ids, sides


class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks; the gradient of a sum of every rank's loss w.r.t. each input is again the Σ over ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch of all ranks, on any device (gloo on CPU included).

    In training mode under torch.distributed the per-channel statistics are those of the concatenated
    shards, computed in two passes like :class:`torch.nn.BatchNorm1d`: μ = Σ_r Σ x / Σ_r n, then
    σ² = Σ_r Σ (x − μ)² / Σ_r n, each with one differentiable all-reduce,
    so the output and its gradient equal single-process batch norm on the whole batch.
    (:class:`torch.nn.SyncBatchNorm` does the same but only on GPUs.) Running statistics use the
    unbiased global variance. In eval mode, or in a single process, it is plain batch norm. Shards may
    be empty. The state dict keys are those of ``BatchNorm*d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats is not False) or world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        all_reduce = _AllReduceSum.apply
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = all_reduce(input.new_tensor([float(input.numel() // max(input.shape[1], 1))]))  # (1,) Σ_r n
        mean = all_reduce(input.sum(dim=dims)) / count  # (C,)
        centred = input - mean.reshape(shape)
        var = all_reduce(centred.square().sum(dim=dims)) / count  # (C,) biased
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        if tracked is not None and running_mean is not None and running_var is not None:  # track_running_stats
            with torch.no_grad():
                tracked.add_(1)
                factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
                running_var.lerp_(unbiased.to(running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm*d`` in ``module`` by a global-batch one (same parameters and buffers).

    On CUDA :class:`torch.nn.SyncBatchNorm`, else :class:`GlobalBatchNorm`. Returns ``module`` (changed in
    place where it is not itself a batch norm); the optimiser keeps working (the parameters are the same objects).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (GlobalBatchNorm, nn.SyncBatchNorm)
    ):
        on_cuda = module.running_mean is not None and module.running_mean.is_cuda
        new = (nn.SyncBatchNorm if on_cuda else GlobalBatchNorm)(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module


def wrap_model(model: nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel | None:
    """``DistributedDataParallel(model)`` when running on several processes, else ``None``.

    Batch norms are first made global (:func:`convert_batchnorm`), so the shards of a step are
    normalised together, as one process would normalise the whole batch.
    """
    if world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    convert_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
