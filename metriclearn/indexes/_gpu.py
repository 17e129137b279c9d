"""Placing faiss indexes on GPUs (faiss-gpu only; faiss-cpu reports no GPU and everything stays on CPU).

The CPU index stays the source of truth: a GPU copy is made for searching (replicated on every visible
GPU, or sharded across them with ``shard=True``) and dropped whenever the CPU index changes, so saving
always writes the CPU index. Searches with k (or IVF nprobe) above faiss's GPU limit of 2048 run on
the CPU index, and so does an index type faiss cannot copy to the GPU (with a warning under
``device="auto"``; an error under ``device="cuda"``).

>>> resolve_index_device("cpu", "flat")
'cpu'
"""

from __future__ import annotations

import faiss

from metriclearn._checks import check_choice
from metriclearn._device import DEVICES  # re-exported as metriclearn.indexes.DEVICES

GPU_MAX_K = 2048  # faiss GPU k-selection limit (GPU_MAX_SELECTION_K); larger k searches on CPU
_CPU_ONLY_KINDS = ("hnsw",)


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu or when no GPU is visible)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def resolve_index_device(device: str, kind: str) -> str:
    """``"cpu"`` or ``"cuda"`` for an index ``kind``; ``"auto"`` picks the GPU when faiss can use one.

    HNSW has no faiss GPU implementation: ``"auto"`` keeps it on CPU and ``"cuda"`` is an error, as is
    ``"cuda"`` without a GPU.
    """
    check_choice(device, DEVICES, "device")
    cpu_only = kind.lower() in _CPU_ONLY_KINDS or kind.upper().startswith("HNSW")
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if gpu_count() == 0:
            raise ValueError(
                "device='cuda' but faiss sees no GPU (faiss-cpu installed, or no GPU visible); "
                "use device='cpu' or 'auto'"
            )
        if cpu_only:
            raise ValueError(f"kind {kind!r} has no faiss GPU implementation; use device='cpu' or 'auto'")
        return "cuda"
    return "cuda" if gpu_count() > 0 and not cpu_only else "cpu"


def to_gpus(cpu_index: faiss.Index, shard: bool = False) -> faiss.Index:
    """A copy of ``cpu_index`` on every visible GPU (replicas, or shards with ``shard=True``).

    Raises faiss's ``RuntimeError`` when this index type (or these parameters) has no GPU version,
    e.g. plain ``PQ``; the caller decides whether to fall back to CPU.
    """
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    return faiss.index_cpu_to_all_gpus(cpu_index, co=options)
