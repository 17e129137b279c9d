"""``metriclearn classify`` and ``second-opinion`` through click's CliRunner: outputs, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from sklearn.neighbors import KNeighborsClassifier

from conftest import assert_one_line_error
from conftest import invoke as run
from metriclearn.classify import CacheClassifier
from metriclearn.indexes import EmbeddingIndex


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    gen = np.random.default_rng(7)
    centres = gen.normal(0, 3, (4, 6))
    y = gen.integers(0, 4, 240)
    X = (centres[y] + gen.normal(0, 1.5, (240, 6))).astype(np.float32)
    yq = gen.integers(0, 4, 90)
    Q = (centres[yq] + gen.normal(0, 1.5, (90, 6))).astype(np.float32)
    return {"X": X, "y": y, "Q": Q, "yq": yq}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classify-cli")
    for metric, name in (("l2", "index"), ("cosine", "index_cos")):
        index = EmbeddingIndex(6, metric=metric, device="cpu")
        index.add(data["X"], labels=data["y"])
        index.save(root / name)
    named = EmbeddingIndex(6, metric="l2", device="cpu")
    named.add(data["X"], labels=np.array(["ant", "bee", "cat", "dog"])[data["y"]])
    named.save(root / "index_str")
    bare = EmbeddingIndex(6, metric="l2", device="cpu")
    bare.add(data["X"])
    bare.save(root / "index_bare")
    paths = {name: root / name for name in ("index", "index_cos", "index_str", "index_bare")}
    for key, array in {
        "queries": data["Q"],
        "queries_3d": data["Q"][:, :, None],
        "queries_5d": data["Q"][:, :5],
        "labels_q": data["yq"],
    }.items():
        paths[key] = root / f"{key}.npy"
        np.save(paths[key], array)
    return paths


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_knn_predictions_match_sklearn(files, data, tmp_path: Path, weights: str) -> None:
    out = tmp_path / "pred.npy"
    result = run("classify", "--index", files["index"], "--queries", files["queries"], "--method", "knn",
                 "--k", "7", "--weights", weights, "--out", out)
    assert result.exit_code == 0, result.output
    ref = KNeighborsClassifier(7, weights=weights, algorithm="brute").fit(data["X"], data["y"])
    np.testing.assert_array_equal(np.load(out), ref.predict(data["Q"]))


def test_cache_json_holds_exact_probabilities(files, data, tmp_path: Path) -> None:
    out = tmp_path / "pred.json"
    result = run("classify", "--index", files["index_cos"], "--queries", files["queries"], "--method", "cache",
                 "--theta", "20", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    want = CacheClassifier(theta=20.0, device="cpu").fit(data["X"], data["y"]).predict_proba(data["Q"])
    assert doc["method"] == "cache" and doc["classes"] == [0, 1, 2, 3]
    np.testing.assert_allclose(doc["probabilities"], want, atol=1e-5)
    assert doc["predictions"] == want.argmax(1).tolist()


def test_cache_top_k_csv_with_string_labels(files, data, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    result = run("classify", "--index", files["index_str"], "--queries", files["queries"], "--method", "cache",
                 "--k", "15", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["prediction", "p_ant", "p_bee", "p_cat", "p_dog"] and len(rows) == 91
    proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    names = np.array(["ant", "bee", "cat", "dog"])
    assert [r[0] for r in rows[1:]] == names[proba.argmax(1)].tolist()
    assert np.mean(np.array([r[0] for r in rows[1:]]) == names[data["yq"]]) > 0.8


def test_knn_string_labels_to_npy(files, data, tmp_path: Path) -> None:
    out = tmp_path / "pred.npy"
    assert run("classify", "--index", files["index_str"], "--queries", files["queries"], "--method", "knn",
               "--out", out).exit_code == 0
    pred = np.load(out)
    assert pred.dtype.kind == "U" and set(pred) <= {"ant", "bee", "cat", "dog"}


@pytest.mark.parametrize(
    ("index", "queries", "extra", "fragments"),
    [
        ("index", "queries_5d", [], ["queries_5d.npy' has dimension 5 but the index", "index has dimension 6"]),
        ("index", "queries_3d", [], ["must be a 2-D array", "3-D"]),
        ("index", "queries", ["--k", "0"], ["k must be a positive integer, got 0"]),
        ("index", "queries", ["--k", "241"], ["k=241 is larger than the index", "(240 vectors)"]),
        ("index_bare", "queries", [], ["index_bare' carries no labels; build it with labels"]),
        ("missing_index", "queries", [], ["missing_index"]),
        ("index", "missing.npy", [], ["missing.npy", "does not exist"]),
    ],
)
def test_classify_errors_are_one_line(files, tmp_path: Path, index, queries, extra, fragments) -> None:
    index_path = files.get(index, tmp_path / index)
    query_path = files.get(queries, tmp_path / queries)
    result = run("classify", "--index", index_path, "--queries", query_path, "--method", "knn", *extra,
                 "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, *fragments)
    assert not (tmp_path / "p.npy").exists()


def test_damaged_index_is_reported(files, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in files["index"].iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    faiss_file = damaged / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:-100])  # truncated
    result = run("classify", "--index", damaged, "--queries", files["queries"], "--method", "cache",
                 "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, "damaged", "index.faiss")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--method", "knn", "--theta", "5"], "--theta applies to --method cache only"),
        (["--method", "cache", "--weights", "uniform"], "--weights applies to --method knn only"),
        (["--method", "svm"], "'svm' is not one of 'knn', 'cache'"),
        (["--method", "knn", "--out", "p.txt"], "must end in .npy, .csv, .json"),
    ],
)
def test_classify_usage_errors_exit_2(files, args, fragment) -> None:
    base = ["classify", "--index", files["index"], "--queries", files["queries"]]
    if "--out" not in args:
        args = [*args, "--out", "p.npy"]
    assert_one_line_error(run(*base, *args), 2, fragment)


# ---------------------------------------------------------------------------------------------- second-opinion
@pytest.fixture(scope="module")
def model_outputs(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, Path]:
    """A weak model's probabilities: right on about half the rows."""
    root = tmp_path_factory.mktemp("second-opinion")
    gen = np.random.default_rng(11)
    yq = data["yq"]
    hit = gen.random(len(yq)) < 0.5
    proba = 0.4 * gen.dirichlet(np.ones(4), len(yq)) + 0.6 * np.eye(4)[np.where(hit, yq, (yq + 1) % 4)]
    paths = {"probs": root / "probs.npy", "probs_bad": root / "probs_bad.npy", "probs_k3": root / "probs_k3.npy"}
    np.save(paths["probs"], proba.astype(np.float32))
    np.save(paths["probs_bad"], (2 * proba).astype(np.float32))
    np.save(paths["probs_k3"], np.full((len(yq), 3), 1 / 3, np.float32))
    return paths


