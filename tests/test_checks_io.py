"""Tests for the shared validation helpers and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metriclearn import _atomic, _checks


def test_check_matrix_accepts_and_converts() -> None:
    out = _checks.check_matrix(np.arange(6, dtype=np.int64).reshape(3, 2), "x")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 2)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros(3), ValueError, r"x must be a 2-D array \(n, d\), got 1-D"),
        (np.zeros((2, 2, 2)), ValueError, "got 3-D"),
        (np.zeros((0, 4)), ValueError, "x is empty"),
        (np.array([[1.0, np.nan]]), ValueError, "NaN or inf values in 1 of 1 rows"),
        (np.array([["a", "b"]]), TypeError, "x must be a numeric array"),
    ],
)
def test_check_matrix_rejects(value: np.ndarray, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _checks.check_matrix(value, "x")


def test_check_matrix_dimension_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match="queries has dimension 3, expected 4"):
        _checks.check_matrix(np.zeros((2, 3)), "queries", dim=4)


def test_check_labels() -> None:
    assert _checks.check_labels([1.0, 2.0], "y").dtype == np.int64
    with pytest.raises(ValueError, match="y has 2 entries but there are 3 samples"):
        _checks.check_labels([1, 2], "y", n=3)
    with pytest.raises(ValueError, match=r"y must hold integer or string labels; position 0 holds the float 1\.5"):
        _checks.check_labels([1.5], "y")


def test_scalar_checks() -> None:
    assert _checks.check_positive_int(np.int64(3), "k") == 3
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        _checks.check_positive_int(0, "k")
    with pytest.raises(TypeError, match="k must be an integer, got True"):
        _checks.check_positive_int(True, "k")
    with pytest.raises(ValueError, match="lam must lie in"):
        _checks.check_fraction(1.5, "lam")
    with pytest.raises(ValueError, match="metric must be one of 'l2', 'cosine'; got 'x'"):
        _checks.check_choice("x", ("l2", "cosine"), "metric")


def test_tensor_checks() -> None:
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        _checks.check_labels_tensor(torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        _checks.check_labels_tensor(torch.zeros(2), 2)
    with pytest.raises(TypeError, match="floating-point"):
        _checks.check_embeddings_tensor(torch.zeros(2, 2, dtype=torch.long))


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    _atomic.write_json(target, {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    with pytest.raises(RuntimeError), _atomic.atomic_open(target) as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text())["a"] == 1.5  # old content survives the failed write
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_save_npy_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "e.npy"
    _atomic.save_npy(path, np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(np.load(path), np.eye(3))
    first = _atomic.sha256(path)
    _atomic.save_npy(path, np.zeros((3, 3), dtype=np.float32))
    assert _atomic.sha256(path) != first and len(first) == 64


def test_atomic_files_follow_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        _atomic.write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "r.txt").stat().st_mode & 0o777 == 0o644


def test_check_probabilities_names_the_file_and_the_row() -> None:
    good = _checks.check_probabilities([[0.2, 0.8], [1.0, 0.0]], "p", n=2, num_classes=2)
    assert good.dtype == np.float64 and good.tolist() == [[0.2, 0.8], [1.0, 0.0]]
    name = "--probs file 'p.npy'"
    with pytest.raises(ValueError, match=r"--probs file 'p\.npy' has 3 rows, but there are 2 feature rows"):
        _checks.check_probabilities(np.full((3, 2), 0.5), name, n=2, rows="feature rows")
    with pytest.raises(ValueError, match=r"has 2 columns, but there are 4 classes in the index"):
        _checks.check_probabilities(np.full((3, 2), 0.5), name, num_classes=4, columns="classes in the index")
    with pytest.raises(ValueError, match=r"row 1 sums to 1 and holds a negative value"):
        _checks.check_probabilities([[0.5, 0.5], [1.5, -0.5]], name)


def test_atomic_write_errors_name_the_target_not_the_temp_file(tmp_path: Path) -> None:
    def fails_like_faiss(path: str) -> None:
        raise RuntimeError(f"Error in void faiss::write_index at index_write.cpp:499: Error: 'ret == (size * 4)' "
                           f"failed: write error in {path}: 4051 != 16000 (No space left on device)")

    with pytest.raises(OSError) as info:
        _atomic.save_with(tmp_path / "index.faiss", fails_like_faiss)
    assert info.value.filename == str(tmp_path / "index.faiss") and ".tmp" not in str(info.value)
    assert f"write error in {tmp_path / 'index.faiss'}: 4051 != 16000 (No space left on device)" in str(info.value)

    def disk_full(path: str) -> None:
        raise OSError(28, "No space left on device", path)

    with pytest.raises(OSError, match="No space left on device") as info:
        _atomic.save_with(tmp_path / "m.pt", disk_full)
    assert info.value.errno == 28 and info.value.filename == str(tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp file left behind


def test_knn_classifier_nan_gets_our_message() -> None:
    from metriclearn.classify import KNNClassifier

    X = np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, 2.0]], np.float32)
    with pytest.raises(ValueError, match=r"^X contains NaN or inf values in 1 of 3 rows$"):
        KNNClassifier(n_neighbors=1).fit(X, [0, 1, 1])
    knn = KNNClassifier(n_neighbors=1).fit(X[:2], [0, 1])
    with pytest.raises(ValueError, match=r"^X contains NaN or inf values in 1 of 3 rows$"):
        knn.predict(X)


def test_model_fingerprint_covers_scalar_buffers() -> None:
    from metriclearn.fingerprint import model_fingerprint

    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)  # num_batches_tracked is a 0-d buffer
    assert model_fingerprint(a) == model_fingerprint(b)
    b.num_batches_tracked += 1
    assert model_fingerprint(a) != model_fingerprint(b)
