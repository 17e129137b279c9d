"""Split-conformal prediction sets, calibration error and precision thresholds: the arithmetic, no estimator.

Split conformal (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction
and Distribution-Free Uncertainty Quantification", 2021). Given a non-conformity score ``s(x, y)`` fixed
before the calibration rows are seen and ``n`` calibration scores ``s_i = s(x_i, y_i)``, let

    q̂ = the ⌈(n + 1)(1 − α)⌉-th smallest of s_1 … s_n,        C(x) = {y : s(x, y) ≤ q̂}.

If the calibration rows and a new row are exchangeable, ``P(Y ∈ C(X)) ≥ 1 − α`` (and ``< 1 − α + 1/(n+1)``
when the scores have no ties). The guarantee is marginal: over the draw of the calibration set and of the
new row, not for each class or each input. :func:`class_thresholds` gives the class-conditional (Mondrian)
version: one threshold per class, coverage ≥ 1 − α within every class.

Scores (``p`` the calibrated class probabilities of ``x``):

- ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``s(x, y) = 1 − p_y``; gives the
  smallest average sets when ``p`` is well calibrated.
- ``"aps"`` (adaptive prediction sets, Romano et al. 2020), the non-randomised form: ``s(x, y) = Σ_{j: p_j
  ranked at or above y} p_j``, the probability mass down to ``y``; sets grow where the model is unsure.

Example
-------
>>> import numpy as np
>>> p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
>>> class_scores(p, "lac").round(2).tolist()
[[0.3, 0.8, 0.9], [0.6, 0.65, 0.75]]
>>> class_scores(p, "aps").round(2).tolist()
[[0.7, 0.9, 1.0], [0.4, 0.75, 1.0]]
>>> conformal_quantile(np.arange(1.0, 20.0), alpha=0.1)  # n = 19: the ⌈20·0.9⌉ = 18th smallest
18.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SCORES = ("lac", "aps")
ECE_BINS = 15  # Guo et al. (2017) use 15 equal-width confidence bins


def conformal_rank(n: int, alpha: float) -> int:
    """``⌈(n + 1)(1 − α)⌉``: which order statistic of ``n`` calibration scores is the threshold.

    Raises ``ValueError`` when it exceeds ``n``: too few calibration rows for that ``alpha`` (the set would
    have to hold every class).

    >>> conformal_rank(99, 0.1), conformal_rank(1000, 0.05)
    (90, 951)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # 1e-9: (n + 1)(1 − α) is often an integer up to round-off
    if rank > n:
        need = math.ceil((1.0 - alpha) / alpha - 1e-9)
        raise ValueError(
            f"alpha={alpha:g} needs at least {need} calibration rows for a finite threshold, got {n}"
        )
    return max(rank, 1)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The split-conformal threshold ``q̂``: the ``⌈(n + 1)(1 − α)⌉``-th smallest of ``scores`` (n,)."""
    scores = np.asarray(scores, dtype=np.float64)
    rank = conformal_rank(len(scores), alpha)
    return float(np.partition(scores, rank - 1)[rank - 1])


def class_scores(proba: np.ndarray, score: str) -> np.ndarray:
    """Non-conformity score of every class for every row: (n, K) float64 (``"lac"`` or ``"aps"``).

    APS breaks ties in probability by class order, the same way in calibration and prediction.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if score == "lac":
        return 1.0 - proba
    if score != "aps":
        raise ValueError(f"score must be one of {', '.join(map(repr, SCORES))}; got {score!r}")
    order = np.argsort(-proba, axis=1, kind="stable")  # (n, K) classes, most probable first
    cumulative = np.cumsum(np.take_along_axis(proba, order, 1), axis=1)  # (n, K) mass down to each rank
    out = np.empty_like(proba)
    np.put_along_axis(out, order, cumulative, 1)
    return out


