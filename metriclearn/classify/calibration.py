"""Trustworthy predictions for the neighbour classifiers: calibrated probabilities, conformal sets, "unknown".

:class:`CalibrationMixin` gives :class:`~metriclearn.classify.KNNClassifier` and
:class:`~metriclearn.classify.CacheClassifier` one implementation of

- ``calibrate(X_cal, y_cal, alpha=0.1, target_precision=None)`` on held-out rows;
- ``predict_sets(X) -> (n, K) bool``, columns in ``classes_`` order (split conformal, coverage ≥ 1 − α on
  exchangeable data: marginal, or within every class with ``coverage="class"``);
- ``predict_with_rejection(X) -> (labels, rejected)``: the predictions and a separate bool array, ``True``
  where the acceptance score is below the threshold that reached ``target_precision`` on calibration rows;
  ``predict_or_reject(X, unknown_label=-1)`` puts ``unknown_label`` in place of those predictions, and refuses
  an ``unknown_label`` that is one of the classes.

``calibrate`` shuffles the calibration rows (``random_state``) and splits them in two:

1. ``fit_fraction`` of them (default 0.3) *fit* the score functions: the probability calibration by negative
   log-likelihood over a grid (the cache's θ; for kNN a temperature ``T`` and pseudo-count ``ε`` on the
   unnormalised vote, ``p_y ∝ (V_y + ε)^{1/T}``), and, with ``target_precision``, the acceptance score (below);
2. the rest, untouched by that fit, set the conformal threshold ``q̂`` (the ⌈(n+1)(1−α)⌉-th smallest score,
   :mod:`metriclearn.classify.conformal`), the rejection threshold, and the reported ECE before/after,
   coverage and mean set size. Because the score functions are fixed before these rows are seen, the
   split-conformal guarantee holds exactly.

Open set. A plain similarity threshold only knows what known classes look like. The acceptance score is a
logistic regression on six features of a prediction (log of the top probability, the margin to the second,
the distance to the nearest stored vector and the mean distance to the ``m`` nearest, both also divided by
the predicted class's own typical distances), trained to separate correct predictions from wrong ones *and*
from stand-ins for classes never seen:

- *twins*: each calibration row scored by the classifier without its class (leave one class out of the
  index in turn; at most ``MAX_TWIN_CLASSES`` classes, drawn at random beyond) — to that reduced index,
  exactly an unseen class;
- *mixtures* of two calibration rows of different classes that land in a gap between classes — what a class
  the *model* never saw tends to look like (a trained embedding keeps its known classes apart, so twins alone
  are far easier to reject than real unseen classes; see BENCHMARKS.md).

Its threshold is the lowest score at which the held-out rows, mixed with their stand-ins in the proportion
``unseen_share``, reach ``target_precision`` — an empirical estimate, not a guarantee.

Calibrating on the index's own vectors (or exact duplicates) is refused: their nearest neighbour is
themselves, so their scores are optimistic and the coverage guarantee would not hold.

Example
-------
>>> import numpy as np
>>> from metriclearn.classify import KNNClassifier
>>> rng = np.random.default_rng(0)
>>> centres = rng.normal(0, 3, (3, 4))
>>> y = rng.integers(0, 3, 900)
>>> X = centres[y] + rng.normal(size=(900, 4))
>>> knn = KNNClassifier(n_neighbors=10, device="cpu").fit(X[:400], y[:400])
>>> knn = knn.calibrate(X[400:800], y[400:800], alpha=0.1)
>>> sets = knn.predict_sets(X[800:])
>>> sets.shape, bool(0.8 < sets[np.arange(100), y[800:]].mean() <= 1.0)
((100, 3), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from metriclearn._checks import (
    check_choice,
    check_interval,
    check_labels,
    check_positive_int,
    check_probabilities,
    describe,
)
from metriclearn.classify import conformal
from metriclearn.classify._validation import class_codes, known_codes, query_data

CALIBRATION_VERSION = 1
COVERAGES = ("marginal", "class")
FEATURES = ("log_top_probability", "margin", "nearest_distance", "mean_distance", "nearest_distance_by_class",
            "mean_distance_by_class")
NEIGHBOURS_FOR_FEATURES = 10  # m: distances to the m nearest stored vectors feed the acceptance score
SCALE_SAMPLE = 256  # stored vectors per class whose own neighbour distances give the class's distance scale
BOOTSTRAP = 200  # resamples that measure the rejection threshold's spread
WIDEN_STEPS = 3  # times a probability grid is widened when the chosen value sits on its edge
MAX_TWIN_CLASSES = 20  # leave-one-class-out classifiers built at most (a random subset of classes beyond)
DUPLICATE_TOLERANCE = {"l2": 1e-6, "cosine": 1e-9}  # relative L2 distance / cosine distance: float round-off


class CalibrationMixin:
    """``calibrate`` / ``predict_sets`` / ``predict_or_reject`` for a fitted neighbour classifier.

    The classifier provides the hooks: ``_method`` ("knn" or "cache"), ``_classifier_params()``,
    ``_probability_grids()``, ``_probability_candidates(X, grids)``, ``_proba_with(X, params)``,
    ``_apply_probability(params)``, ``_neighbour_distances(X, m)``, ``_reference()``, ``_reference_size()``,
    ``_without_class(code)`` and ``_distance_metric``.
    """

    _method: str
    classes_: np.ndarray

    if TYPE_CHECKING:  # the hooks, for the type checker only: each classifier defines them
        @property
        def _distance_metric(self) -> str: ...
        def predict_proba(self, X: Any) -> np.ndarray: ...
        def _classifier_params(self) -> dict[str, Any]: ...
        def _probability_grids(self) -> dict[str, tuple[float, ...]]: ...
        def _probability_candidates(self, X: np.ndarray, grids: dict[str, tuple[float, ...]]
                                    ) -> Iterator[tuple[dict[str, Any], dict[str, float], np.ndarray]]: ...
        def _proba_with(self, X: np.ndarray, params: dict[str, Any] | None) -> np.ndarray: ...
        def _apply_probability(self, params: dict[str, Any]) -> None: ...
        def _neighbour_distances(self, X: np.ndarray, m: int) -> np.ndarray: ...
        def _reference(self) -> tuple[np.ndarray, np.ndarray]: ...
        def _reference_size(self) -> int: ...
        def _without_class(self, code: int) -> CalibrationMixin: ...

    # ------------------------------------------------------------------ public API
    def calibrate(
        self,
        X_cal: Any,
        y_cal: Any,
        alpha: float = 0.1,
        target_precision: float | None = None,
        *,
        score: str = "lac",
        coverage: str = "marginal",
        unseen_share: float = 0.25,
        fit_fraction: float = 0.3,
        random_state: int = 0,
    ) -> Any:
        """Calibrate on held-out rows ``(X_cal, y_cal)`` that neither the model nor the index saw; returns ``self``.

        Parameters
        ----------
        X_cal : (n, d) held-out embeddings. y_cal : (n,) their labels, all from ``classes_``.
        alpha : miscoverage level α ∈ (0, 1): :meth:`predict_sets` covers the true class with probability
            ≥ 1 − α (marginally, on exchangeable data).
        target_precision : if given, in (0, 1]: fit the open-set acceptance score and the rejection
            threshold of :meth:`predict_or_reject`.
        score : ``"lac"`` (1 − p_y, smallest sets) or ``"aps"`` (mass down to y, adaptive sets).
        coverage : ``"marginal"`` (one threshold: ≥ 1 − α over all rows) or ``"class"`` (one threshold per
            class, :func:`~metriclearn.classify.conformal.class_thresholds`: ≥ 1 − α within every class,
            larger sets for hard classes; a class with too few calibration rows is in every set).
        unseen_share : share of inputs from classes never seen that the rejection threshold assumes, in
            [0, 1): ``target_precision`` is reached on held-out rows mixed with their never-seen stand-ins
            (see the module notes) in that proportion. 0 gives the classic threshold, which only knows the
            known classes.
        fit_fraction : share of the rows that fit the probability calibration and acceptance score; the
            rest set the thresholds and measure ECE, coverage and set sizes.
        random_state : seed of the split.

        Sets ``calibration_``: a JSON-serialisable dict (what ``metriclearn calibrate`` stores in an index
        directory; :meth:`restore_calibration` reads it back).
        """
        check_is_fitted(self)
        alpha = check_interval(alpha, "alpha", open_low=True, open_high=True)
        if target_precision is not None:
            target_precision = check_interval(target_precision, "target_precision", open_low=True)
        check_choice(score, conformal.SCORES, "score")
        check_choice(coverage, COVERAGES, "coverage")
        unseen_share = check_interval(unseen_share, "unseen_share", open_high=True)
        fit_fraction = check_interval(fit_fraction, "fit_fraction", open_low=True, open_high=True)
        check_positive_int(random_state, "random_state", allow_zero=True)
        if len(self.classes_) < 2:
            raise ValueError(f"calibration needs at least 2 classes, the classifier has {len(self.classes_)}")
        X = _named(lambda: query_data(self, X_cal), "X_cal")
        codes = known_codes(self.classes_, y_cal, "y_cal", len(X),
                            ": calibration rows must come from the indexed classes")
        self._refuse_reference_rows(X)
        self.__dict__.pop("calibration_", None)

        perm = np.random.default_rng(random_state).permutation(len(X))
        n_fit = min(max(1, round(fit_fraction * len(X))), len(X) - 1)
        fit_rows, conf_rows = perm[:n_fit], perm[n_fit:]
        try:
            rank = conformal.conformal_rank(len(conf_rows), alpha)
        except ValueError as exc:
            raise ValueError(
                f"X_cal has {len(X)} rows; fit_fraction={fit_fraction:g} uses {n_fit} to fit the probabilities "
                f"and leaves {len(conf_rows)} for the conformal threshold: {exc}"
            ) from None

        params, nll, grid_notes = self._fit_probability(X[fit_rows], codes[fit_rows])
        before = self._proba_with(X[conf_rows], None)  # (n_conf, K) the probabilities as they were
        after = self._proba_with(X[conf_rows], params)  # (n_conf, K) calibrated
        cc = codes[conf_rows]
        true_scores = conformal.class_scores(after, score)[np.arange(len(conf_rows)), cc]  # (n_conf,)
        threshold: float | list[float | None] = (
            conformal.conformal_quantile(true_scores, alpha) if coverage == "marginal"
            else conformal.class_thresholds(true_scores, cc, len(self.classes_), alpha)
        )
        sets = conformal.prediction_sets(after, threshold, score)  # (n_conf, K)
        covered = sets[np.arange(len(conf_rows)), cc]  # (n_conf,)
        state: dict[str, Any] = {
            "version": CALIBRATION_VERSION,
            "method": self._method,
            "classifier": self._classifier_params(),
            "classes": self.classes_.tolist(),
            "probability": params,
            "fit_nll": nll,
            "conformal": {"score": score, "alpha": alpha, "coverage": coverage, "threshold": threshold,
                          "rank": rank, "n": len(conf_rows)},
            "n_fit": int(n_fit),
            "n_calibration": len(conf_rows),
            "random_state": int(random_state),
            "reliability_before": conformal.reliability(before, codes[conf_rows]),
            "reliability_after": conformal.reliability(after, codes[conf_rows]),
            "coverage": float(covered.mean()),
            "coverage_by_class": conformal.coverage_by_class(covered, cc, len(self.classes_)),
            "mean_set_size": float(sets.sum(axis=1).mean()),
            "empty_sets": float((~sets.any(axis=1)).mean()),
            "rejection": None,
            "grid_notes": grid_notes,
        }
        state["ece_before"] = state["reliability_before"]["ece"]
        state["ece_after"] = state["reliability_after"]["ece"]
        if target_precision is not None:
            state["rejection"] = self._fit_rejection(X, codes, fit_rows, conf_rows, params, target_precision,
                                                    unseen_share, random_state)
        self._apply_probability(params)
        self.calibration_ = state
        return self

    def _fit_probability(self, X: np.ndarray, codes: np.ndarray) -> tuple[dict[str, Any], float, list[str]]:
        """The probability parameters of lowest NLL on ``(X, codes)``, the grid widened where the best sits on an edge.

        Each parameter's grid (``_probability_grids``, geometric) is extended on the side where the chosen value
        sits at its end, by half its length at the same ratio, up to ``WIDEN_STEPS`` times. An optimum found
        inside a widened grid is taken. One that keeps running off the edge is degenerate (the likelihood
        keeps improving without bound, e.g. when every fit row is already predicted right, so the temperature
        runs to 0 and the probabilities to 0/1): the original grid's choice is then kept. Either way a warning
        says so, and ``calibration_["grid_notes"]`` keeps it.
        """
        original = dict(self._probability_grids())
        grids = dict(original)
        first: tuple[dict[str, Any], float] | None = None
        for step in range(WIDEN_STEPS + 1):
            params, nll, point = _best_by_nll(self._probability_candidates(X, grids), codes)
            first = first or (params, nll)
            edges = {name: "low" if point[name] <= grid[0] else "high" for name, grid in grids.items()
                     if len(grid) > 1 and point[name] in (grid[0], grid[-1])}
            if not edges:
                break
            if step < WIDEN_STEPS:
                grids.update({name: _widen(grids[name], side) for name, side in edges.items()})
        notes = []
        for name, grid in original.items():
            if grids[name] == grid:
                continue
            at = (f"{self._method} calibration: the best {name} was on the edge of its grid "
                  f"[{grid[0]:.4g}, {grid[-1]:.4g}]")
            if edges:  # still on an edge after the last widening: degenerate, keep the original grid's choice
                notes.append(f"{at} and kept running off it when widened to [{grids[name][0]:.4g}, "
                             f"{grids[name][-1]:.4g}] (a degenerate fit: the calibration rows cannot pin it, e.g. "
                             f"every fit row is already right); kept the original grid's choice: "
                             f"calibrate on more rows")
            else:
                notes.append(f"{at}; widened to [{grids[name][0]:.4g}, {grids[name][-1]:.4g}], "
                             f"where the best is {point[name]:.4g}")
        for note in notes:
            warnings.warn(note, stacklevel=3)
        if edges:
            assert first is not None
            return first[0], first[1], notes
        return params, nll, notes

    def restore_calibration(self, state: dict[str, Any]) -> Any:
        """Use a calibration saved from ``calibration_`` (e.g. ``index.attrs["calibration"]["knn"]``); returns ``self``.

        Raises ``ValueError`` when it was made for another method, other classes or other parameters.
        """
        check_is_fitted(self)
        if not isinstance(state, dict) or state.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration must be a dict of version {CALIBRATION_VERSION}, got {describe(state)}")
        for key, mine in (("method", self._method), ("classes", self.classes_.tolist()),
                          ("classifier", self._classifier_params())):
            if state.get(key) != mine:
                raise ValueError(
                    f"the calibration was made for {key} {describe(state.get(key))}, "
                    f"this classifier has {describe(mine)}"
                )
        self._apply_probability(state["probability"])
        self.calibration_ = state
        return self

    def predict_sets(self, X: Any, proba: Any = None) -> np.ndarray:
        """Conformal prediction sets: (n, K) bool, column j ↔ ``classes_[j]``; rows may be empty.

        ``proba``: the rows' calibrated probabilities when already computed (``predict_proba(X)``), so the
        neighbours are not searched again for them.
        """
        state = self._calibration("predict_sets")
        proba = self.predict_proba(X) if proba is None else self._given_proba(proba, X)  # calibrated
        return conformal.prediction_sets(proba, state["conformal"]["threshold"], state["conformal"]["score"])

    def acceptance_score(self, X: Any, proba: Any = None) -> np.ndarray:
        """The open-set acceptance score in [0, 1] of each row's prediction (higher: more trustworthy).

        ``proba``: as in :meth:`predict_sets`.
        """
        self._rejection("acceptance_score")
        X = query_data(self, X)
        return self._acceptance(X, self._calibrated_proba(X, proba))

    def predict_with_rejection(self, X: Any, proba: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, rejected)``: the predicted label of every row, and a bool array, ``True`` where the
        acceptance score is below the calibrated threshold (the prediction is not to be trusted).

        The rejection never takes the place of a label, so no class can be mistaken for "rejected". Needs
        ``calibrate(..., target_precision=P)``. ``proba``: as in :meth:`predict_sets`.
        """
        return self._with_rejection(X, "predict_with_rejection", proba)

    def predict_or_reject(self, X: Any, unknown_label: Any = -1, proba: Any = None) -> np.ndarray:
        """The predicted label, or ``unknown_label`` where the acceptance score is below the calibrated threshold.

        Needs ``calibrate(..., target_precision=P)``. ``proba``: as in :meth:`predict_sets`.
        ``unknown_label`` must not be one of ``classes_``
        (in a ±1 task the default ``-1`` is a class: pass another value, or use
        :meth:`predict_with_rejection`, which keeps the rejection in a separate bool array). The output dtype
        holds both the labels and ``unknown_label`` (``object`` when one is a string and the other is not).
        """
        check_is_fitted(self)
        fill = np.asarray(unknown_label)
        if fill.ndim != 0:
            raise TypeError(f"unknown_label must be a single label, got {describe(unknown_label)}")
        if any(c == fill.item() for c in self.classes_.tolist()):
            raise ValueError(f"unknown_label={fill.item()!r} is one of the classes, so a rejection could not be told "
                             "from a prediction: choose a value that is not a class, or use predict_with_rejection")
        labels, rejected = self._with_rejection(X, "predict_or_reject", proba)
        if (fill.dtype.kind in "US") != (labels.dtype.kind in "US"):
            out = labels.astype(object)
        else:
            out = labels.astype(np.result_type(labels.dtype, fill.dtype))
        out[rejected] = unknown_label
        return out

    # ------------------------------------------------------------------ internals
    def _with_rejection(self, X: Any, caller: str, proba: Any = None) -> tuple[np.ndarray, np.ndarray]:
        rejection = self._rejection(caller)
        X = query_data(self, X)
        proba = self._calibrated_proba(X, proba)
        rejected = self._acceptance(X, proba) < rejection["threshold"]
        return self.classes_[np.argmax(proba, axis=1)], rejected

    def _calibrated_proba(self, X: np.ndarray, proba: Any) -> np.ndarray:
        """The calibrated probabilities of validated rows ``X``: ``proba`` checked when given, else computed."""
        return self._proba_with(X, self.calibration_["probability"]) if proba is None else self._given_proba(proba, X)

    def _given_proba(self, proba: Any, X: Any) -> np.ndarray:
        """``proba`` checked as the (n, K) probabilities of the rows of ``X``."""
        return check_probabilities(proba, "proba", n=len(X), num_classes=len(self.classes_), rows="rows of X")

    def _calibration(self, caller: str) -> dict[str, Any]:
        check_is_fitted(self)
        state = getattr(self, "calibration_", None)
        if state is None:
            raise ValueError(f"{caller} needs a calibrated classifier: call calibrate(X_cal, y_cal) first")
        return state

    def _rejection(self, caller: str) -> dict[str, Any]:
        rejection = self._calibration(caller)["rejection"]
        if rejection is None:
            raise ValueError(
                f"{caller} needs a rejection threshold: calibrate(X_cal, y_cal, target_precision=P) first"
            )
        return rejection

    def _acceptance(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """Acceptance scores (n,) of validated rows ``X`` whose calibrated probabilities are ``proba``."""
        state = self.calibration_
        features = self._features(self, X, state["probability"], state["rejection"]["class_scales"], proba)
        return _logistic(state["rejection"], features)

    def _refuse_reference_rows(self, X: np.ndarray) -> None:
        """``ValueError`` if any row of ``X`` is (up to float round-off) a vector the classifier stores."""
        nearest = self._neighbour_distances(X, 1)[:, 0]  # (n,)
        metric = self._distance_metric
        tolerance = DUPLICATE_TOLERANCE[metric]
        if metric == "l2":
            tolerance = tolerance * np.maximum(np.linalg.norm(X.astype(np.float64), axis=1), 1e-12)
        same = np.flatnonzero(nearest <= tolerance)
        if same.size:
            more = f" (and {same.size - 1} more)" if same.size > 1 else ""
            raise ValueError(
                f"X_cal row {int(same[0])}{more} is a vector of the index (or an exact duplicate of one): scores "
                "on the index's own vectors are optimistic and break the coverage guarantee; calibrate on "
                "held-out rows that neither the model nor the index saw"
            )

    def _features(
        self, clf: Any, X: np.ndarray, params: dict[str, Any], scales: Any, proba: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, 6) features of ``clf``'s predictions on ``X`` (see ``FEATURES``).

        ``scales`` (K, 2): per class of this classifier, the median distance of its stored vectors to their
        nearest other stored vector, and to their ``m`` nearest; the last two features divide the query's
        distances by the scales of its predicted class (a tight class makes the same distance more suspect).
        """
        proba = clf._proba_with(X, params) if proba is None else proba  # (n, K')
        top2 = -np.sort(-proba, axis=1)[:, :2]  # (n, ≤2)
        second = top2[:, 1] if top2.shape[1] > 1 else np.zeros(len(X))
        predicted = np.argmax(proba, axis=1)
        if clf is not self:  # a leave-one-class-out classifier: its labels are this one's class codes
            predicted = np.asarray(clf.classes_)[predicted]
        m = min(NEIGHBOURS_FOR_FEATURES, clf._reference_size())
        dist = clf._neighbour_distances(X, m)  # (n, m); inf where an approximate index found fewer than m
        finite = np.isfinite(dist)
        dist = np.where(finite, dist, dist[finite].max() if finite.any() else 2.0)
        nearest, mean = dist[:, 0], dist.mean(axis=1)
        scales = np.asarray(scales, dtype=np.float64)[predicted]  # (n, 2)
        return np.column_stack([np.log(np.maximum(top2[:, 0], 1e-12)), top2[:, 0] - second, nearest, mean,
                                nearest / scales[:, 0], mean / scales[:, 1]])

    def _class_scales(self, random_state: int) -> np.ndarray:
        """(K, 2) per-class distance scales from the stored vectors themselves (see :meth:`_features`)."""
        vectors, codes = self._reference()
        rng = np.random.default_rng(random_state)
        m = min(NEIGHBOURS_FOR_FEATURES, len(codes) - 1)
        scales = np.ones((len(self.classes_), 2))
        if m < 1:
            return scales
        for c in range(len(self.classes_)):
            rows = np.flatnonzero(codes == c)
            rows = rows if len(rows) <= SCALE_SAMPLE else rng.choice(rows, SCALE_SAMPLE, replace=False)
            dist = self._neighbour_distances(vectors[rows], m + 1)[:, 1:]  # (r, m) the first is the vector itself
            dist = np.where(np.isfinite(dist), dist, np.nan)
            scales[c] = np.nanmedian(dist[:, 0]), np.nanmedian(np.nanmean(dist, axis=1))
        return np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)

    def _fit_rejection(
        self, X: np.ndarray, codes: np.ndarray, fit_rows: np.ndarray, conf_rows: np.ndarray,
        params: dict[str, Any], target: float, unseen_share: float, random_state: int,
    ) -> dict[str, Any]:
        """The acceptance score (fit rows and their stand-ins) and its threshold (the other rows and theirs).

        Stand-ins for never-seen classes (see the module notes): a row's *twin* is the same row scored by
        the classifier without its class; *mixtures* are between-class mixtures of rows that land in a gap.
        """
        from sklearn.linear_model import LogisticRegression

        scales = self._class_scales(random_state)
        rng = np.random.default_rng(random_state)
        present = np.unique(codes)
        if len(present) > MAX_TWIN_CLASSES:  # each twin classifier holds a copy of the index: bound the work
            present = np.sort(rng.choice(present, MAX_TWIN_CLASSES, replace=False))
        without = {int(c): self._without_class(int(c)) for c in present}

        def twins(rows: np.ndarray) -> np.ndarray:
            """Features of the never-seen stand-ins made from ``rows``: their twins, then their mixtures."""
            parts = [self._features(without[int(c)], X[rows][codes[rows] == c], params, scales)
                     for c in present if (codes[rows] == c).any()]
            mixed, parents = between_classes(X[rows], codes[rows], rng)
            if len(mixed):  # keep the mixtures in a gap between their two classes, not inside a class
                proba = self._proba_with(mixed, params)
                pair = codes[rows][parents]  # (m, 2)
                parent_distance = self._neighbour_distances(X[rows], 1)[:, 0][parents].max(axis=1)  # (m,)
                between = (pair == proba.argmax(axis=1)[:, None]).any(axis=1)
                between &= self._neighbour_distances(mixed, 1)[:, 0] > parent_distance
                if between.any():
                    parts.append(self._features(self, mixed[between], params, scales, proba[between]))
            return np.concatenate(parts) if parts else np.empty((0, len(FEATURES)))

        Xf, cf = X[fit_rows], codes[fit_rows]
        proba = self._proba_with(Xf, params)
        known = self._features(self, Xf, params, scales, proba)
        features = np.concatenate([known, twins(fit_rows)])
        accept = np.concatenate([proba.argmax(axis=1) == cf, np.zeros(len(features) - len(known), dtype=bool)])
        if not accept.any():  # every prediction wrong: nothing to learn, rank by confidence
            mean, scale = np.zeros(len(FEATURES)), np.ones(len(FEATURES))
            coef, intercept = np.eye(len(FEATURES))[0], 0.0
        else:
            mean, scale = features.mean(axis=0), features.std(axis=0)
            scale[scale == 0] = 1.0
            model = LogisticRegression(C=1.0, max_iter=1000).fit((features - mean) / scale, accept)
            coef, intercept = model.coef_[0], float(model.intercept_[0])
        rejection = {"target_precision": target, "unseen_share": unseen_share, "features": list(FEATURES),
                     "mean": mean.tolist(), "scale": scale.tolist(), "coef": np.asarray(coef, float).tolist(),
                     "intercept": intercept, "class_scales": scales.tolist()}

        Xc, cc = X[conf_rows], codes[conf_rows]
        proba = self._proba_with(Xc, params)
        known = _logistic(rejection, self._features(self, Xc, params, scales, proba))  # (n_c,)
        unseen = _logistic(rejection, twins(conf_rows))  # (n_c,) an accepted twin is a wrong prediction
        weight = unseen_share / (1.0 - unseen_share) * len(known) / max(len(unseen), 1)  # stand-ins weigh that much
        threshold, precision, _ = conformal.precision_threshold(
            np.concatenate([known, unseen]),
            np.concatenate([proba.argmax(axis=1) == cc, np.zeros(len(unseen), dtype=bool)]),
            target,
            np.concatenate([np.ones(len(known)), np.full(len(unseen), weight)]),
        )
        rejection.update(threshold=threshold, precision=precision, known_kept=float(np.mean(known >= threshold)),
                         unseen_rejected=float(np.mean(unseen < threshold)),
                         **_threshold_spread(known, proba.argmax(axis=1) == cc, unseen, weight, target,
                                             random_state))
        return rejection


def evaluate_calibration(clf: Any, X: Any, y: Any) -> dict[str, Any]:
    """How a calibrated classifier does on labelled data: ECE, coverage, set size, and rejection if fitted.

    Rows whose label is not among ``clf.classes_`` are *unseen*: they count in ``n_unseen`` and (with a
    rejection rule) in ``unseen_rejected``; ECE, coverage and set sizes are over the known rows only.

    Returns
    -------
    dict with ``n``, ``n_unseen``, ``classes`` (the classifier's), ``ece``, ``coverage``, ``coverage_by_class``
    (in ``classes`` order, ``None`` for a class without rows), ``mean_set_size``, ``empty_sets`` (known rows), and
    with a rejection rule ``accepted_precision`` (an accepted unseen row counts as wrong), ``known_kept``,
    ``unseen_rejected`` (``None`` when there are no such rows).

    Example
    -------
    >>> from metriclearn.classify import KNNClassifier
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 700)
    >>> X = rng.normal(0, 3, (3, 4))[y] + rng.normal(size=(700, 4))
    >>> knn = KNNClassifier(device="cpu").fit(X[:300], y[:300]).calibrate(X[300:600], y[300:600], alpha=0.2)
    >>> report = evaluate_calibration(knn, X[600:], y[600:])
    >>> report["n"], report["n_unseen"], bool(report["coverage"] > 0.7)
    (100, 0, True)
    """
    state = clf._calibration("evaluate_calibration")
    X = query_data(clf, X)
    y = check_labels(y, "y", n=len(X))
    if (y.dtype.kind in "US") != (clf.classes_.dtype.kind in "US"):
        y = y.astype(str) if clf.classes_.dtype.kind in "US" else y
    codes, known = class_codes(clf.classes_, y)
    proba = clf._proba_with(X, state["probability"])  # (n, K)
    report: dict[str, Any] = {"n": len(X), "n_unseen": int((~known).sum()), "classes": clf.classes_.tolist()}
    if known.any():
        pk, ck = proba[known], codes[known]
        sets = conformal.prediction_sets(pk, state["conformal"]["threshold"], state["conformal"]["score"])
        covered = sets[np.arange(len(ck)), ck]  # (n_known,)
        report.update(ece=conformal.reliability(pk, ck)["ece"], coverage=float(covered.mean()),
                      coverage_by_class=conformal.coverage_by_class(covered, ck, len(clf.classes_)),
                      mean_set_size=float(sets.sum(axis=1).mean()), empty_sets=float((~sets.any(axis=1)).mean()))
    rejection = state["rejection"]
    if rejection is not None:
        keep = clf._acceptance(X, proba) >= rejection["threshold"]
        correct = known & (proba.argmax(axis=1) == codes)
        report.update(
            accepted_precision=float(correct[keep].mean()) if keep.any() else None,
            known_kept=float(keep[known].mean()) if known.any() else None,
            unseen_rejected=float((~keep[~known]).mean()) if (~known).any() else None,
        )
    return report


# ---------------------------------------------------------------------------------------------- helpers
def between_classes(X: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One mixture ``λ·x_i + (1 − λ)·x_j`` per row, ``x_j`` a random row of another class, λ ~ U(0.4, 0.6).

    Stand-ins for inputs of classes the *model* never saw, which it tends to embed between the clusters of
    the classes it knows (the "data placeholders" of Zhou et al., "Learning Placeholders for Open-Set
    Recognition", CVPR 2021). Returns the mixtures (m, d) and the rows of their two parents (m, 2); empty
    when ``codes`` hold a single class. :meth:`CalibrationMixin.calibrate` keeps only the mixtures that
    land in a gap: classified as one of their parents' classes, and farther from the stored vectors than
    both parents (a mixture inside overlapping classes is not a stand-in for anything new).

    >>> mixed, parents = between_classes(np.array([[0.0, 0], [2, 2], [4, 0]]), np.array([0, 1, 1]),
    ...                                  np.random.default_rng(0))
    >>> mixed.shape, parents.tolist()
    ((3, 2), [[0, 2], [1, 0], [2, 0]])
    """
    rows, partners = [], []
    for i, c in enumerate(codes):
        others = np.flatnonzero(codes != c)
        if others.size:
            rows.append(i)
            partners.append(others[rng.integers(others.size)])
    if not rows:
        return np.empty((0, X.shape[1]), dtype=X.dtype), np.empty((0, 2), dtype=np.int64)
    lam = rng.uniform(0.4, 0.6, (len(rows), 1))
    mixed = (lam * X[rows] + (1.0 - lam) * X[partners]).astype(X.dtype)
    return mixed, np.column_stack([rows, partners]).astype(np.int64)


def _best_by_nll(candidates: Iterator[tuple[dict[str, Any], dict[str, float], np.ndarray]],
                 codes: np.ndarray) -> tuple[dict[str, Any], float, dict[str, float]]:
    """``(params, NLL, grid point)`` of the candidate whose probabilities have the lowest mean negative
    log-likelihood on ``codes``; candidates are ``(params, grid point, probabilities)``."""
    best: tuple[dict[str, Any], float, dict[str, float]] | None = None
    rows = np.arange(len(codes))
    for params, point, proba in candidates:
        nll = float(-np.mean(np.log(np.clip(proba[rows, codes], 1e-15, 1.0))))
        if best is None or nll < best[1] - 1e-12:
            best = (params, nll, point)
    assert best is not None
    return best


def _threshold_spread(known: np.ndarray, correct: np.ndarray, unseen: np.ndarray, weight: float, target: float,
                      random_state: int) -> dict[str, Any]:
    """How much the rejection threshold depends on which calibration rows were drawn: the threshold of
    ``BOOTSTRAP`` resamples (rows and stand-ins, with replacement) → ``threshold_se`` (their standard deviation)
    and ``threshold_interval`` (5th and 95th percentiles); resamples that cannot reach ``target`` are counted in
    ``threshold_unreached``. Small calibration sets give wide intervals: report them with the threshold."""
    rng = np.random.default_rng(random_state + 1)
    thresholds, unreached = [], 0
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(known), len(known))
        j = rng.integers(0, len(unseen), len(unseen))
        try:
            t, _, _ = conformal.precision_threshold(
                np.concatenate([known[i], unseen[j]]), np.concatenate([correct[i], np.zeros(len(j), dtype=bool)]),
                target, np.concatenate([np.ones(len(i)), np.full(len(j), weight)]))
        except ValueError:
            unreached += 1
            continue
        thresholds.append(t)
    if len(thresholds) < 2:
        return {"threshold_se": None, "threshold_interval": None, "threshold_unreached": unreached / BOOTSTRAP}
    low, high = np.percentile(thresholds, [5, 95])
    return {"threshold_se": float(np.std(thresholds, ddof=1)), "threshold_interval": [float(low), float(high)],
            "threshold_unreached": unreached / BOOTSTRAP}


def _widen(grid: tuple[float, ...], side: str) -> tuple[float, ...]:
    """A geometric ``grid`` extended on ``side`` (``"low"`` / ``"high"``) by half its length at the same ratio.

    >>> _widen((1.0, 2.0, 4.0, 8.0), "low")
    (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    """
    ratio, extra = grid[1] / grid[0], max(len(grid) // 2, 2)
    if side == "low":
        return tuple(grid[0] / ratio**k for k in range(extra, 0, -1)) + tuple(grid)
    return tuple(grid) + tuple(grid[-1] * ratio**k for k in range(1, extra + 1))


def _logistic(rejection: dict[str, Any], features: np.ndarray) -> np.ndarray:
    z = ((features - np.asarray(rejection["mean"])) / np.asarray(rejection["scale"])) @ np.asarray(rejection["coef"])
    return 1.0 / (1.0 + np.exp(-(z + rejection["intercept"])))


def _named(validate: Any, name: str) -> np.ndarray:
    """Run a scikit-learn validation and put the argument's name in front of its message."""
    try:
        return validate()
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
