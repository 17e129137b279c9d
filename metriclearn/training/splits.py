"""Validation splits of a training set: held-out samples of every class, or whole held-out classes.

``"samples"`` (:func:`metriclearn.data.train_val_split`) measures how well the embedding retrieves new
samples of the classes it trains on. ``"classes"`` (:func:`class_disjoint_split`) holds out whole classes,
the protocol of the metric-learning literature (Musgrave et al., "A Metric Learning Reality Check",
ECCV 2020): validation metrics are then leave-one-out retrieval among classes the model never saw, so
early stopping, ``best.pt`` and the plateau schedule select the model that generalises to new classes.

Example
-------
>>> import numpy as np
>>> from metriclearn.data import LabeledData
>>> data = LabeledData(np.zeros((12, 2), np.float32), np.repeat(np.arange(6), 2), list("abcdef"), "toy")
>>> train, val = class_disjoint_split(data, val_fraction=0.3, seed=0)
>>> sorted(set(val.y.tolist())), len(set(train.y.tolist()) & set(val.y.tolist()))
([3, 4], 0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metriclearn._checks import check_choice, check_fraction

VAL_SPLITS = ("samples", "classes")


def class_disjoint_split(data: Any, val_fraction: float = 0.2, seed: int = 0) -> tuple[Any, Any]:
    """Seeded split of a LabeledData into (train, val) with no class in both; each keeps the row order.

    ``round(val_fraction · C)`` of the C classes (at least 2, so that validation measures retrieval among
    several unseen classes, and at most C − 2 so that training keeps two classes) are drawn at random with
    ``seed`` among the classes that have at least two samples (a held-out class needs a pair for
    leave-one-out retrieval); all their samples form ``val``. ``val_fraction=0`` gives an empty ``val``.
    Data that cannot give 2 held-out and 2 training classes is refused (``ValueError``) before any work.
    """
    val_fraction = check_fraction(val_fraction, "val_fraction")
    present = np.unique(data.y)
    if val_fraction == 0:
        return data.subset(np.arange(len(data))), data.subset(np.zeros(0, np.int64))
    counts = np.bincount(data.y)[present]
    candidates = present[counts >= 2]
    n_val = int(min(max(round(val_fraction * len(present)), 2), len(present) - 2, len(candidates)))
    if n_val < 2:
        source = getattr(data, "source", "the data")
        raise ValueError(
            f"--val-split classes needs at least 2 held-out classes (each with 2 or more samples) and 2 training "
            f"classes; {source} has {len(present)} classes ({len(candidates)} with 2 or more samples): pass "
            f"--val-split samples (hold out samples of every class) or --val-fraction 0"
        )
    held_out = np.random.default_rng(seed).choice(candidates, size=n_val, replace=False)
    in_val = np.isin(data.y, held_out)
    return data.subset(np.flatnonzero(~in_val)), data.subset(np.flatnonzero(in_val))


def pair_split(data: Any, val_fraction: float = 0.2, seed: int = 0) -> tuple[Any, Any]:
    """Seeded split of pair data into (train, val) by whole pairs; ``val`` keeps anchors and positives only.

    ``round(val_fraction · P)`` of the P pairs (at most P − 2, so that training keeps two) are held out; each
    side keeps the file's pair order. Each held-out anchor is then scored against all held-out positives
    (:func:`metriclearn.metrics.pair_metrics`).

    >>> from metriclearn.data import make_pairs
    >>> train, val = pair_split(make_pairs(list("abcde"), list("ABCDE")), val_fraction=0.4, seed=0)
    >>> train.X, val.X
    (['a', 'b', 'c', 'A', 'B', 'C'], ['d', 'e', 'D', 'E'])
    """
    val_fraction = check_fraction(val_fraction, "val_fraction")
    n = len(data.pairs)
    n_val = int(min(round(val_fraction * n), n - 2))
    held_out = np.sort(np.random.default_rng(seed).choice(n, size=max(n_val, 0), replace=False))
    kept = np.setdiff1d(np.arange(n), held_out)
    val = data.subset_pairs(held_out, negatives=False) if len(held_out) >= 2 else None
    return data.subset_pairs(kept), val


def split_for_validation(data: Any, how: str, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """``(train, val)`` by ``how`` (``"samples"`` or ``"classes"``; pair data: by whole pairs, :func:`pair_split`,
    whatever ``how`` says); ``val`` may be empty (``None`` for pair data with fewer than 2 pairs held out)."""
    from metriclearn.data import train_val_split

    check_choice(how, VAL_SPLITS, "val_split")
    if getattr(data, "is_pairs", False):
        return pair_split(data, val_fraction, seed)
    if how == "classes":
        return class_disjoint_split(data, val_fraction, seed)
    return train_val_split(data, val_fraction=val_fraction, seed=seed)


def split_by_column(data: Any) -> tuple[Any, Any] | None:
    """``(train, val or None)`` by an image CSV's ``split`` column (:mod:`metriclearn.images.roles`): the
    ``train`` rows and the ``validation`` rows (``None`` when there are none); ``None`` when ``data`` has no
    such column. ``ValueError`` when no row has ``split=train``."""
    roles = getattr(data, "roles", None)
    rows = None if roles is None else roles.train_validation()
    if rows is None:
        return None
    train_rows, val_rows = rows
    if not len(train_rows):
        raise ValueError(f"{data.source}: no row has split=train ({len(val_rows)} validation rows), so there is "
                         "nothing to train on")
    return data.subset(train_rows), data.subset(val_rows) if len(val_rows) else None
