"""Reject without collisions (issue #25 item 3): ``classify --reject`` marks rejections in a separate boolean
(``--rejected-out FILE.npy``; a ``rejected`` column in csv / json) and never re-uses a label value, so a class ``-1``
(a ±1 task) or a class named ``unknown`` is never counted as a rejection; ``unknown_label`` is refused when it is a
real class."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke, make_blobs

from metriclearn.classify import CacheClassifier, KNNClassifier
from metriclearn.indexes import EmbeddingIndex


def _task(labels: tuple, tmp_path: Path) -> dict[str, Path]:
    """An index of two overlapping, uneven classes, calibration rows, and queries with a class never seen."""
    a, b = labels
    x, y = make_blobs({a: 90, b: 47}, dim=5, seed=1, spread=1.2)
    xc, yc = make_blobs({a: 71, b: 38}, dim=5, seed=2, spread=1.2)
    xq, _ = make_blobs({a: 30, b: 17, "never seen": 23}, dim=5, seed=3, spread=1.2)
    index = EmbeddingIndex(5, metric="l2", device="cpu")
    index.add(x, labels=y)
    index.save(tmp_path / "idx")
    for name, array in (("cal", xc), ("cal_y", yc), ("q", xq)):
        np.save(tmp_path / f"{name}.npy", array)
    result = invoke("calibrate", "--index", tmp_path / "idx", "--features", tmp_path / "cal.npy", "--labels",
                    tmp_path / "cal_y.npy", "--method", "knn", "--target-precision", "0.95")
    assert result.exit_code == 0, result.output
    return {"idx": tmp_path / "idx", "q": tmp_path / "q.npy"}


def _printed_rejections(output: str) -> int:
    return int(re.search(r"rejected as unknown: (\d+) of", output).group(1))


def test_a_plus_minus_one_task_keeps_class_minus_one_apart_from_rejections(tmp_path: Path) -> None:
    files = _task((-1, 1), tmp_path)
    pred, rejected = tmp_path / "pred.npy", tmp_path / "rejected.npy"
    base = ["classify", "--index", files["idx"], "--queries", files["q"], "--method", "knn", "--out", pred]
    assert_one_line_error(invoke(*base, "--reject"), 2, "--reject with a .npy --out needs --rejected-out FILE.npy")
    assert not pred.exists()
    result = invoke(*base, "--reject", "--rejected-out", rejected)
    assert result.exit_code == 0, result.output
    labels, flags = np.load(pred), np.load(rejected)
    assert flags.dtype == bool and flags.shape == labels.shape == (70,)
    assert set(labels.tolist()) <= {-1, 1}  # predictions stay labels
    assert flags.any() and (labels[~flags] == -1).any()  # some rejections, and class -1 among the kept
    assert _printed_rejections(result.output) == flags.sum() != (labels == -1).sum()
    assert flags[-23:].mean() > flags[:47].mean()  # the never-seen class (last rows) is rejected more


def test_a_class_named_unknown_is_not_a_rejection_in_csv_and_json(tmp_path: Path) -> None:
    files = _task(("unknown", "known"), tmp_path)
    base = ["classify", "--index", files["idx"], "--queries", files["q"], "--method", "knn", "--reject"]
    result = invoke(*base, "--out", tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:2] == ["prediction", "rejected"]
    flags = np.array([r["rejected"] == "True" for r in rows])
    assert {r["prediction"] for r in rows} <= {"unknown", "known"} and {r["rejected"] for r in rows} == {"True", "False"}
    assert _printed_rejections(result.output) == flags.sum()
    assert result.output.count("rejected as unknown") == 1
    assert invoke(*base, "--out", tmp_path / "pred.json").exit_code == 0
    payload = json.loads((tmp_path / "pred.json").read_text())
    assert payload["rejected"] == flags.tolist() and payload["predictions"] == [r["prediction"] for r in rows]
    assert_one_line_error(invoke(*base, "--out", tmp_path / "p.csv", "--rejected-out", tmp_path / "r.npy"), 2,
                          "--rejected-out goes with a .npy --out")


@pytest.mark.parametrize("make", [lambda: KNNClassifier(7, device="cpu"), lambda: CacheClassifier(device="cpu")],
                         ids=["knn", "cache"])
def test_unknown_label_is_refused_when_it_is_a_class(make) -> None:
    x, y = make_blobs({-1: 60, 1: 33}, dim=4, seed=4, spread=1.5)
    xc, yc = make_blobs({-1: 52, 1: 29}, dim=4, seed=5, spread=1.5)
    xq, _ = make_blobs({-1: 10, 1: 7, 9: 13}, dim=4, seed=6, spread=1.5)
    clf = make().fit(x, y).calibrate(xc, yc, target_precision=0.9)
    for fill, shown in ((-1, "-1"), (np.int64(1), "1"), (1.0, "1.0")):
        with pytest.raises(ValueError, match=rf"^unknown_label={shown} is one of the classes"):
            clf.predict_or_reject(xq, unknown_label=fill)
    labels, rejected = clf.predict_with_rejection(xq)
    assert rejected.dtype == bool and rejected.any() and set(labels.tolist()) <= {-1, 1}
    np.testing.assert_array_equal(clf.predict_or_reject(xq, unknown_label=0), np.where(rejected, 0, labels))
    named = make().fit(x, np.where(y == 1, "unknown", "other")).calibrate(
        xc, np.where(yc == 1, "unknown", "other"), target_precision=0.9)
    with pytest.raises(ValueError, match="unknown_label='unknown' is one of the classes"):
        named.predict_or_reject(xq, unknown_label="unknown")
    assert named.predict_or_reject(xq, unknown_label="rejected").dtype.kind == "U"


def test_labelled_queries_report_accuracy_among_accepted_rows(tmp_path: Path) -> None:
    """With labels, ``--reject`` also says how accurate the accepted rows are and whom it turned away."""
    files = _task(("a", "b"), tmp_path)
    _, truth = make_blobs({"a": 30, "b": 17, "never seen": 23}, dim=5, seed=3, spread=1.2)
    np.save(tmp_path / "q_y.npy", truth)
    pred, rejected = tmp_path / "pred.npy", tmp_path / "rejected.npy"
    result = invoke("classify", "--index", files["idx"], "--queries", files["q"], "--labels", tmp_path / "q_y.npy",
                    "--method", "knn", "--out", pred, "--reject", "--rejected-out", rejected)
    assert result.exit_code == 0, result.output
    labels, flags = np.load(pred), np.load(rejected)
    accepted = ~flags
    expected = (labels[accepted] == truth[accepted]).mean()
    line = re.search(r"accuracy among accepted rows ([\d.]+) \((\d+) of 70 accepted\); rejected: (\d+) of 23 of "
                     r"unknown classes, (\d+) of 47 of known ones", result.output)
    assert line is not None, result.output
    assert float(line.group(1)) == pytest.approx(expected, abs=5e-5) and int(line.group(2)) == accepted.sum()
    assert int(line.group(3)) == flags[truth == "never seen"].sum() and int(line.group(4)) == flags[truth != "never seen"].sum()
    assert float(line.group(1)) > (labels == truth).mean()  # rejection raised the accuracy of what is kept
