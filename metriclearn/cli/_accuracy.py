"""What ``classify`` and ``second-opinion`` say when the inputs have labels: accuracy and recall per class.

Recall of class c is the share of rows labelled c that were predicted c. Rows whose label is not among the
classes the classifier knows can never be right; they count as errors and are named. Up to ``shown`` classes
are listed, the lowest recall first (the ones to look at).

Example
-------
>>> import numpy as np
>>> print(accuracy_lines(np.array(["a", "a", "b", "c"]), np.array(["a", "b", "b", "a"]), known=["a", "b"]))
accuracy 0.5000 on 4 labelled rows (1 of a class the classifier does not know: c)
recall by class, lowest first: a 0.500 (2 rows), b 1.000 (1 row)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def accuracy_lines(true: np.ndarray, predicted: np.ndarray, known: Sequence[Any], shown: int = 10) -> str:
    """Two lines: ``accuracy A on N labelled rows`` and the per-class recall of the known classes, lowest first."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    correct = _correct(true, predicted)
    known_set = {str(c) for c in known}
    unknown = sorted({str(v) for v in true.tolist()} - known_set)
    n_unknown = int(sum(str(v) not in known_set for v in true.tolist()))
    head = f"accuracy {correct.mean():.4f} on {len(true)} labelled rows"
    if n_unknown:
        few = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        head += f" ({n_unknown} of a class the classifier does not know: {few})"
    return f"{head}\n{recall_line(true, predicted, known, shown)}"


def rejection_line(true: np.ndarray, predicted: np.ndarray, rejected: np.ndarray, known: Sequence[Any]) -> str:
    """``classify --reject`` with labels: accuracy among the accepted rows, and who was turned away.

    Accepted precision is what the calibrated threshold promises (``--target-precision``); a rejected row of a
    class the classifier does not know is a rejection done right, a rejected row of a known class is one lost.

    >>> print(rejection_line(np.array(["a", "a", "b", "c"]), np.array(["a", "b", "b", "a"]),
    ...                      np.array([False, True, False, True]), known=["a", "b"]))
    accuracy among accepted rows 1.0000 (2 of 4 accepted); rejected: 1 of 1 of unknown classes, 1 of 3 of known ones
    """
    true, rejected = np.asarray(true), np.asarray(rejected, dtype=bool)
    accepted = ~rejected
    correct = _correct(true, np.asarray(predicted))
    known_set = {str(c) for c in known}
    unknown = np.array([str(v) not in known_set for v in true.tolist()], dtype=bool)
    precision = f"{correct[accepted].mean():.4f}" if accepted.any() else "n/a"
    return (f"accuracy among accepted rows {precision} ({int(accepted.sum())} of {len(true)} accepted); rejected: "
            f"{int(rejected[unknown].sum())} of {int(unknown.sum())} of unknown classes, "
            f"{int(rejected[~unknown].sum())} of {int((~unknown).sum())} of known ones")


def blend_lines(true: np.ndarray, model: np.ndarray, blended: np.ndarray, known: Sequence[Any]) -> str:
    """``second-opinion``: the model's accuracy, the blend's, the gain in points, and the blend's recall by class.

    >>> print(blend_lines(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0, 0, 0]), known=[0, 1]))
    accuracy on 3 labelled rows: model 0.3333, second opinion 0.6667 (+33.33 points)
    second opinion's recall by class, lowest first: 1 0.000 (1 row), 0 1.000 (2 rows)
    """
    acc_model, acc_blend = (float(_correct(np.asarray(true), np.asarray(p)).mean()) for p in (model, blended))
    return (f"accuracy on {len(true)} labelled rows: model {acc_model:.4f}, second opinion {acc_blend:.4f} "
            f"({100 * (acc_blend - acc_model):+.2f} points)\nsecond opinion's "
            + recall_line(true, blended, known))


def recall_line(true: np.ndarray, predicted: np.ndarray, known: Sequence[Any], shown: int = 10) -> str:
    """``recall by class, lowest first: a 0.500 (2 rows), ...``: at most ``shown`` classes, then how many more."""
    true = np.asarray(true).astype(str)
    correct = _correct(true, np.asarray(predicted))
    recalls = []
    for label in known:
        rows = true == str(label)
        if rows.any():
            recalls.append((float(correct[rows].mean()), str(label), int(rows.sum())))
    recalls.sort(key=lambda r: (r[0], r[1]))
    listed = ", ".join(f"{label} {value:.3f} ({n} row{'s' if n != 1 else ''})" for value, label, n in recalls[:shown])
    more = f", ... ({len(recalls) - shown} more)" if len(recalls) > shown else ""
    return f"recall by class, lowest first: {listed}{more}"


def _correct(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Row-wise ``true == predicted``, labels compared by value (ints and strings alike)."""
    return np.asarray(true).astype(str) == np.asarray(predicted).astype(str)
