"""Calibration of the neighbour classifiers: conformal coverage, the finite-sample quantile, refusals, open set."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from metriclearn.classify import CacheClassifier, KNNClassifier
from metriclearn.classify.calibration import evaluate_calibration
from metriclearn.classify.conformal import (
    class_scores,
    class_thresholds,
    conformal_quantile,
    conformal_rank,
    precision_threshold,
    prediction_sets,
    reliability,
)
from metriclearn.indexes import EmbeddingIndex

CLASS_SHARES = np.array([0.35, 0.25, 0.2, 0.12, 0.08])  # uneven classes


def blobs(n: int, seed: int, spread: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes in 6-d (a kNN gets ~85 % right), always the same centres."""
    centres = np.random.default_rng(123).normal(0, 2.0, (len(CLASS_SHARES), 6))
    gen = np.random.default_rng(seed)
    y = gen.choice(len(CLASS_SHARES), n, p=CLASS_SHARES)
    return (centres[y] + gen.normal(0, spread, (n, 6))).astype(np.float32), y


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    return blobs(600, seed=0)


# ---------------------------------------------------------------------------------------------- the arithmetic
def test_finite_sample_rank_and_quantile() -> None:
    assert conformal_rank(19, 0.1) == 18  # ⌈20 · 0.9⌉
    assert conformal_rank(99, 0.1) == 90  # ⌈100 · 0.9⌉ = 90 exactly, not 91 from round-off
    assert conformal_rank(1000, 0.05) == 951  # ⌈1001 · 0.95⌉ = ⌈950.95⌉
    assert conformal_rank(9, 0.1) == 9
    with pytest.raises(ValueError, match="alpha=0.1 needs at least 9 calibration rows for a finite threshold, got 8"):
        conformal_rank(8, 0.1)
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))  # 1..100 shuffled
    assert conformal_quantile(scores, 0.1) == 91.0  # ⌈101 · 0.9⌉ = 91st smallest
    assert conformal_quantile(scores, 0.5) == 51.0


def test_quantile_gives_exact_marginal_coverage_on_continuous_scores() -> None:
    # With n exchangeable continuous scores, P(s_new ≤ q̂) = ⌈(n+1)(1−α)⌉ / (n+1) exactly: 18/20 for n=19.
    gen = np.random.default_rng(1)
    trials = 40000
    scores = gen.random((trials, 20))
    q = np.array([conformal_quantile(row[:19], 0.1) for row in scores])
    covered = (scores[:, 19] <= q).mean()
    sd = np.sqrt(0.9 * 0.1 / trials)
    assert abs(covered - 18 / 20) < 4 * sd


def test_class_scores_sets_and_reliability_values() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(class_scores(p, "aps"), [[0.5, 0.8, 1.0], [0.9, 1.0, 0.8]])
    np.testing.assert_array_equal(prediction_sets(p, 0.75, "lac"), [[True, True, False], [False, False, True]])
    np.testing.assert_array_equal(prediction_sets(p, 0.85, "aps"), [[True, True, False], [False, False, True]])
    with pytest.raises(ValueError, match="score must be one of 'lac', 'aps'; got 'raps'"):
        class_scores(p, "raps")
    table = reliability(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1]))
    assert table["ece"] == pytest.approx(0.0) and sum(table["count"]) == 4
    table = reliability(np.array([[0.95, 0.05]] * 4), np.array([0, 1, 1, 1]))
    assert table["ece"] == pytest.approx(0.7)


def test_precision_threshold_takes_the_largest_accepted_set() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.4])
    correct = np.array([1, 1, 0, 1, 1])
    assert precision_threshold(scores, correct, 0.75) == (0.4, 0.8, 1.0)
    assert precision_threshold(scores, correct, 0.9) == (0.9, 1.0, 0.2)  # the tie at 0.8 cannot be split
    assert precision_threshold(scores, correct, 0.8, weights=np.array([1, 1, 3, 1, 1]))[0] == 0.9
    with pytest.raises(ValueError, match="target_precision=1 is not reached at any threshold"):
        precision_threshold(np.array([0.9, 0.1]), np.array([0, 1]), 1.0)


