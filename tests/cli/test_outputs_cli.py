"""Output folders and files never lose a user's work, and messages name the user's paths (issue 10 items 2 and 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke, make_blobs
from metriclearn._outdir import claim_output_dir
from metriclearn.indexes import EmbeddingIndex


@pytest.fixture
def emb(tmp_path: Path) -> tuple[Path, Path]:
    x, y = make_blobs({"a": 25, "b": 14, "c": 9}, dim=6)
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "e.npy", tmp_path / "y.npy"


def test_index_build_refuses_a_foreign_folder_and_replaces_its_own_only_with_overwrite(
        emb, tmp_path: Path) -> None:
    e, y = emb
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.npy").write_bytes(b"my own labels")
    (mine / "metadata.json").write_text("{}")
    assert_one_line_error(invoke("index", "build", "--embeddings", e, "--out", mine), 1,
                   f"{mine} is not empty and was not written by metriclearn (it holds labels.npy, metadata.json)")
    assert (mine / "labels.npy").read_bytes() == b"my own labels" and sorted(os.listdir(mine)) == [
        "labels.npy", "metadata.json"]  # nothing written, nothing deleted
    out = tmp_path / "idx"
    assert invoke("index", "build", "--embeddings", e, "--labels", y, "--out", out).exit_code == 0
    assert_one_line_error(invoke("index", "build", "--embeddings", e, "--out", out), 1,
                   f"{out} already holds a metriclearn index; pass --overwrite to replace it")
    assert EmbeddingIndex.load(out).labels is not None  # the first index is intact
    result = invoke("index", "build", "--embeddings", e, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert EmbeddingIndex.load(out).labels is None and len(EmbeddingIndex.load(out)) == 48


def test_index_build_waits_for_no_one_while_another_process_writes(emb, tmp_path: Path) -> None:
    e, _ = emb
    with claim_output_dir(tmp_path / "idx", "index"):
        result = invoke("index", "build", "--embeddings", e, "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, f"{tmp_path / 'idx'} is being written by another metriclearn process (pid {os.getpid()})")


def test_report_refuses_a_foreign_folder_and_its_own_without_overwrite(emb, tmp_path: Path) -> None:
    e, y = emb
    args = ["report", "--embeddings", e, "--labels", y, "--method", "tsne"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert_one_line_error(invoke(*args, "--out", tmp_path / "notes"), 1, "not empty and was not written by metriclearn")
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]
    assert invoke(*args, "--out", tmp_path / "r").exit_code == 0
    assert_one_line_error(invoke(*args, "--out", tmp_path / "r"), 1, "already holds a metriclearn report; pass --overwrite")
    assert invoke(*args, "--out", tmp_path / "r", "--overwrite").exit_code == 0
    assert_one_line_error(invoke(*args, "--out", tmp_path / "idx_like", "--overwrite"), 0)  # a new folder: fine
    assert invoke("index", "build", "--embeddings", e, "--out", tmp_path / "r2").exit_code == 0
    assert_one_line_error(invoke(*args, "--out", tmp_path / "r2", "--overwrite"), 1,
                   "holds a metriclearn index output (this command writes a report)")


def test_a_directory_where_a_file_goes_is_named_not_a_temp_file(emb, tmp_path: Path) -> None:
    (tmp_path / "out.npy").mkdir()
    assert_one_line_error(invoke("embed", "--model", tmp_path, "--data", "digits", "--out", tmp_path / "out.npy"), 2,
                   f"Invalid value for '--out': File '{tmp_path / 'out.npy'}' is a directory")
    e, y = emb
    assert invoke("index", "build", "--embeddings", e, "--labels", y, "--out", tmp_path / "idx").exit_code == 0
    assert_one_line_error(invoke("classify", "--index", tmp_path / "idx", "--queries", e, "--method", "knn", "--out",
                          tmp_path / "out.npy"), 2, f"Invalid value for '--out': File '{tmp_path / 'out.npy'}' is a directory")
    from metriclearn._atomic import save_npy

    with pytest.raises(IsADirectoryError) as info:
        save_npy(tmp_path / "out.npy", np.zeros(3))
    from metriclearn.cli import format_error

    assert format_error(info.value) == f"{tmp_path / 'out.npy'}: Is a directory (expected a file name)"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_full_disk_names_the_index_file_not_faiss_temp_file(emb, tmp_path: Path) -> None:
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).normal(size=(4000, 16)).astype(np.float32))  # 256 kB of vectors
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))\n"
        "from metriclearn.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "idx"
    done = subprocess.run([sys.executable, "-c", script, "index", "build", "--embeddings", str(big), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {out / 'index.faiss'}: could not write the file"), lines
    assert "File too large" in lines[0] and ".tmp" not in lines[0]


def test_embed_batch_size_zero_is_a_usage_error() -> None:
    assert_one_line_error(invoke("embed", "--model", "m", "--data", "digits", "--out", "e.npy", "--batch-size", 0), 2,
                   "Invalid value for '--batch-size': 0 is not in the range x>=1")


def test_label_files_are_never_silently_corrupted(emb, tmp_path: Path) -> None:
    e, _ = emb
    np.save(tmp_path / "float.npy", np.arange(48) % 3 + 1.0)  # whole-number floats: converted losslessly
    assert invoke("index", "build", "--embeddings", e, "--labels", tmp_path / "float.npy", "--out",
                  tmp_path / "idx").exit_code == 0
    labels = EmbeddingIndex.load(tmp_path / "idx").labels
    assert labels.dtype.kind == "i" and labels.tolist() == (np.arange(48) % 3 + 1).tolist()
    huge = np.arange(48) % 3 + 1.0
    huge[7] = 1e20  # used to become -9223372036854775808
    np.save(tmp_path / "huge.npy", huge)
    assert_one_line_error(invoke("index", "build", "--embeddings", e, "--labels", tmp_path / "huge.npy", "--out",
                                 tmp_path / "idx2"), 1, "huge.npy' must hold integer or string labels; position 7 "
                                                        "holds the float 1e+20")
    np.save(tmp_path / "complex.npy", np.ones((48, 6), np.complex64))
    assert_one_line_error(invoke("index", "build", "--embeddings", tmp_path / "complex.npy", "--out", tmp_path / "i3"),
                          1, "complex.npy' must hold real numbers, got complex dtype complex64")
