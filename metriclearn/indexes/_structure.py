"""The faiss structure of an :class:`~metriclearn.indexes.EmbeddingIndex`: build, train, tune, reconstruct.

IVF kinds hold the external ids natively (in their inverted lists); every other kind is wrapped in an
``IndexIDMap``. Search parameters live in the structure: ``nprobe`` on the IVF part, ``efSearch`` on the
HNSW part. :func:`signature` names the structure's type so that a saved file can be checked against
the kind its manifest declares.

>>> index = build("HNSW16,Flat", 4, "l2", ef_construction=40)
>>> type(index).__name__, type(inner(index)).__name__, hnsw(index).hnsw.efConstruction
('IndexIDMap', 'IndexHNSWFlat', 40)
>>> signature(index)
'IndexIDMap(IndexHNSWFlat, M=16)'
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import faiss
import numpy as np

from metriclearn.indexes import _factory


def build(factory: str, dim: int, metric: str, *, ef_construction: int, refine: bool = False) -> faiss.Index:
    """A new, empty faiss index: ids native for IVF kinds, an ``IndexIDMap`` around anything else.

    ``refine``: wrap the index in an ``IndexRefineFlat`` (it also keeps the raw vectors and re-ranks the
    top ``k·k_factor`` candidates by exact distance); refined indexes always sit in an ``IndexIDMap``,
    since the re-ranking looks vectors up by position.
    """
    base = _factory.build(factory, dim, metric)
    if refine:
        refined = faiss.IndexRefineFlat(base)
        base.this.disown()  # type: ignore[attr-defined]  # SWIG's handle; the refine index now owns the base
        refined.own_fields = True
        base = refined
    if faiss.try_extract_index_ivf(base) is not None and not refine:
        index = base
    else:
        index = faiss.IndexIDMap(base)
        base.this.disown()  # type: ignore[attr-defined]  # SWIG's handle; the IDMap now owns the wrapped index
        index.own_fields = True
    graph = hnsw(index)
    if graph is not None:
        graph.hnsw.efConstruction = ef_construction
    return index


def inner(index: faiss.Index | None) -> faiss.Index | None:
    """The index inside the IDMap wrapper (or the index itself for IVF kinds)."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    return index


def ivf(index: faiss.Index | None) -> Any:
    """The IVF part of ``index``, or ``None``."""
    return None if index is None else faiss.try_extract_index_ivf(index)


