"""``metriclearn calibrate`` and ``classify --sets/--reject`` through click's CliRunner: outputs and every error path."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from metriclearn.cli import cli
from metriclearn.indexes import EmbeddingIndex

NAMES = np.array(["ant", "bee", "cat", "dog"])


def draw(gen: np.random.Generator, centres: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = gen.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    return (centres[y] + gen.normal(0, 1.8, (n, 6))).astype(np.float32), y


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibrate-cli")
    gen = np.random.default_rng(11)
    centres = gen.normal(0, 3, (4, 6))
    X, y = draw(gen, centres, 300)
    Xc, yc = draw(gen, centres, 240)
    Q, _ = draw(gen, centres, 60)
    index = EmbeddingIndex(6, metric="l2", device="cpu")
    index.add(X, labels=y)
    index.save(root / "index")
    named = EmbeddingIndex(6, metric="l2", device="cpu")
    named.add(X, labels=NAMES[y])
    named.save(root / "index_str")
    bare = EmbeddingIndex(6, metric="l2", device="cpu")
    bare.add(X)
    bare.save(root / "index_bare")
    paths = {name: root / name for name in ("index", "index_str", "index_bare")}
    arrays = {"X": X, "y": y, "cal": Xc, "cal_y": yc, "cal_names": NAMES[yc], "queries": Q, "cal_5d": Xc[:, :5],
              "cal_y_short": yc[:-1], "cal_y_unknown": np.where(yc == 0, 7, yc)}
    for key, array in arrays.items():
        paths[key] = root / f"{key}.npy"
        np.save(paths[key], array)
    return paths


@pytest.fixture()
def index_copy(files, tmp_path: Path) -> Path:
    """A fresh copy of the integer-labelled index, so calibrating it does not leak into other tests."""
    return Path(shutil.copytree(files["index"], tmp_path / "index"))


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def calibrate(index: Path, files, *extra: str) -> Result:
    return run("calibrate", "--index", index, "--features", files["cal"], "--labels", files["cal_y"], *extra)


def assert_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    if code == 1:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


def test_calibrate_stores_in_the_manifest_and_classify_uses_it(files, index_copy: Path, tmp_path: Path) -> None:
    vectors = (index_copy / "index.faiss").stat()
    result = calibrate(index_copy, files, "--method", "knn", "--alpha", "0.2", "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    assert (index_copy / "index.faiss").stat().st_mtime_ns == vectors.st_mtime_ns  # only the manifest is rewritten
    assert "ECE" in result.output and "coverage" in result.output and "mean set size" in result.output
    stored = EmbeddingIndex.load(index_copy, device="cpu").attrs["calibration"]["knn"]
    assert stored["conformal"]["alpha"] == 0.2 and stored["rejection"]["target_precision"] == 0.9
    assert f"coverage {stored['coverage']:.4f}" in result.output
    result = calibrate(index_copy, files, "--method", "cache")  # a second method keeps the first
    assert result.exit_code == 0, result.output
    assert set(EmbeddingIndex.load(index_copy, device="cpu").attrs["calibration"]) == {"knn", "cache"}

    out, sets, rejected = tmp_path / "pred.npy", tmp_path / "sets.npy", tmp_path / "rejected.npy"
    result = run("classify", "--index", index_copy, "--queries", files["queries"], "--method", "knn",
                 "--out", out, "--sets", sets, "--reject", "--rejected-out", rejected)
    assert result.exit_code == 0, result.output
    from metriclearn.classify import KNNClassifier

    knn = KNNClassifier.from_index(EmbeddingIndex.load(index_copy, device="cpu")).restore_calibration(stored)
    Q = np.load(files["queries"])
    np.testing.assert_array_equal(np.load(sets), knn.predict_sets(Q))
    predictions, flags = np.load(out), np.load(rejected)
    np.testing.assert_array_equal(knn.predict_or_reject(Q), np.where(flags, -1, predictions))
    assert flags.dtype == bool and flags.any() and not flags.all() and set(predictions.tolist()) <= {0, 1, 2, 3}
    assert f"rejected as unknown: {flags.sum()} of 60 (marked in {rejected})" in result.output


def test_class_conditional_coverage_through_the_cli(files, index_copy: Path, tmp_path: Path) -> None:
    result = calibrate(index_copy, files, "--method", "knn", "--coverage", "class", "--alpha", "0.2")
    assert result.exit_code == 0, result.output
    stored = EmbeddingIndex.load(index_copy, device="cpu").attrs["calibration"]["knn"]
    assert stored["conformal"]["coverage"] == "class" and len(stored["conformal"]["threshold"]) == 4
    by_class = stored["coverage_by_class"]
    lowest = min(v for v in by_class if v is not None)
    assert f"class coverage: lowest class coverage {lowest:.4f}" in result.output
    sets = tmp_path / "sets.npy"
    result = run("classify", "--index", index_copy, "--queries", files["queries"], "--method", "knn",
                 "--out", tmp_path / "pred.npy", "--sets", sets)
    assert result.exit_code == 0, result.output
    from metriclearn.classify import KNNClassifier

    knn = KNNClassifier.from_index(EmbeddingIndex.load(index_copy, device="cpu")).restore_calibration(stored)
    np.testing.assert_array_equal(np.load(sets), knn.predict_sets(np.load(files["queries"])))
    assert_error(calibrate(index_copy, files, "--method", "knn", "--coverage", "label"), 2, "--coverage")


def test_rejections_are_a_separate_bool_in_csv_json_and_npy(files, tmp_path: Path) -> None:
    index = Path(shutil.copytree(files["index_str"], tmp_path / "index_str"))
    result = run("calibrate", "--index", index, "--features", files["cal"], "--labels", files["cal_names"],
                 "--method", "knn", "--target-precision", "0.95")
    assert result.exit_code == 0, result.output
    outputs = {}
    for suffix in (".npy", ".csv", ".json"):
        out = tmp_path / f"pred{suffix}"
        extra = ("--rejected-out", tmp_path / "rejected.npy") if suffix == ".npy" else ()
        result = run("classify", "--index", index, "--queries", files["queries"], "--method", "knn",
                     "--out", out, "--reject", *extra)
        assert result.exit_code == 0, result.output
        outputs[suffix] = out
    npy, flags = np.load(outputs[".npy"]), np.load(tmp_path / "rejected.npy")
    with open(outputs[".csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    payload = json.loads(outputs[".json"].read_text())
    assert flags.any() and set(npy.tolist()) <= set(NAMES.tolist())
    assert [r["prediction"] for r in rows] == npy.tolist() == payload["predictions"]
    assert [r["rejected"] == "True" for r in rows] == flags.tolist() == payload["rejected"]


def test_integer_labels_keep_their_values_in_json(files, index_copy: Path, tmp_path: Path) -> None:
    assert calibrate(index_copy, files, "--method", "cache", "--target-precision", "0.95").exit_code == 0
    out = tmp_path / "pred.json"
    result = run("classify", "--index", index_copy, "--queries", files["queries"], "--method", "cache",
                 "--out", out, "--reject")
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload["predictions"]) <= {0, 1, 2, 3} and any(payload["rejected"])
    assert f"rejected as unknown: {sum(payload['rejected'])} of 60" in result.output


def test_a_rebuilt_index_drops_the_calibration(files, index_copy: Path, tmp_path: Path) -> None:
    assert calibrate(index_copy, files, "--method", "knn").exit_code == 0
    result = run("index", "build", "--embeddings", files["X"], "--labels", files["y"], "--metric", "l2",
                 "--out", tmp_path / "rebuilt")
    assert result.exit_code == 0, result.output
    result = run("classify", "--index", tmp_path / "rebuilt", "--queries", files["queries"], "--method", "knn",
                 "--out", tmp_path / "p.npy", "--sets", tmp_path / "s.npy")
    assert_error(result, 1, "is not calibrated for --method knn")


# ---------------------------------------------------------------------------------------------- error paths
def test_classify_errors_on_uncalibrated_or_mismatched_use(files, index_copy: Path, tmp_path: Path) -> None:
    out, sets = tmp_path / "p.npy", tmp_path / "s.npy"
    base = ("classify", "--index", index_copy, "--queries", files["queries"], "--out", out)
    assert_error(run(*base, "--method", "knn", "--sets", sets), 1,
                 f"index '{index_copy}' is not calibrated for --method knn", "metriclearn calibrate")
    reject = ("--reject", "--rejected-out", tmp_path / "r.npy")
    assert_error(run(*base, "--method", "knn", *reject), 1, "is not calibrated for --method knn")
    assert calibrate(index_copy, files, "--method", "knn").exit_code == 0
    assert_error(run(*base, "--method", "knn", *reject), 1,
                 "was calibrated for knn without a target precision", "--target-precision")
    assert_error(run(*base, "--method", "cache", "--sets", sets), 1, "is not calibrated for --method cache")
    assert_error(run(*base, "--method", "knn", "--k", "3", "--sets", sets), 2,
                 "--k 3 differs from the k=10 the index was calibrated with")
    assert_error(run(*base, "--method", "knn", "--weights", "uniform", "--sets", sets), 2,
                 "--weights uniform differs from the calibrated weights=distance")
    assert_error(run(*base, "--method", "knn", "--sets", tmp_path / "s.csv"), 2, "--sets", "must end in .npy")
    assert calibrate(index_copy, files, "--method", "cache").exit_code == 0
    assert_error(run(*base, "--method", "cache", "--theta", "20", "--sets", sets), 2, "--theta 20 contradicts")
    # without --sets/--reject a clash only means: use the parameters given, uncalibrated
    result = run(*base, "--method", "knn", "--k", "3")
    assert result.exit_code == 0 and "(calibrated)" not in result.output, result.output
    assert "(calibrated)" in run(*base, "--method", "knn").output


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (("--features", "X", "--labels", "y"), 1, ("X_cal row 0 (and 299 more) is a vector of the index",
                                                   "break the coverage guarantee")),
        (("--labels", "cal_y_short"), 1, ("has 239 entries but there are 240 samples",)),
        (("--labels", "cal_y_unknown"), 1, ("y_cal holds labels the classifier does not know, e.g. 7",)),
        (("--labels", "cal_names"), 1, ("y_cal holds string labels, but the classifier's classes are integers",)),
        (("--features", "cal_5d"), 1, ("has dimension 5 but the index", "has dimension 6")),
        (("--alpha", "1.5"), 1, ("alpha must lie strictly between 0 and 1, got 1.5",)),
        (("--alpha", "0.001"), 1, ("alpha=0.001 needs at least 999 calibration rows",)),
        (("--target-precision", "1.5"), 1, ("target_precision must lie in (0, 1], got 1.5",)),
        (("--unseen-share", "1"), 1, ("unseen_share must lie in [0, 1), got 1.0",)),
        (("--fit-fraction", "0"), 1, ("fit_fraction must lie strictly between 0 and 1, got 0.0",)),
        (("--k", "0"), 1, ("k must be a positive integer, got 0",)),
        (("--k", "301"), 1, ("k=301 is larger than the index",)),
        (("--features", "missing"), 1, ("missing.npy",)),
        (("--method", "cache", "--weights", "uniform"), 2, ("--weights applies to --method knn only",)),
        (("--seed", "-1"), 2, ("-1 is not in the range 0<=x<=4294967295",)),
        (("--method", "svm"), 2, ("'svm' is not one of 'knn', 'cache'",)),
        (("--score", "raps"), 2, ("'raps' is not one of 'lac', 'aps'",)),
    ],
)
def test_calibrate_error_paths(files, index_copy: Path, args: tuple[str, ...], code: int, fragments) -> None:
    options = {"--features": files["cal"], "--labels": files["cal_y"], "--method": "knn"}
    extra: list[str] = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag in ("--features", "--labels"):
            options[flag] = files.get(value, files["cal"].parent / f"{value}.npy")
        elif flag == "--method":
            options[flag] = value
        else:
            extra += [flag, value]
    argv = ["calibrate", "--index", index_copy]
    for flag, value in options.items():
        argv += [flag, value]
    result = run(*argv, *extra)
    assert_error(result, code, *fragments)
    assert "calibration" not in EmbeddingIndex.load(index_copy, device="cpu").attrs  # nothing stored on failure


def test_calibrate_refuses_bad_index_directories(files, tmp_path: Path) -> None:
    assert_error(calibrate(files["index_bare"], files, "--method", "knn"), 1, "carries no labels")
    assert_error(calibrate(tmp_path / "nowhere", files, "--method", "knn"), 1, "nowhere")


def test_report_shows_the_reliability_diagram_of_a_calibrated_index(files, index_copy: Path, tmp_path: Path) -> None:
    base = ("report", "--embeddings", files["cal"], "--labels", files["cal_y"], "--method", "tsne",
            "--max-points", "100")
    assert_error(run(*base, "--out", tmp_path / "r0", "--index", index_copy), 1, "is not calibrated")
    assert calibrate(index_copy, files, "--method", "knn").exit_code == 0
    result = run(*base, "--out", tmp_path / "r", "--index", index_copy)
    assert result.exit_code == 0, result.output
    png = (tmp_path / "r" / "reliability-knn.png").read_bytes()
    assert png[:4] == b"\x89PNG" and "reliability-knn.png" in result.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Reliability diagram, knn" in html and html.count("data:image/png;base64,") == 2


def test_evaluate_reports_the_calibration_of_an_index_built_by_the_model(tmp_path: Path) -> None:
    """train -> index build --model -> embed + calibrate -> evaluate --index, through the real commands."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    known = y < 8  # digits 8 and 9: never seen by the model nor the index, only in the test rows
    rows = {"train": np.flatnonzero(known[:900]), "cal": 900 + np.flatnonzero(known[900:1300]),
            "test": np.arange(1300, 1797)}
    for name, r in rows.items():
        np.savez(tmp_path / f"{name}.npz", X=X[r], y=y[r])
        np.save(tmp_path / f"{name}_y.npy", y[r])
    run_dir, index = tmp_path / "run", tmp_path / "index"
    fast = ("--epochs", "2", "--batch-size", "64", "--encoder", "mlp:32", "--embedding-dim", "16", "--device", "cpu")
    assert run("train", "--data", tmp_path / "train.npz", *fast, "--out", run_dir).exit_code == 0
    assert run("index", "build", "--model", run_dir, "--data", tmp_path / "train.npz", "--metric", "l2",
               "--out", index).exit_code == 0
    evaluate = ("evaluate", "--model", run_dir, "--data", tmp_path / "test.npz", "--index", index)
    assert_error(run(*evaluate), 1, "is not calibrated")
    assert run("embed", "--model", run_dir, "--data", tmp_path / "cal.npz", "--out", tmp_path / "cal.npy").exit_code == 0
    result = run("calibrate", "--index", index, "--features", tmp_path / "cal.npy", "--labels", tmp_path / "cal_y.npy",
                 "--method", "knn", "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    result = run(*evaluate, "--out", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    assert "calibrated knn" in result.output and "coverage" in result.output and "rejection" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())["calibration"]["knn"]
    assert report["n"] == 497 and report["n_unseen"] == int((y[1300:] >= 8).sum()) > 0
    assert 0.8 < report["coverage"] <= 1.0 and 0.0 <= report["ece"] < 0.2
    assert 0.0 < report["unseen_rejected"] <= 1.0 and 0.0 < report["known_kept"] <= 1.0
    assert f"({report['n_unseen']} of 497 rows of classes not in the index)" in result.output
    assert report["classes"] == list(range(8)) and len(report["coverage_by_class"]) == 8  # digits 0-7 known
    lowest = min(range(8), key=lambda c: report["coverage_by_class"][c])
    assert f"(lowest class coverage {report['coverage_by_class'][lowest]:.4f} (class {lowest}))" in result.output


@pytest.mark.parametrize("method", ["knn", "cache"])
def test_classify_reject_and_sets_compute_the_probabilities_once(files, index_copy: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    from metriclearn.classify import CacheClassifier, KNNClassifier
    from metriclearn.classify.from_index import calibrated_classifier

    assert calibrate(index_copy, files, "--method", method, "--k", "4", "--target-precision", "0.9").exit_code == 0
    searches: list[int] = []  # k of every index search
    probability_passes: list[int] = []  # rows of every cache probability computation
    search, cache_proba = EmbeddingIndex.search, CacheClassifier._cache_proba

    def counted_search(self, q, k, batch_size=None):
        searches.append(k)
        return search(self, q, k, batch_size)

    def counted_cache(self, X, theta):
        probability_passes.append(len(X))
        return cache_proba(self, X, theta)

    monkeypatch.setattr(EmbeddingIndex, "search", counted_search)
    monkeypatch.setattr(CacheClassifier, "_cache_proba", counted_cache)
    out, sets = tmp_path / "pred.json", tmp_path / "sets.npy"
    result = run("classify", "--index", index_copy, "--queries", files["queries"], "--method", method, "--out", out,
                 "--reject", "--sets", sets)
    assert result.exit_code == 0, result.output
    # one search, 10 deep, serves the vote's (kNN) or the top-k cache's 4 nearest and the acceptance score's 10
    assert searches == [10]
    if method == "cache":
        assert probability_passes == [60]
    monkeypatch.undo()
    index = EmbeddingIndex.load(index_copy, device="cpu")
    clf = calibrated_classifier(index, method, index.attrs["calibration"][method], "cpu")
    assert isinstance(clf, KNNClassifier if method == "knn" else CacheClassifier)
    queries = np.load(files["queries"])
    labels, rejected = clf.predict_with_rejection(queries)  # the same answers as when computed on their own
    payload = json.loads(out.read_text())
    assert payload["predictions"] == labels.tolist() and payload["rejected"] == rejected.tolist()
    np.testing.assert_array_equal(np.load(sets), clf.predict_sets(queries))
    assert 0 < rejected.sum() < len(rejected)
