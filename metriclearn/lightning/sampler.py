"""Class-balanced batches for Lightning: a ``DistributedSampler`` that yields each rank's shard of every batch.

Lightning replaces a ``DataLoader``'s sampler by a ``DistributedSampler`` under DDP unless the sampler already
is one, and it calls ``set_epoch`` on it every epoch. :class:`DistributedClassBalancedSampler` is one: every
rank builds the same :class:`~metriclearn.sampler.ClassBalancedSampler` batches (same labels, seed and epoch)
and takes the strided shard ``batch[rank::world_size]`` of each
(:class:`~metriclearn.training.distributed.ShardedBatchSampler`), so the shards of one step form the global
class-balanced batch that :func:`~metriclearn.training.distributed.gather_batch` puts back together. Rank and
world size are read when iterating, after Lightning has started the process group. An epoch whose last batch
holds a single sample passes it over, as metriclearn's trainer does (nothing to compare it with; it comes back
next epoch).

:func:`balanced_loader` wraps it in a ``DataLoader(batch_size=None)`` over an :class:`IndexedDataset`, whose
batches are ``(inputs, labels, ids)``: the ids keep ``CacheLoss`` from matching a sample with its own cached copy.

Example
-------
>>> import numpy as np
>>> sampler = DistributedClassBalancedSampler([0, 0, 1, 1, 2, 2, 0, 1], 4, 2, num_replicas=2, rank=1)
>>> [len(shard) for shard in sampler]  # two global batches of 4: this rank's 2 of each
[2, 2]
>>> x, y, ids = next(iter(balanced_loader(np.zeros((8, 3), np.float32), [0, 0, 1, 1, 2, 2, 0, 1], 4, 2)))
>>> tuple(x.shape), y.tolist() == [[0, 0, 1, 1, 2, 2, 0, 1][i] for i in ids.tolist()]
((4, 3), True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from metriclearn._checks import check_positive_int
from metriclearn.sampler import ClassBalancedSampler
from metriclearn.training import distributed as dist_utils
from metriclearn.training.config import TrainConfig


class IndexedDataset(Dataset):
    """``dataset[indices] -> (inputs, labels (b,) int64, ids (b,) int64)`` for a whole batch of indices.

    ``X``: an array (n, ...) (served as float32 tensors) or a list of texts; ``y``: (n,) integer labels.
    """

    def __init__(self, X: Any, y: Any) -> None:
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be a 1-D integer array, got {y.dtype} with shape {y.shape}")
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)} labels")
        self.X = np.ascontiguousarray(X, dtype=np.float32) if isinstance(X, np.ndarray) else X
        self.y = y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.X, np.ndarray):
            inputs: Any = torch.from_numpy(self.X[idx])
        elif isinstance(self.X, torch.Tensor):
            inputs = self.X[torch.from_numpy(idx)]
        else:
            inputs = [self.X[i] for i in idx.tolist()]
        return inputs, torch.from_numpy(self.y[idx]), torch.from_numpy(idx)


class DistributedClassBalancedSampler(DistributedSampler):
    """Batches of K classes × M samples (:class:`~metriclearn.sampler.ClassBalancedSampler`), sharded by rank.

    Parameters
    ----------
    labels, batch_size, samples_per_class, seed:
        As :class:`~metriclearn.sampler.ClassBalancedSampler`; ``batch_size`` is the *global* batch.
    num_replicas, rank:
        ``None``: read from ``torch.distributed`` when iterating (1 and 0 without a process group).

    Yields lists of dataset indices (use it as the ``sampler`` of a ``DataLoader(batch_size=None)``, see
    :func:`balanced_loader`). ``set_epoch``, ``state_dict`` and ``load_state_dict`` work as on the wrapped sampler.
    """

    def __init__(self, labels: Any, batch_size: int = TrainConfig.batch_size,
                 samples_per_class: int = TrainConfig.samples_per_class, seed: int = TrainConfig.seed,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        torch.utils.data.Sampler.__init__(self)  # DistributedSampler's own __init__ needs a process group
        self.batches = ClassBalancedSampler(labels, batch_size, samples_per_class, seed=seed)
        self.batch_size, self.samples_per_class, self.seed = batch_size, samples_per_class, seed
        self._num_replicas = None if num_replicas is None else check_positive_int(num_replicas, "num_replicas")
        self._rank = rank
        self.shuffle, self.drop_last = True, False
        self.epoch = 0
        self.lone_last_batch = self.batches.num_samples % batch_size == 1 and len(self.batches) > 1

    @property
    def num_replicas(self) -> int:  # type: ignore[override]  # an attribute in DistributedSampler; read lazily here
        return self._num_replicas if self._num_replicas is not None else dist_utils.world_size()

    @property
    def rank(self) -> int:  # type: ignore[override]  # an attribute in DistributedSampler; read lazily here
        return self._rank if self._rank is not None else dist_utils.rank()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) - self.lone_last_batch

    def __iter__(self) -> Iterator[list[int]]:
        shards = dist_utils.ShardedBatchSampler(self.batches, rank=self.rank, world_size=self.num_replicas)
        for step, shard in enumerate(shards):
            if step < len(self):
                yield shard

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


def balanced_loader(X: Any, y: Any, batch_size: int = TrainConfig.batch_size,
                    samples_per_class: int = TrainConfig.samples_per_class, seed: int = TrainConfig.seed,
                    num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` of class-balanced ``(inputs, labels, ids)`` batches of ``(X, y)`` (see the module docstring)."""
    sampler = DistributedClassBalancedSampler(y, batch_size, samples_per_class, seed)
    return DataLoader(IndexedDataset(X, y), sampler=sampler, batch_size=None, num_workers=num_workers)
