"""Placing faiss indexes on GPUs (faiss-gpu only; faiss-cpu reports no GPU and everything stays on CPU).

The CPU index stays the source of truth: a GPU copy is made for searching (replicated on every visible
GPU, or sharded across them with ``shard=True``) and dropped whenever the CPU index changes, so saving
always writes the CPU index. Searches with k above faiss's GPU limit run on the CPU index.

>>> resolve_device("cpu", "flat")
'cpu'
"""

from __future__ import annotations

import faiss

from metriclearn._checks import check_choice

DEVICES = ("auto", "cpu", "cuda")
GPU_MAX_K = 2048  # faiss GPU k-selection limit (GPU_MAX_SELECTION_K); larger k searches on CPU
_CPU_ONLY_KINDS = ("hnsw",)


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu or when no GPU is visible)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def resolve_device(device: str, kind: str) -> str:
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


def to_gpus(cpu_index: faiss.Index, shard: bool = False) -> faiss.Index | None:
    """A copy of ``cpu_index`` on every visible GPU (replicas, or shards with ``shard=True``).

    Returns ``None`` when faiss has no GPU version of this index type (e.g. plain ``PQ``), so the
    caller keeps searching on CPU.
    """
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index, co=options)
    except RuntimeError as exc:
        if "not implemented" in str(exc).lower():
            return None
        raise