# ---------------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize(("method", "score", "seeds"), [("knn", "lac", 30), ("knn", "aps", 15), ("cache", "lac", 12)])
def test_marginal_coverage_over_many_seeds(train, method: str, score: str, seeds: int) -> None:
    """Coverage ≥ 1 − α on exchangeable data: per seed within the binomial tolerance, and on average."""
    X, y = train
    clf = (KNNClassifier(10, device="cpu") if method == "knn" else CacheClassifier(theta=10.0, device="cpu")).fit(X, y)
    alpha, n_cal, n_test = 0.1, 300, 1500
    coverages = []
    for seed in range(1, seeds + 1):
        Xc, yc = blobs(n_cal, seed=1000 + seed)
        Xt, yt = blobs(n_test, seed=5000 + seed)
        clf.calibrate(Xc, yc, alpha=alpha, score=score, random_state=seed)
        n_conf = clf.calibration_["n_calibration"]
        sets = clf.predict_sets(Xt)
        coverages.append(sets[np.arange(n_test), yt].mean())
        # one seed: test coverage ~ Beta(rank, n+1−rank) mixed with Binomial(n_test) noise
        sd = np.sqrt(alpha * (1 - alpha) * (1 / n_conf + 1 / n_test))
        assert 1 - alpha - 4 * sd <= coverages[-1] <= 1 - alpha + 1 / (n_conf + 1) + 4 * sd, (seed, coverages[-1])
    mean_sd = np.sqrt(alpha * (1 - alpha) * (1 / n_conf + 1 / n_test) / seeds)
    assert 1 - alpha - 3 * mean_sd <= np.mean(coverages) <= 1 - alpha + 1 / (n_conf + 1) + 3 * mean_sd
    assert 1.0 < sets.sum(axis=1).mean() < 3.0  # informative sets on overlapping classes, not all classes


def test_sets_follow_classes_order_and_calibration_keeps_knn_predictions(train) -> None:
    X, y = train
    names = np.array(["ant", "bee", "cat", "dog", "eel"])[::-1]  # codes 0..4 map to names out of sorted order
    Xc, yc = blobs(300, seed=7)
    Xt, yt = blobs(400, seed=8)
    knn = KNNClassifier(10, device="cpu").fit(X, names[y])
    before = knn.predict(Xt)
    knn.calibrate(Xc, names[yc])
    np.testing.assert_array_equal(knn.predict(Xt), before)  # p ∝ (V + ε)^{1/T} is monotone in the vote
    proba = knn.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    sets = knn.predict_sets(Xt)
    assert sets.dtype == bool and sets.shape == (400, 5)
    assert knn.classes_.tolist() == ["ant", "bee", "cat", "dog", "eel"]
    truth = np.searchsorted(knn.classes_, names[yt])
    assert sets[np.arange(400), truth].mean() > 0.85
    np.testing.assert_array_equal(sets, proba >= 1 - knn.calibration_["conformal"]["threshold"])