def class_thresholds(scores: np.ndarray, codes: np.ndarray, n_classes: int, alpha: float) -> list[float | None]:
    """Class-conditional (Mondrian) split conformal: one threshold per class from its own calibration rows.

    ``q̂_y`` is the ⌈(n_y + 1)(1 − α)⌉-th smallest of the scores (n,) of the ``n_y`` rows with ``codes == y``,
    so that ``P(y ∈ C(X) | Y = y) ≥ 1 − α`` for every class (Vovk et al. 2005, ch. 4; Angelopoulos & Bates
    2021, §4.3), at the price of larger sets for hard or rare classes. ``None`` for a class with fewer
    than ⌈(1 − α)/α⌉ rows: no finite threshold guarantees it, so it is in every set.

    >>> class_thresholds(np.array([0.1, 0.2, 0.3, 0.9, 0.5]), np.array([0, 0, 0, 1, 1]), 3, alpha=0.5)
    [0.2, 0.9, None]
    """
    out: list[float | None] = []
    for y in range(n_classes):
        own = np.asarray(scores, dtype=np.float64)[codes == y]
        try:
            out.append(conformal_quantile(own, alpha))
        except ValueError:  # too few rows of this class for a finite threshold
            out.append(None)
    return out


def coverage_by_class(covered: np.ndarray, codes: np.ndarray, n_classes: int) -> list[float | None]:
    """Share of each class's rows whose set holds their class; ``None`` for a class without rows.

    >>> coverage_by_class(np.array([True, False, True]), np.array([0, 0, 1]), 3)
    [0.5, 1.0, None]
    """
    return [float(covered[codes == y].mean()) if (codes == y).any() else None for y in range(n_classes)]


def prediction_sets(proba: np.ndarray, threshold: float | list[float | None], score: str) -> np.ndarray:
    """``C(x) = {y : s(x, y) ≤ q̂}`` (or ``≤ q̂_y`` per class) as an (n, K) bool array (rows may be empty).

    ``threshold``: one ``q̂``, or a list of K per-class thresholds (:func:`class_thresholds`; ``None``: always in).
    """
    if isinstance(threshold, (list, tuple, np.ndarray)):
        per_class = np.array([np.inf if t is None else t for t in threshold], dtype=np.float64)  # (K,)
        return class_scores(proba, score) <= per_class
    return class_scores(proba, score) <= threshold


def reliability(proba: np.ndarray, codes: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label reliability table and expected calibration error (Guo et al., ICML 2017).

    ``ECE = Σ_b (|B_b| / n)·|acc(B_b) − conf(B_b)|`` over ``bins`` equal-width bins of the top probability.

    Returns
    -------
    dict with ``ece`` (float), and per bin ``edges`` (bins + 1), ``confidence``, ``accuracy`` (mean top
    probability and accuracy of its rows; ``None`` for an empty bin) and ``count``.

    Example
    -------
    >>> r = reliability(np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]]), np.array([0, 1, 0]), bins=5)
    >>> round(r["ece"], 4), r["count"]
    (0.4333, [0, 0, 1, 1, 1])
    """
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)  # (n,)
    correct = proba.argmax(axis=1) == codes  # (n,)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] bins
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    safe = np.maximum(count, 1)
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / max(len(codes), 1))  # Σ_b |B_b|·|acc − conf| / n
    return {
        "ece": ece,
        "edges": edges.tolist(),
        "confidence": [float(v) if c else None for v, c in zip(conf_sum / safe, count, strict=True)],
        "accuracy": [float(v) if c else None for v, c in zip(acc_sum / safe, count, strict=True)],
        "count": count.astype(int).tolist(),
    }


def precision_threshold(
    scores: np.ndarray, correct: np.ndarray, target: float, weights: np.ndarray | None = None
) -> tuple[float, float, float]:
    """The lowest score threshold at which the accepted rows (score ≥ threshold) reach ``target`` precision.

    ``weights`` (n,), default 1: each row's weight in the precision ``Σ_accepted w·correct / Σ_accepted w``.
    Returns ``(threshold, precision, accepted share of the weight)`` on these rows. Raises ``ValueError``
    when no threshold reaches the target.

    Example
    -------
    >>> precision_threshold(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0]), 0.75)
    (0.6, 0.75, 0.8)
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, ok, w = scores[order], np.asarray(correct, dtype=np.float64)[order], weights[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores: a threshold can cut there
    hits = np.cumsum(ok * w)[last]
    accepted = np.cumsum(w)[last]
    precision = hits / np.maximum(accepted, 1e-300)
    reach = np.flatnonzero(precision >= target - 1e-12)
    if reach.size == 0:
        raise ValueError(
            f"target_precision={target:g} is not reached at any threshold on the calibration rows "
            f"(best precision {precision.max():.4f}); lower it or improve the model"
        )
    best = reach[-1]  # the largest accepted set that still reaches the target
    return float(s[last][best]), float(precision[best]), float(accepted[best] / w.sum())
