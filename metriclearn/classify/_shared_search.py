"""One index search serves every step of a prediction that needs neighbours of the same queries.

``classify --reject`` needs the vote's ``k`` nearest (kNN; the top-k cache) and the acceptance score's
``m = 10`` nearest of the same rows: :func:`shared_search` makes the classifier's index answer both from one
search at ``max(k, m)``, slicing the first columns (faiss returns neighbours nearest first, so the ``k`` nearest
of a deeper search are the ``k`` nearest; an approximate index can only find as many or more true neighbours).

>>> import numpy as np
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(2, metric="l2", device="cpu")
>>> _ = index.add(np.eye(2, dtype=np.float32).repeat(3, axis=0), labels=np.arange(6) % 2)
>>> memo = SearchMemo(index, depth=4)
>>> q = np.ones((1, 2), dtype=np.float32)
>>> memo.search(q, 2)[1].tolist() == index.search(q, 4)[1][:, :2].tolist(), memo.searches
(True, 1)
>>> _ = memo.search(q, 4); memo.searches  # answered from the first search
1
>>> _ = memo.search(q + 1, 2); _ = memo.search(q, 5); memo.searches  # other queries, or deeper: the index
3
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


class SearchMemo:
    """A stand-in for an index whose searches of one query matrix run once, ``depth`` deep.

    Every other attribute is the index's. A search of other queries, or deeper than ``depth``, goes to the
    index as usual.
    """

    def __init__(self, index: Any, depth: int) -> None:
        self._index, self._depth = index, int(depth)
        self._queries: np.ndarray | None = None
        self._answer: tuple[np.ndarray, np.ndarray] | None = None
        self.searches = 0  # searches that reached the index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def __len__(self) -> int:
        return len(self._index)

    def search(self, queries: Any, k: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``index.search(queries, k)``, from the memo when these queries were searched at least ``k`` deep."""
        q = np.asarray(queries)
        if k > self._depth or (self._queries is not None and not _same(q, self._queries)):
            self.searches += 1
            return self._search(queries, k, batch_size)
        if self._answer is None:
            self.searches += 1
            depth = min(self._depth, len(self._index))
            self._queries, self._answer = q.copy(), self._search(queries, depth, batch_size)
        distances, ids = self._answer  # (n, depth)
        return distances[:, :k], ids[:, :k]


    def _search(self, queries: Any, k: int, batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
        if batch_size is None:  # a sharded index's search takes no batch size
            return self._index.search(queries, k)
        return self._index.search(queries, k, batch_size)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


@contextlib.contextmanager
def shared_search(classifier: Any, depth: int) -> Iterator[None]:
    """Within the block, ``classifier.index_`` (if it has one) answers repeated searches of the same queries
    from one search ``depth`` deep."""
    index = getattr(classifier, "index_", None)
    if index is None or not hasattr(index, "search"):
        yield
        return
    classifier.index_ = SearchMemo(index, depth)
    try:
        yield
    finally:
        classifier.index_ = index