def _ece(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE written out bin by bin (Guo et al. 2017), independent of ``conformal.reliability``."""
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return total / len(y)


def test_calibration_lowers_ece_on_held_out_rows() -> None:
    """ECE measured here, on rows ``calibrate`` never saw, falls well below the uncalibrated classifier's."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))  # the file is sorted by writer: mix before splitting
    X, y = (X[order] / 16.0).astype(np.float32), y[order]
    fit, cal, held_out = slice(0, 700), slice(700, 1200), slice(1200, None)  # 597 held-out rows
    for clf in (KNNClassifier(10, device="cpu"), CacheClassifier(theta=50.0, device="cpu")):
        clf.fit(X[fit], y[fit])
        before = _ece(clf.predict_proba(X[held_out]), y[held_out])
        clf.calibrate(X[cal], y[cal])
        after = _ece(clf.predict_proba(X[held_out]), y[held_out])
        assert after < 0.6 * before, (type(clf).__name__, before, after)  # measured: 0.041 → 0.015, 0.062 → 0.012
    assert clf.theta_ == clf.calibration_["probability"]["theta"] != 50.0


# ---------------------------------------------------------------------------------------------- refusals, errors
def test_refuses_the_index_vectors_and_exact_duplicates(train) -> None:
    X, y = train
    Xc, yc = blobs(200, seed=3)
    knn = KNNClassifier(10, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"X_cal row 0 \(and 599 more\) is a vector of the index"):
        knn.calibrate(X, y)
    leaked = Xc.copy()
    leaked[5] = X[17]
    with pytest.raises(ValueError, match=r"X_cal row 5 is a vector of the index .* break the coverage guarantee"):
        knn.calibrate(leaked, yc)
    cache = CacheClassifier(device="cpu").fit(X, y)
    scaled = Xc.copy()
    scaled[9] = 3.0 * X[2]  # same direction: a duplicate for the cosine cache
    with pytest.raises(ValueError, match="X_cal row 9 is a vector of the index"):
        cache.calibrate(scaled, yc)
    index = EmbeddingIndex(6, metric="cosine", device="cpu")
    index.add(X, labels=y, ids=np.arange(len(X)) + 100)
    with pytest.raises(ValueError, match="X_cal row 5 is a vector of the index"):
        KNNClassifier.from_index(index).calibrate(leaked, yc)
    assert not hasattr(knn, "calibration_")


def test_class_conditional_coverage_holds_in_every_class(train) -> None:
    """coverage="class": ≥ 1 − α within each class (over seeds), where one marginal threshold leaves the rare,
    hard class far below it."""
    X, y = train
    clf = KNNClassifier(10, device="cpu").fit(X, y)
    alpha, seeds, n_cal, n_test = 0.1, 12, 600, 2000
    by_mode: dict[str, np.ndarray] = {}
    for mode in ("marginal", "class"):
        rows = []
        for seed in range(1, seeds + 1):
            Xc, yc = blobs(n_cal, seed=1000 + seed)
            Xt, yt = blobs(n_test, seed=5000 + seed)
            clf.calibrate(Xc, yc, alpha=alpha, coverage=mode, random_state=seed)
            covered = clf.predict_sets(Xt)[np.arange(n_test), yt]
            rows.append([covered[yt == k].mean() for k in range(len(CLASS_SHARES))])
            assert clf.calibration_["conformal"]["coverage"] == mode
            assert len(clf.calibration_["coverage_by_class"]) == len(CLASS_SHARES)
        by_mode[mode] = np.mean(rows, axis=0)  # (K,) mean coverage of each class over the seeds
    n_y = CLASS_SHARES * n_cal * 0.7  # calibration rows of each class that set its threshold (fit_fraction 0.3)
    sd = np.sqrt(alpha * (1 - alpha) * (1 / n_y + 1 / (CLASS_SHARES * n_test)) / seeds)
    assert (by_mode["class"] >= 1 - alpha - 3 * sd).all(), by_mode["class"]
    assert by_mode["marginal"].min() < 1 - alpha - 0.1  # the rare overlapping class: marginal coverage hides it
    assert by_mode["marginal"].mean() < by_mode["class"].mean()


def test_a_class_with_too_few_rows_is_in_every_set(train) -> None:
    X, y = train
    Xc, yc = blobs(400, seed=7)
    rare = np.flatnonzero(yc == 4)[5:]  # keep 5 rows of class 4: too few for a finite threshold at α = 0.1
    keep = np.setdiff1d(np.arange(len(yc)), rare)
    clf = KNNClassifier(10, device="cpu").fit(X, y).calibrate(Xc[keep], yc[keep], alpha=0.1, coverage="class")
    thresholds = clf.calibration_["conformal"]["threshold"]
    assert thresholds[4] is None and all(t is not None for t in thresholds[:4])
    assert clf.predict_sets(blobs(50, seed=8)[0])[:, 4].all()
    assert class_thresholds(np.array([0.3, 0.1, 0.2]), np.array([1, 1, 1]), 2, alpha=0.5) == [None, 0.2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha must lie strictly between 0 and 1, got 0.0"),
        ({"alpha": 1.5}, ValueError, "alpha must lie strictly between 0 and 1, got 1.5"),
        ({"alpha": "0.1"}, TypeError, "alpha must be a number in \\(0, 1\\), got '0.1'"),
        ({"target_precision": 0}, ValueError, "target_precision must lie in \\(0, 1\\], got 0"),
        ({"target_precision": 1.2}, ValueError, "target_precision must lie in \\(0, 1\\], got 1.2"),
        ({"score": "raps"}, ValueError, "score must be one of 'lac', 'aps'; got 'raps'"),
        ({"coverage": "label"}, ValueError, "coverage must be one of 'marginal', 'class'; got 'label'"),
        ({"unseen_share": 1.0}, ValueError, "unseen_share must lie in \\[0, 1\\), got 1.0"),
        ({"fit_fraction": 1}, ValueError, "fit_fraction must lie strictly between 0 and 1, got 1"),
        ({"random_state": -1}, ValueError, "random_state must be a non-negative integer, got -1"),
        ({"alpha": 0.005}, ValueError, "X_cal has 200 rows; fit_fraction=0.3 uses 60 .* alpha=0.005 needs at least 199"),
    ],
)
def test_bad_arguments_are_named(train, kwargs: dict, error: type, match: str) -> None:
    X, y = train
    Xc, yc = blobs(200, seed=3)
    with pytest.raises(error, match=match):
        KNNClassifier(10, device="cpu").fit(X, y).calibrate(Xc, yc, **kwargs)


