"""Issue #19 item 3: every command refuses its output, inputs and options before any slow work.

Each test makes the slow step impossible (a missing model, a patched embedding) so that a late refusal
would show up as another error than the one expected.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke, make_blobs

FAST = ["--epochs", "1", "--batch-size", "16", "--encoder", "mlp:16", "--embedding-dim", "4", "--device", "cpu",
        "--quiet"]


def _data(tmp_path, counts: dict) -> str:
    x, y = make_blobs(counts, dim=6, seed=1)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    return str(tmp_path / "d.npz")


@pytest.mark.parametrize("counts", [{"a": 9, "b": 14, "c": 6}, {"a": 9, "b": 1, "c": 1, "d": 1, "e": 1}])
def test_val_split_classes_refuses_too_few_classes_before_writing(tmp_path, counts) -> None:
    result = invoke("train", "--data", _data(tmp_path, counts), *FAST, "--val-split", "classes",
                    "--out", tmp_path / "r")
    assert_one_line_error(result, 1, f"has {len(counts)} classes", "--val-split samples", "--val-fraction 0")
    assert not (tmp_path / "r").exists()


def test_val_split_classes_holds_out_two_classes_of_four(tmp_path) -> None:
    data = _data(tmp_path, {"a": 9, "b": 14, "c": 6, "d": 11})
    result = invoke("train", "--data", data, *FAST, "--val-split", "classes", "--val-fraction", "0.1",
                    "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(metrics["val_classes"]) == 2 and (tmp_path / "r" / "model.pt").exists()
    assert metrics["n_eval"] == sum(n for c, n in {"a": 9, "b": 14, "c": 6, "d": 11}.items()
                                    if c in metrics["val_classes"])


def _foreign(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_train_refuses_a_foreign_out_before_reading_data(tmp_path) -> None:
    result = invoke("train", "--data", tmp_path / "missing.npz", *FAST, "--out", _foreign(tmp_path))
    assert_one_line_error(result, 1, "not empty and was not written by metriclearn")


def test_index_build_target_recall_refuses_an_existing_index_before_embedding(tmp_path, monkeypatch) -> None:
    x, y = make_blobs({0: 40, 1: 23, 2: 31}, dim=6)
    np.save(tmp_path / "e.npy", x)
    assert invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--out", tmp_path / "idx").exit_code == 0
    from metriclearn.indexes import EmbeddingIndex

    def never(*args, **kwargs):
        raise AssertionError("tuned before refusing --out")

    monkeypatch.setattr(EmbeddingIndex, "tune", never)
    result = invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--target-recall", "0.9",
                    "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, "already holds a metriclearn index", "--overwrite")
    # with --model the run is not even loaded: a missing run would be another error
    result = invoke("index", "build", "--model", tmp_path / "no-run", "--data", "digits", "--target-recall", "0.9",
                    "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, "already holds a metriclearn index")


def test_report_and_second_opinion_refuse_their_folders_before_loading(tmp_path) -> None:
    folder = _foreign(tmp_path)
    result = invoke("report", "--model", tmp_path / "no-run", "--data", "digits", "--out", folder)
    assert_one_line_error(result, 1, "not empty and was not written by metriclearn")
    result = invoke("second-opinion", "--model", tmp_path / "no-model.pt", "--cache", tmp_path / "c.npz",
                    "--data", tmp_path / "d.npz", "--save", folder, "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, "not empty and was not written by metriclearn")


def test_an_output_file_that_is_a_folder_is_refused_first(tmp_path) -> None:
    (tmp_path / "out.npy").mkdir()
    result = invoke("classify", "--index", tmp_path / "no-index", "--queries", tmp_path / "q.npy",
                    "--method", "knn", "--out", tmp_path / "out.npy")
    assert_one_line_error(result, 2, "is a directory")
    result = invoke("second-opinion", "--index", tmp_path / "no-index", "--features", tmp_path / "f.npy",
                    "--probs", tmp_path / "p.npy", "--out", tmp_path / "out.npy")
    assert_one_line_error(result, 2, "is a directory")
