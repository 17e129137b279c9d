"""``metriclearn index build|query`` through click's CliRunner: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from conftest import assert_one_line_error
from conftest import invoke as run
from metriclearn.indexes import EmbeddingIndex, exact_search


@pytest.fixture
def files(tmp_path: Path, rng: np.random.Generator) -> Path:
    np.save(tmp_path / "emb.npy", rng.standard_normal((40, 6), dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.array(["ab"[i % 2] for i in range(40)]))
    np.save(tmp_path / "q.npy", rng.standard_normal((3, 6), dtype=np.float32))
    return tmp_path


def build(files: Path, *extra: object) -> Result:
    args = ["index", "build", "--embeddings", files / "emb.npy", "--labels", files / "labels.npy"]
    return run(*args, *extra, "--out", files / "idx")


def test_build_then_query_table(files: Path) -> None:
    result = build(files, "--metric", "l2")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"indexed 40 vectors of dimension 6 (Flat, l2) -> {files / 'idx'}"
    result = run("index", "query", "--index", files / "idx", "--queries", files / "q.npy", "-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["query", "rank", "id", "distance", "label"] and len(lines) == 1 + 3 * 2
    D, I = exact_search(np.load(files / "q.npy"), np.load(files / "emb.npy"), 2)
    first = lines[1].split()
    assert first[:3] == ["0", "1", str(I[0, 0])] and float(first[3]) == pytest.approx(D[0, 0], rel=1e-4)
    assert first[4] == "ab"[I[0, 0] % 2]


def test_query_json_and_out_file(files: Path) -> None:
    assert build(files, "--kind", "hnsw").exit_code == 0
    args = ["index", "query", "--index", files / "idx", "--queries", files / "q.npy", "-k", 4]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    index = EmbeddingIndex.load(files / "idx")
    D, I = index.search(np.load(files / "q.npy"), 4)
    assert data["metric"] == "cosine" and data["score"] == "similarity" and data["k"] == 4
    assert data["ids"] == I.tolist() and data["labels"] == index.labels_for(I).tolist()
    np.testing.assert_allclose(data["distances"], D, rtol=1e-6)
    result = run(*args, "--out", files / "res.json")
    assert result.exit_code == 0 and result.output.strip() == f"wrote 3 x 4 neighbours -> {files / 'res.json'}"
    assert json.loads((files / "res.json").read_text()) == data


def test_build_ivf_without_labels(files: Path) -> None:
    result = run("index", "build", "--embeddings", files / "emb.npy", "--kind", "ivf", "--nlist", 2, "--nprobe", 2,
                 "--out", files / "idx")  # fmt: skip
    assert result.exit_code == 0, result.output
    index = EmbeddingIndex.load(files / "idx")
    assert index.factory == "IVF2,Flat" and index.nprobe == 2 and index.labels is None
    data = json.loads(run("index", "query", "--index", files / "idx", "--queries", files / "q.npy", "-k", 40,
                          "--json").output)  # fmt: skip
    assert "labels" not in data and sorted(data["ids"][0]) == list(range(40))  # all lists probed: exact


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --embeddings FILE.npy or --model DIR --data PATH"),
        (["--embeddings", "e.npy", "--model", "m"], "give either --embeddings FILE.npy or --model DIR --data PATH, not both"),
        (["--model", "m"], "--model DIR needs --data PATH"),
        (["--model", "m", "--data", "digits", "--labels", "y.npy"], "--labels goes with --embeddings; with --model the labels come from --data"),
        (["--embeddings", "e.npy", "--data", "digits"], "give either --embeddings FILE.npy or --model DIR --data PATH, not both"),
        (["--data", "digits"], "--data PATH needs --model DIR"),
        (["--embeddings", "e.npy", "--metric", "hamming"], "Invalid value for '--metric'"),
    ],
)
def test_build_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("index", "build", *args, "--out", tmp_path / "idx")
    assert result.exit_code == 2
    assert message in result.output


def test_query_needs_its_options() -> None:
    result = run("index", "query", "--queries", "q.npy", "-k", 1)
    assert result.exit_code == 2 and "Missing option '--index'" in result.output


def _one_line_error(result: Result, expected: str) -> None:
    assert_one_line_error(result, 1)
    assert result.output.strip() == f"Error: {expected}"


def test_build_errors_exit_1(files: Path) -> None:
    np.save(files / "short.npy", np.arange(5))
    np.save(files / "cube.npy", np.zeros((2, 3, 4), dtype=np.float32))
    np.save(files / "nan.npy", np.full((2, 6), np.nan, dtype=np.float32))
    out = files / "idx"
    cases = {
        ("--embeddings", files / "emb.npy", "--labels", files / "short.npy"):
            f"labels file '{files / 'short.npy'}' has 5 entries but there are 40 samples",
        ("--embeddings", files / "cube.npy"):
            f"embeddings file '{files / 'cube.npy'}' must be a 2-D array (n, d), got 3-D with shape (2, 3, 4)",
        ("--embeddings", files / "nan.npy"):
            f"embeddings file '{files / 'nan.npy'}' contains NaN or inf values in 2 of 2 rows",
        ("--embeddings", files / "missing.npy"): f"embeddings file '{files / 'missing.npy'}' does not exist",
        ("--embeddings", files / "emb.npy", "--kind", "ivf", "--nlist", 64):
            "kind 'ivf' needs at least 64 vectors to train (nlist=64), got 40; "
            "add more vectors in the first call or lower nlist",
    }  # fmt: skip
    for args, expected in cases.items():
        _one_line_error(run("index", "build", *args, "--out", out), expected)
    assert not out.exists()


def test_query_errors_exit_1(files: Path) -> None:
    assert build(files).exit_code == 0
    idx = files / "idx"
    np.save(files / "q4.npy", np.zeros((2, 4), dtype=np.float32))
    np.save(files / "cube.npy", np.zeros((2, 3, 6), dtype=np.float32))

    def query(index: Path, queries: Path, k: int) -> Result:
        return run("index", "query", "--index", index, "--queries", queries, "-k", k)

    _one_line_error(query(idx, files / "q.npy", 0), "k must be a positive integer, got 0")
    _one_line_error(query(idx, files / "q.npy", 41), f"k=41 is larger than the index {idx} (40 vectors)")
    _one_line_error(
        query(idx, files / "q4.npy", 1), f"queries '{files / 'q4.npy'}' has dimension 4 but the index {idx} has dimension 6"
    )
    cube = files / "cube.npy"
    expected = f"queries file '{cube}' must be a 2-D array (n, d), got 3-D with shape (2, 3, 6)"
    _one_line_error(query(idx, cube, 1), expected)
    _one_line_error(query(files / "nope", files / "q.npy", 1), f"{files / 'nope'}: index directory does not exist")
    (idx / "index.faiss").write_bytes((idx / "index.faiss").read_bytes()[:-8])
    _one_line_error(
        query(idx, files / "q.npy", 1),
        f"index directory {idx} is damaged: index.faiss does not match its checksum (truncated or altered)",
    )
    (idx / "index.json").unlink()
    result = query(idx, files / "q.npy", 1)
    assert result.exit_code == 1 and "index.json is missing" in result.output


def test_build_from_a_trained_run_end_to_end(tmp_path: Path) -> None:
    run_dir, idx = tmp_path / "run", tmp_path / "idx"
    train = ["train", "--epochs", "1", "--batch-size", "64", "--encoder", "mlp:16", "--embedding-dim", "8",
             "--device", "cpu", "--quiet", "--out", run_dir]  # fmt: skip
    assert run(*train).exit_code == 0
    result = run("index", "build", "--model", run_dir, "--data", "digits", "--kind", "hnsw", "--out", idx)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"indexed 1797 vectors of dimension 8 (HNSW32,Flat, cosine) -> {idx}"
    from sklearn.datasets import load_digits

    index = EmbeddingIndex.load(idx)
    np.testing.assert_array_equal(index.labels, load_digits().target)  # digits' classes are 0..9
    np.save(tmp_path / "q.npy", index.vectors(index.ids[:5]))
    data = json.loads(run("index", "query", "--index", idx, "--queries", tmp_path / "q.npy", "-k", 1, "--json").output)
    assert [row[0] for row in data["ids"]] == [0, 1, 2, 3, 4]  # each stored vector finds itself


def test_a_python_warning_is_one_line_and_debug_keeps_its_origin(files: Path) -> None:
    result = build(files, "--metric", "l2", "--kind", "ivf", "--nlist", "4")  # 40 vectors: 10 per list
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert ("warning: inverted lists trained on 40 vectors for nlist=4 (10 per list); faiss recommends at least "
            "39 per list (156)") in lines
    assert not any("UserWarning" in line or ".py:" in line for line in lines)  # no file, no category, no source
    with pytest.warns(UserWarning, match="inverted lists trained on 40 vectors"):  # --debug: Python's own handling
        result = run("--debug", "index", "build", "--embeddings", files / "emb.npy", "--metric", "l2", "--kind",
                     "ivf", "--nlist", "4", "--out", files / "idx2")
    assert result.exit_code == 0 and "warning:" not in result.output, result.output