def test_bad_calibration_rows_and_uncalibrated_use(train) -> None:
    X, y = train
    Xc, yc = blobs(200, seed=3)
    knn = KNNClassifier(10, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="y_cal holds labels the classifier does not know, e.g. 9"):
        knn.calibrate(Xc, np.where(yc == 0, 9, yc))
    with pytest.raises(ValueError, match="y_cal holds string labels, but the classifier's classes are integers"):
        knn.calibrate(Xc, yc.astype(str))
    with pytest.raises(ValueError, match="y_cal has 199 entries but there are 200 samples"):
        knn.calibrate(Xc, yc[:-1])
    with pytest.raises(ValueError, match="X_cal: X has 5 features, but KNNClassifier is expecting 6 features"):
        knn.calibrate(Xc[:, :5], yc)
    with pytest.raises(ValueError, match=r"predict_sets needs a calibrated classifier: call calibrate"):
        knn.predict_sets(Xc)
    knn.calibrate(Xc, yc)
    with pytest.raises(ValueError, match=r"predict_or_reject needs a rejection threshold: calibrate\(X_cal, y_cal, "
                                         r"target_precision=P\)"):
        knn.predict_or_reject(Xc)
    proba = knn.predict_proba(Xc)  # precomputed (calibrated) probabilities: checked, then used as they are
    np.testing.assert_array_equal(knn.predict_sets(Xc, proba=proba), knn.predict_sets(Xc))
    with pytest.raises(ValueError, match="proba has 199 rows, but there are 200 rows of X"):
        knn.predict_sets(Xc, proba=proba[1:])
    with pytest.raises(ValueError, match="proba has 4 columns, but there are 5 classes"):
        knn.predict_sets(Xc, proba=proba[:, :4])
    with pytest.raises(ValueError, match="proba rows must be non-negative and sum to 1; row .* sums to 2"):
        knn.predict_sets(Xc, proba=proba * 2)
    one = KNNClassifier(3, device="cpu").fit(X[y == 0], y[y == 0])
    with pytest.raises(ValueError, match="calibration needs at least 2 classes, the classifier has 1"):
        one.calibrate(Xc[yc == 0], yc[yc == 0])


def test_fit_tune_and_clone_drop_the_calibration(train) -> None:
    X, y = train
    Xc, yc = blobs(200, seed=3)
    knn = KNNClassifier(10, device="cpu").fit(X, y).calibrate(Xc, yc)
    assert not hasattr(clone(knn), "calibration_")
    knn.fit(X, y)
    assert not hasattr(knn, "calibration_")
    cache = CacheClassifier(device="cpu").fit(X, y).calibrate(Xc, yc)
    cache.tune(Xc, np.full((200, 5), 0.2), yc, thetas=(10.0,), lams=(0.5,))
    assert not hasattr(cache, "calibration_") and cache.theta_ == 10.0


# ---------------------------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("method", ["knn", "cache"])
def test_calibration_saved_in_the_index_survives_save_and_load(tmp_path, train, method: str) -> None:
    X, y = train
    Xc, yc = blobs(300, seed=4)
    Xt, _ = blobs(100, seed=5)
    index = EmbeddingIndex(6, metric="l2", device="cpu")
    index.add(X, labels=y)

    def build(idx: EmbeddingIndex, **params) -> KNNClassifier | CacheClassifier:
        if method == "knn":
            return KNNClassifier.from_index(idx, **params)
        return CacheClassifier.from_index(idx, device="cpu", **params)

    clf = build(index).calibrate(Xc, yc, alpha=0.2, target_precision=0.9)
    index.attrs["calibration"] = {method: clf.calibration_}
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    again = build(loaded).restore_calibration(loaded.attrs["calibration"][method])
    np.testing.assert_array_equal(again.predict_sets(Xt), clf.predict_sets(Xt))
    np.testing.assert_array_equal(again.predict_or_reject(Xt), clf.predict_or_reject(Xt))
    np.testing.assert_allclose(again.predict_proba(Xt), clf.predict_proba(Xt))
    other = build(loaded, n_neighbors=5) if method == "knn" else build(loaded, top_k=50)
    with pytest.raises(ValueError, match="the calibration was made for classifier"):
        other.restore_calibration(loaded.attrs["calibration"][method])
    loaded.add(Xt, labels=np.zeros(len(Xt), dtype=np.int64))
    assert "calibration" not in loaded.attrs  # the vectors changed: the calibration no longer describes them