def test_second_opinion_blends(files, data, model_outputs, tmp_path: Path) -> None:
    out = tmp_path / "blend.npy"
    result = run("second-opinion", "--index", files["index"], "--features", files["queries"], "--probs",
                 model_outputs["probs"], "--theta", "15", "--lam", "0.25", "--out", out)
    assert result.exit_code == 0, result.output
    proba = np.load(model_outputs["probs"]).astype(np.float64)
    cache = CacheClassifier(theta=15.0, device="cpu").fit(data["X"], data["y"])
    want = cache.second_opinion(data["Q"], proba, lam=0.25)
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (90, 4)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_second_opinion_tunes_on_held_out_files(files, data, model_outputs, tmp_path: Path) -> None:
    out = tmp_path / "blend.npy"
    probs = model_outputs["probs"]
    result = run("second-opinion", "--index", files["index"], "--features", files["queries"], "--probs", probs,
                 "--tune", files["queries"], probs, files["labels_q"], "--out", out)
    assert result.exit_code == 0, result.output
    proba = np.load(probs).astype(np.float64)
    cache = CacheClassifier(device="cpu").fit(data["X"], data["y"]).tune(data["Q"], proba, data["yq"])
    assert f"theta={cache.theta_:g}, lam={cache.lam_:g}" in result.output
    np.testing.assert_allclose(np.load(out), cache.second_opinion(data["Q"], proba), atol=1e-5)
    assert np.mean(np.load(out).argmax(1) == data["yq"]) > np.mean(proba.argmax(1) == data["yq"])


@pytest.mark.parametrize(
    ("probs", "extra", "code", "fragments"),
    [
        ("probs_bad", [], 1, ["--probs file", "probs_bad.npy' rows must be non-negative and sum to 1"]),
        ("probs_k3", [], 1, ["--probs file", "probs_k3.npy' has 3 columns, but there are 4 classes in the index"]),
        ("probs", ["--lam", "2"], 1, ["lam must lie in [0, 1], got 2.0"]),
        ("probs", ["--theta", "5", "--tune", "a.npy", "b.npy", "c.npy"], 2, ["either --tune or --theta/--lam"]),
        ("probs", ["--out", "blend.csv"], 2, ["must end in .npy"]),
    ],
)
def test_second_opinion_errors(files, model_outputs, tmp_path: Path, probs, extra, code, fragments) -> None:
    args = ["second-opinion", "--index", files["index"], "--features", files["queries"], "--probs",
            model_outputs[probs], *extra]
    if "--out" not in extra:
        args += ["--out", tmp_path / "blend.npy"]
    assert_one_line_error(run(*args), code, *fragments)


def test_second_opinion_row_count_and_label_mismatch(files, model_outputs, tmp_path: Path) -> None:
    few = tmp_path / "few.npy"
    np.save(few, np.load(model_outputs["probs"])[:10])
    result = run("second-opinion", "--index", files["index"], "--features", files["queries"], "--probs", few,
                 "--out", tmp_path / "b.npy")
    assert_one_line_error(result, 1, "--probs file", "few.npy' has 10 rows, but there are 90 feature rows")
    short_labels = tmp_path / "short.npy"
    np.save(short_labels, np.arange(5))
    result = run("second-opinion", "--index", files["index"], "--features", files["queries"], "--probs",
                 model_outputs["probs"], "--tune", files["queries"], model_outputs["probs"], short_labels,
                 "--out", tmp_path / "b.npy")
    assert_one_line_error(result, 1, "has 5 entries but there are 90 samples")


def test_end_to_end_with_index_build(data, tmp_path: Path) -> None:
    """The user's path: `metriclearn index build --embeddings --labels`, then `classify` on that directory."""
    np.save(tmp_path / "emb.npy", data["X"])
    np.save(tmp_path / "labels.npy", data["y"])
    np.save(tmp_path / "queries.npy", data["Q"])
    built = run("index", "build", "--embeddings", tmp_path / "emb.npy", "--labels", tmp_path / "labels.npy",
                "--metric", "l2", "--device", "cpu", "--out", tmp_path / "idx")
    assert built.exit_code == 0, built.output
    result = run("classify", "--index", tmp_path / "idx", "--queries", tmp_path / "queries.npy", "--method", "knn",
                 "--k", "5", "--weights", "uniform", "--device", "cpu", "--out", tmp_path / "pred.npy")
    assert result.exit_code == 0, result.output
    ref = KNeighborsClassifier(5, algorithm="brute").fit(data["X"], data["y"])
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), ref.predict(data["Q"]))
