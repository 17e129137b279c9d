"""From an index ``kind`` to a faiss factory string, and how many vectors it needs to train.

Named kinds (anything else is passed to ``faiss.index_factory`` as it is):

====  ======================================  =====================================
kind  faiss factory string                    vectors needed to train (first add)
====  ======================================  =====================================
flat  ``Flat``                                none (exact search)
ivf   ``IVF{nlist},Flat``                     nlist
hnsw  ``HNSW{hnsw_m},Flat``                   none
pq    ``IVF{nlist},PQ{pq_m}x{pq_nbits}np``    max(nlist, 2**pq_nbits)
====  ======================================  =====================================

(``np``: no polysemous training, which is slow and only serves Hamming-filtered search.)

Factory strings are checked before faiss parses them (:func:`check_factory`), because faiss does not check
every parameter itself and some values crash or hang the process: every number in the string must be ≥ 1
(``IVF0``: every query fails; ``PCA0``: every query ties; ``HNSW0``: abort; ``RR0``, ``OPQ4_0``: crash), an HNSW
graph needs M ≥ 2 (``HNSW1``: segfault) and an NSG graph R ≥ :data:`MIN_NSG_R` (``NSG0`` to ``NSG4`` never
finish building, ``NSG5`` misses exact matches).

``nlist=None`` picks ``min(4·√n, n / 39)`` (at least 1) from the n vectors of the first add: about 4·√n
lists (faiss's guideline), never fewer than 39 training points per list (faiss's warning limit).

>>> factory_string("ivf", 64, nlist=100)
'IVF100,Flat'
>>> factory_string("pq", 64, nlist=10)
'IVF10,PQ16x8np'
>>> auto_nlist(100_000), auto_nlist(1797), auto_nlist(10)
(1265, 46, 1)
>>> check_factory("HNSW1,Flat")
Traceback (most recent call last):
    ...
ValueError: kind 'HNSW1,Flat': HNSW1 needs M >= 2 (faiss crashes below it), got 1; use e.g. 'HNSW32,Flat'
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faiss

KINDS = ("flat", "ivf", "hnsw", "pq")


def metric_type(metric: str) -> int:
    """faiss's metric constant for ``metric``: ``METRIC_L2`` for ``"l2"``, else ``METRIC_INNER_PRODUCT``.

    faiss is imported here, not at module level, so that the CLI lists :data:`KINDS` without loading it.
    """
    import faiss

    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


MIN_HNSW_M = 2  # HNSW1 segfaults and HNSW0 aborts in faiss 1.x
MIN_NSG_R = 8  # NSG1..NSG4 never finish building (nndescent), NSG5 loses exact matches
_NUMBER = re.compile(r"\d+")
_GRAPH = re.compile(r"(HNSW|NSG)(\d+)")


def check_factory(factory: str) -> str:
    """Return ``factory`` if the numbers in it are ones faiss can build from, else a ``ValueError`` naming it.

    Checked: every number is ≥ 1 (nlist, PCA/OPQ/RR dimensions, PQ sub-quantizers and bits, IMI bits...),
    HNSW M ≥ :data:`MIN_HNSW_M` and NSG R ≥ :data:`MIN_NSG_R`, wherever they appear (``IVF64_HNSW1`` too).
    What faiss itself refuses (unknown components, dimensions that do not divide) is left to
    :func:`build`, which turns faiss's error into a ``ValueError``.
    """
    for number in _NUMBER.finditer(factory):
        if int(number.group()) == 0:
            start = factory.rfind(",", 0, number.start()) + 1
            end = factory.find(",", number.end())
            part = factory[start : end if end >= 0 else len(factory)]
            raise ValueError(
                f"kind {factory!r}: every number in a factory string must be at least 1, got 0 in {part!r} "
                "(faiss does not check it and then crashes or answers nonsense)"
            )
    for graph in _GRAPH.finditer(factory):
        name, value = graph.group(1), int(graph.group(2))
        low = MIN_HNSW_M if name == "HNSW" else MIN_NSG_R
        if value < low:
            why = ("faiss crashes below it" if name == "HNSW"
                   else "faiss's build never ends or loses neighbours below it")
            raise ValueError(
                f"kind {factory!r}: {name}{value} needs {'M' if name == 'HNSW' else 'R'} >= {low} ({why}), "
                f"got {value}; use e.g. '{name}32,Flat'"
            )
    return factory


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` training vectors: min(round(4·√n), n // 39), at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for PQ: the largest divisor of ``dim`` that is at most dim / 4 (4-dim sub-vectors)."""
    target = max(1, dim // 4)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def needs_nlist(kind: str) -> bool:
    """Whether a named ``kind`` has inverted lists (``ivf``, ``pq``)."""
    return kind in ("ivf", "pq")


def factory_string(
    kind: str,
    dim: int,
    *,
    nlist: int | None = None,
    hnsw_m: int = 32,
    pq_m: int | None = None,
    pq_nbits: int = 8,
) -> str:
    """The faiss factory string for ``kind`` (named kinds need ``nlist`` resolved first)."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{hnsw_m},Flat"
    if needs_nlist(kind):
        if nlist is None:
            raise ValueError(f"kind {kind!r} needs nlist (None means: chosen on the first add)")
        if kind == "ivf":
            return f"IVF{nlist},Flat"
        return f"IVF{nlist},PQ{pq_m or default_pq_m(dim)}x{pq_nbits}np"  # np: no polysemous training (slow, unused)
    if re.match(r"\s*IDMap", kind, flags=re.IGNORECASE):
        raise ValueError(f"kind {kind!r}: ids are managed by EmbeddingIndex, drop the 'IDMap' prefix")
    return kind


def min_training_points(kind: str, nlist: int | None, pq_nbits: int = 8) -> int:
    """Vectors needed to train a named ``kind`` (0 for kinds that need no training)."""
    if kind == "ivf":
        return int(nlist or 1)
    if kind == "pq":
        return max(int(nlist or 1), 2**pq_nbits)
    return 0


def build(factory: str, dim: int, metric: str) -> faiss.Index:
    """``faiss.index_factory`` after :func:`check_factory`, with faiss's parse errors turned into a ``ValueError``."""
    import faiss

    check_factory(factory)
    try:
        return faiss.index_factory(dim, factory, metric_type(metric))
    except RuntimeError as exc:
        raise ValueError(f"kind {factory!r} is not a faiss index factory string: {faiss_reason(exc)}") from exc


def faiss_reason(exc: BaseException) -> str:
    """The useful tail of a faiss C++ exception message (drops the 'Error in <function> at <file>:' part)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text).removeprefix("Error: ")