def hnsw(index: faiss.Index | None) -> Any:
    """The HNSW index inside ``index``, or ``None``."""
    found = inner(index)
    return found if isinstance(found, faiss.IndexHNSW) else None


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query when none is given: max(8, √nlist)."""
    return max(8, round(math.sqrt(nlist)))


def refine(index: faiss.Index | None) -> Any:
    """The ``IndexRefine`` inside ``index``, or ``None``."""
    found = inner(index)
    return found if isinstance(found, faiss.IndexRefine) else None


def apply_search_params(
    index: faiss.Index | None, nprobe: int | None, ef_search: int, k_factor: int | None = None
) -> None:
    """Set ``nprobe`` (``None``: :func:`default_nprobe`, capped at nlist), HNSW ``efSearch``, re-rank ``k_factor``."""
    reranker = refine(index)
    if reranker is not None and k_factor is not None:
        reranker.k_factor = float(k_factor)
    part = ivf(index)
    if part is not None:
        want = nprobe if nprobe is not None else default_nprobe(part.nlist)
        part.nprobe = max(1, min(want, part.nlist))
    graph = hnsw(index)
    if graph is not None:
        graph.hnsw.efSearch = ef_search


FAISS_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per centroid
FEW_POINTS_PER_LIST = "inverted lists trained on"  # the start of the warning that replaces faiss's


def train(index: faiss.Index, xb: np.ndarray, kind: str, nlist: int | None, pq_nbits: int, factory: str) -> None:
    """Train ``index`` on ``xb``; too few vectors, or faiss refusing, is a ``ValueError`` saying what to change."""
    need = _factory.min_training_points(kind, nlist, pq_nbits)
    if xb.shape[0] < need:
        pq = kind == "pq"
        why = f"nlist={nlist}" + (f", 2**pq_nbits={2**pq_nbits} codes" if pq else "")
        raise ValueError(
            f"kind {kind!r} needs at least {need} vectors to train ({why}), got {xb.shape[0]}; "
            f"add more vectors in the first call or lower {'nlist/pq_nbits' if pq else 'nlist'}"
        )
    part = ivf(index)
    if part is not None:  # faiss prints a stderr line when k-means sees < 39 points per list: a Python warning
        part.cp.min_points_per_centroid = 1
        if xb.shape[0] < FAISS_POINTS_PER_LIST * part.nlist:
            warnings.warn(
                f"{FEW_POINTS_PER_LIST} {xb.shape[0]} vectors for nlist={part.nlist} "
                f"({xb.shape[0] / part.nlist:.0f} per list); faiss recommends at least "
                f"{FAISS_POINTS_PER_LIST} per list ({FAISS_POINTS_PER_LIST * part.nlist})",
                stacklevel=4,
            )
    if kind == "pq" and part is not None:
        # faiss prints one stderr line per sub-quantizer when codebooks see < 39 points per code;
        # say it once, as a Python warning, instead
        faiss.downcast_index(part).pq.cp.min_points_per_centroid = 1  # type: ignore[attr-defined]  # an IVFPQ/PQ
        if xb.shape[0] < 39 * 2**pq_nbits:
            warnings.warn(
                f"PQ codebooks trained on {xb.shape[0]} vectors; faiss recommends at least "
                f"{39 * 2**pq_nbits} (39 per code) for pq_nbits={pq_nbits}",
                stacklevel=4,
            )
    try:
        index.train(xb)
    except RuntimeError as exc:
        raise ValueError(
            f"could not train index {factory!r} on {xb.shape[0]} vectors: {_factory.faiss_reason(exc)}"
        ) from exc


def reconstruct(index: faiss.Index, ids: np.ndarray, kind: str) -> np.ndarray:
    """The stored vectors of ``ids`` (n,) as float32 (n, d); a kind faiss cannot reconstruct is a ``ValueError``."""
    try:
        if isinstance(index, faiss.IndexIDMap):  # the wrapped index's rows are positions in id_map
            id_map = faiss.vector_to_array(index.id_map)  # (N,)
            order = np.argsort(id_map, kind="stable")
            positions = order[np.searchsorted(id_map[order], ids)]  # (n,)
            wrapped = inner(index)
            assert wrapped is not None  # an IDMap always wraps an index
            out = wrapped.reconstruct_batch(positions)
        else:  # IVF: ids live in the inverted lists; faiss keeps an id -> entry hash table from now on
            part = ivf(index)
            direct_map = faiss.DirectMap  # type: ignore[attr-defined]  # in faiss, not in its stubs
            if part.direct_map.type == direct_map.NoMap:
                part.set_direct_map_type(direct_map.Hashtable)
            out = index.reconstruct_batch(ids)
    except RuntimeError as exc:
        raise ValueError(f"kind {kind!r} cannot give back its vectors ({_factory.faiss_reason(exc)})") from exc
    return np.ascontiguousarray(out, dtype=np.float32)


def signature(index: faiss.Index) -> str:
    """The structure's type in words: the faiss classes, nlist for IVF, M for HNSW, PQ sub-quantizers."""
    outer = faiss.downcast_index(index)
    body = inner(outer)
    text = "IndexFlat" if isinstance(body, faiss.IndexFlat) else type(body).__name__  # IndexFlatIP/L2 alike
    part = ivf(outer)
    if part is not None:
        text += f", nlist={part.nlist}"
        pq = getattr(faiss.downcast_index(part), "pq", None)
        if pq is not None:
            text += f", pq={pq.M}x{pq.nbits}"
    graph = hnsw(outer)
    if graph is not None:
        text += f", M={graph.hnsw.nb_neighbors(1)}"
    return f"{type(outer).__name__}({text})" if outer is not body else text
