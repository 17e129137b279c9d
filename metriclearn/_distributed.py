"""Generic torch.distributed helpers, for training, search and classification alike; importing it imports no torch.

Rank, world size and main process without importing torch: a process group exists only after
``torch.distributed`` was imported and initialised (the CLI does it when started by torchrun), so when
``torch.distributed`` is not in ``sys.modules`` this is a plain single process, rank 0 of 1. Commands that
never compute with torch (``index query`` / ``index info`` / ``classify --method knn`` on ``.npy`` files) ask
here and stay free of torch's ~1.6 s import (BENCHMARKS.md, "CLI start-up"). The functions that compute
import torch when called:

- joining torchrun's process group and leaving it together (:func:`process_group`, :func:`init_from_env`,
  :func:`leave_group`);
- decisions taken on rank 0 and given to every rank (:func:`decide_on_main`, :func:`broadcast_object`);
- numpy collectives for inference (:func:`broadcast_array`, :func:`all_gather_array`) and inference shared
  out over the ranks (:func:`embed_strided`).

    rank()            = dist.get_rank()       with a process group, else 0
    world_size()      = dist.get_world_size() with a process group, else 1
    is_main_process() = rank() == 0           (the only process that writes files and prints)

The DDP training machinery (sharded batches, gathers with gradients, global batch norm) lives in
:mod:`metriclearn.training.distributed`. ``docs/SCALING.md`` has the torchrun command lines.

Example
-------
>>> rank(), world_size(), is_main_process()  # no process group in a plain interpreter
(0, 1, True)
>>> decide_on_main(max, 3, 4)
4
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor


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


def init_from_env(backend: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.

    Returns ``True`` when a group is initialised (now or before), ``False`` when the variables are absent
    (a plain single-process run). ``backend="auto"`` picks NCCL with CUDA, else gloo. The caller owns a
    group it made: leave it with :func:`leave_group`, or use :func:`process_group`, which does both.
    """
    import torch
    import torch.distributed as dist

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


def leave_group() -> None:
    """Wait for every rank at a barrier, then destroy the process group (no-op without one).

    Why the barrier: a gloo worker thread frees each finished collective after the caller has moved on,
    and freeing one can need the GIL (the collective's saved thread-local state holds Python objects).
    A rank that leaves its last collective and exits at once (rank 1 while rank 0 still writes the
    run) can reach interpreter shutdown first; the worker thread then dies inside a destructor and the
    process aborts ("terminate called without an active exception"). ``destroy_process_group`` does
    not join those threads (DDP keeps a reference to the group), so waiting at a barrier, with the GIL
    released, is what lets them finish. Every rank must call it, after its last collective.
    """
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: str = "auto", timeout_s: float = 1800.0) -> Iterator[bool]:
    """Join torchrun's process group for a block; the block that made the group also leaves it.

    Yields whether a group is in use. A group made here is left with :func:`leave_group` when the
    block ends normally (every rank waits for the others, e.g. for rank 0's writes, then tears it down);
    when the block raises, no barrier is entered (the other ranks may never reach it: torchrun stops
    them). A group that already existed is left to its maker. Without torchrun's variables it is a no-op.

    >>> with process_group() as distributed:  # a single process
    ...     distributed
    False
    """
    made = not is_distributed() and init_from_env(backend, timeout_s)
    yield is_distributed()  # an exception in the block propagates from here: no barrier
    if made:
        leave_group()


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun with GPUs, else CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Pad ``x`` to ``max(sizes)`` rows, all_gather, trim each part to its size and concatenate."""
    import torch
    import torch.distributed as dist

    longest = max(sizes)
    x = x.contiguous()
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects; ``obj`` itself in one process)."""
    import torch.distributed as dist

    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decide_on_main(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` on rank 0 only and give its result to every rank.

    Used for validation (rank 0 embeds the held-out set, the others wait) and any decision that must be
    the same everywhere (early stopping, ``best.pt``): a rank that decided alone would leave the others
    waiting in the next collective. An exception on rank 0 is re-raised on every rank.
    """
    if world_size() == 1:
        return fn(*args)
    result: Any = None
    if is_main_process():
        try:
            result = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - travels to the other ranks, then re-raised
            result = ("error", exc)
    status, value = broadcast_object(result)
    if status == "error":
        raise value
    return value


# ---------------------------------------------------------------------------- numpy arrays (inference)
def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, else CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Rank ``src``'s numeric array on every rank (shape and dtype travel first); ``array`` in one process."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        assert array is not None
        return array
    header = broadcast_object(None if rank() != src or array is None else (array.shape, array.dtype.str))
    shape, dtype = header
    if rank() == src:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_comm_device())
    else:
        tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, device=_comm_device())
    dist.broadcast(tensor, src=src)
    return tensor.cpu().numpy()


def all_gather_array(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's ``array`` (same shape and dtype on every rank), in rank order."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return [array]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_comm_device())
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return [part.cpu().numpy() for part in parts]


def embed_strided(embed: Callable[[Any], np.ndarray], X: Any) -> np.ndarray:
    """``embed(X)``, shared out: rank r embeds the strided shard ``X[r::W]``; every rank gets all rows in input order.

    ``X`` is anything that slices with a step (an array, a list of texts). The shards are gathered with
    their sizes (a rank may have none when ``len(X) < W``) and interleaved back, so the result equals one
    process's ``embed(X)`` row for row (up to the float round-off of other batch shapes).

    >>> embed_strided(lambda part: np.asarray(part, dtype=np.float32)[:, None] * 2, [1, 2, 3])  # one process
    array([[2.],
           [4.],
           [6.]], dtype=float32)
    """
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return embed(X)
    w, r, n = world_size(), rank(), len(X)
    part = embed(X[r::w]) if r < n else None  # (ceil((n - r) / w), D)
    width = torch.tensor([0 if part is None else part.shape[1]], dtype=torch.long, device=_comm_device())
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    local = torch.from_numpy(np.empty((0, int(width)), np.float32) if part is None else np.ascontiguousarray(part))
    rows = [len(range(s, n, w)) for s in range(w)]
    gathered = _gather_padded(local.to(_comm_device()), rows).cpu().numpy()  # (n, D) rank after rank
    out = np.empty((n, int(width)), dtype=gathered.dtype)
    offsets = np.cumsum([0, *rows])
    for s in range(w):
        out[s::w] = gathered[offsets[s] : offsets[s + 1]]
    return out