# ---------------------------------------------------------------------------------------------- open set
def test_open_set_rejects_more_unseen_digits_than_a_similarity_threshold() -> None:
    """Index and calibrate on digits 0-5; digits 6-9 were never seen. Same target precision for both rules."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(y))
    train, cal, test = perm[:800], perm[800:1200], perm[1200:]
    train, cal = train[y[train] < 6], cal[y[cal] < 6]
    knn = KNNClassifier(10, device="cpu").fit(X[train], y[train])
    knn.calibrate(X[cal], y[cal], target_precision=0.98)
    unknown = y[test] >= 6
    ours = knn.predict_or_reject(X[test])
    d_cal = knn.kneighbors(X[cal])[0][:, 0]
    t, _, _ = precision_threshold(-d_cal, knn.predict(X[cal]) == y[cal], 0.98)
    plain_keep = -knn.kneighbors(X[test])[0][:, 0] >= t
    ours_rejected = (ours[unknown] == -1).mean()
    assert ours_rejected > (~plain_keep[unknown]).mean() + 0.1
    accepted = ours != -1
    plain_precision = (knn.predict(X[test]) == y[test])[plain_keep].mean()
    assert (ours[accepted] == y[test][accepted]).mean() > plain_precision
    assert (ours[~unknown] != -1).mean() > 0.6  # knowns are still mostly kept
    assert set(np.unique(ours)) <= {-1, 0, 1, 2, 3, 4, 5}
    report = evaluate_calibration(knn, X[test], y[test])
    assert report["n"] == len(test) and report["n_unseen"] == unknown.sum()
    assert report["unseen_rejected"] == pytest.approx(ours_rejected)
    assert report["known_kept"] == pytest.approx((ours[~unknown] != -1).mean())
    assert report["accepted_precision"] == pytest.approx((ours[accepted] == y[test][accepted]).mean())
    sets = knn.predict_sets(X[test][~unknown])
    assert report["coverage"] == pytest.approx(sets[np.arange(len(sets)), y[test][~unknown]].mean())


def test_predict_or_reject_label_types(train) -> None:
    X, y = train
    Xc, yc = blobs(300, seed=6)
    names = np.array(["a", "b", "c", "d", "e"])
    knn = KNNClassifier(10, device="cpu").fit(X, names[y]).calibrate(Xc, names[yc], target_precision=0.9)
    mixed = knn.predict_or_reject(Xc)
    assert mixed.dtype == object and set(mixed.tolist()) <= {-1, *names.tolist()}
    named = knn.predict_or_reject(Xc, unknown_label="unknown")
    assert named.dtype.kind == "U" and (named == "unknown").sum() == (mixed == -1).sum()
    scores = knn.acceptance_score(Xc)
    assert ((scores >= knn.calibration_["rejection"]["threshold"]) == (named != "unknown")).all()
    with pytest.raises(TypeError, match="unknown_label must be a single label"):
        knn.predict_or_reject(Xc, unknown_label=[-1, -2])


def test_twin_classifiers_are_bounded(train, monkeypatch: pytest.MonkeyPatch) -> None:
    import metriclearn.classify.calibration as calibration

    X, y = train
    Xc, yc = blobs(300, seed=9)
    built: list[int] = []
    original = KNNClassifier._without_class

    def spy(self: KNNClassifier, code: int) -> KNNClassifier:
        built.append(code)
        return original(self, code)

    monkeypatch.setattr(KNNClassifier, "_without_class", spy)
    monkeypatch.setattr(calibration, "MAX_TWIN_CLASSES", 2)
    knn = KNNClassifier(10, device="cpu").fit(X, y).calibrate(Xc, yc, target_precision=0.9)
    assert len(built) == 2 and len(set(built)) == 2
    # the bounded rule still holds its precision on fresh rows, where the plain argmax does not
    Xt, yt = blobs(3000, seed=10)
    labels, rejected = knn.predict_with_rejection(Xt)
    plain = (labels == yt).mean()
    precision = (labels == yt)[~rejected].mean()
    sd = np.sqrt(0.9 * 0.1 / (~rejected).sum())
    assert precision >= 0.9 - 4 * sd and precision > plain + 0.05, (plain, precision)  # measured: 0.88 → 0.98
    assert (~rejected).mean() > 0.3  # and still answers for many rows (measured: 47 %)
