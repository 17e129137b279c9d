"""What each row of an image CSV is for: open-metric-learning's ``split``, ``is_query`` and ``is_gallery``.

A CSV list of pictures (:mod:`metriclearn.images.listing`) may say, per row,

- ``split``: ``train`` or ``validation``. ``train`` trains on the ``train`` rows only and validates on the
  ``validation`` rows (when there are any; ``--val-fraction`` and ``--val-split`` are then not used);
  ``evaluate`` measures the ``validation`` rows only.
- ``is_query`` / ``is_gallery``: ``evaluate`` ranks the gallery for every query, Q queries against G gallery
  items instead of leave-one-out; a row may be both, and an item is never its own neighbour
  (:func:`metriclearn.metrics.query_gallery_metrics`). As in open-metric-learning, the two columns go
  together and only the evaluated rows (the ``validation`` rows, when there is a ``split``) need a value:
  ``train`` rows may leave them blank.

A column is absent when no row fills it in; ``split`` given on some rows only is a ``ValueError`` naming the
first blank row, as is an evaluated row without ``is_query``/``is_gallery``.

Example
-------
>>> from pathlib import Path
>>> from metriclearn.images.listing import ImageItem
>>> items = [ImageItem(Path(f"{i}.png"), i % 2, f"row {i + 2}", "train" if i < 2 else "validation",
...                    None if i < 2 else i != 3, None if i < 2 else True) for i in range(4)]
>>> roles = Roles.from_items(items)
>>> roles.train_validation()
(array([0, 1]), array([2, 3]))
>>> roles.query_gallery(roles.evaluated())
(array([ True, False]), array([ True,  True]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metriclearn.images.listing import ImageItem


@dataclass(frozen=True, eq=False)
class Roles:
    """Per row: ``split`` ((n,) object array of ``"train"``/``"validation"``, or ``None`` without the
    column), ``is_query`` / ``is_gallery`` ((n,) object arrays of ``True``/``False``/``None``, or ``None``
    without the columns) and ``where`` (each row's place in its CSV, for messages)."""

    split: np.ndarray | None
    is_query: np.ndarray | None
    is_gallery: np.ndarray | None
    where: np.ndarray

    @classmethod
    def from_items(cls, items: Sequence[ImageItem]) -> Roles | None:
        """The roles of ``items`` (``None`` when no row fills in any of the three columns); ``ValueError`` naming
        the first blank ``split`` row when only some rows have one, or a row with only one of ``is_query`` and
        ``is_gallery``."""
        split = _column([item.split for item in items])
        query, gallery = _column([i.is_query for i in items]), _column([i.is_gallery for i in items])
        if split is None and query is None and gallery is None:
            return None
        where = np.array([item.where for item in items], dtype=object)
        if split is not None and (split == None).any():  # noqa: E711 (elementwise on an object array)
            raise ValueError(f"{where[np.flatnonzero(split == None)[0]]}: split is blank, but other rows have one "  # noqa: E711
                             "(train or validation); give every row a split")
        if (query is None) != (gallery is None):
            given, missing = ("is_query", "is_gallery") if gallery is None else ("is_gallery", "is_query")
            raise ValueError(f"{items[0].where.split(' of ', 1)[-1]} has an {given} column but no {missing}: "
                             "the two go together")
        if query is not None and gallery is not None:
            uneven = np.flatnonzero((query == None) != (gallery == None))  # noqa: E711
            if len(uneven):
                raise ValueError(f"{where[uneven[0]]}: is_query and is_gallery go together; this row has only one")
        return cls(split, query, gallery, where)

    def subset(self, indices: np.ndarray) -> Roles:
        """The roles of rows ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        def pick(column: np.ndarray | None) -> np.ndarray | None:
            return None if column is None else column[idx]

        return Roles(pick(self.split), pick(self.is_query), pick(self.is_gallery), self.where[idx])

    def train_validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(train rows, validation rows)`` by the ``split`` column, or ``None`` without it."""
        if self.split is None:
            return None
        return np.flatnonzero(self.split == "train"), np.flatnonzero(self.split == "validation")

    def evaluated(self) -> np.ndarray:
        """The rows ``evaluate`` measures: the ``validation`` rows when there is a ``split`` with any, else all."""
        if self.split is not None and (self.split == "validation").any():
            return np.flatnonzero(self.split == "validation")
        return np.arange(len(self.where))

    def query_gallery(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(is_query, is_gallery)`` boolean masks over ``rows``, or ``None`` without the columns; ``ValueError``
        naming the first of ``rows`` without a value, or when no row is a query or none is in the gallery."""
        if self.is_query is None or self.is_gallery is None:
            return None
        query, gallery = self.is_query[rows], self.is_gallery[rows]
        blank = np.flatnonzero(query == None)  # noqa: E711
        if len(blank):
            raise ValueError(f"{self.where[rows[blank[0]]]}: is_query and is_gallery are blank, but this row is "
                             "evaluated; give it 0/1 values")
        query, gallery = query.astype(bool), gallery.astype(bool)
        for name, mask in (("is_query", query), ("is_gallery", gallery)):
            if not mask.any():
                raise ValueError(f"no evaluated row has {name}=1 ({len(rows)} rows), so there is nothing to "
                                 f"{'search with' if name == 'is_query' else 'search'}")
        return query, gallery


def _column(values: list[object]) -> np.ndarray | None:
    """The values as an object array, or ``None`` when every one is ``None`` (the column is absent)."""
    if all(v is None for v in values):
        return None
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column
