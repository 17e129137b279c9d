"""Ownership by record (issue #25 item 2): a folder is metriclearn's only when its ``.metriclearn.json`` marker says
so; ``--overwrite`` / ``--resume`` touch only the entries the marker lists; a refused command leaves nothing behind;
two outputs of one command never share a path."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke, make_blobs

from metriclearn._outdir import MARKER, claim_output_dir
from metriclearn.indexes import EmbeddingIndex

FAST = ["--epochs", "1", "--batch-size", "24", "--encoder", "mlp:16", "--embedding-dim", "4", "--device", "cpu",
        "--quiet"]


@pytest.fixture
def blobs(tmp_path: Path) -> dict[str, Path]:
    x, y = make_blobs({"a": 31, "b": 17, "c": 12, "d": 7}, dim=6)  # uneven classes; 67 rows, batch 24 leaves 19
    np.savez(tmp_path / "blobs.npz", X=x, y=y)
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "y.npy", y)
    return {"npz": tmp_path / "blobs.npz", "e": tmp_path / "e.npy", "y": tmp_path / "y.npy"}


def recorded_entries(folder: Path) -> list[str]:
    """What the folder's marker says metriclearn wrote there."""
    return json.loads((folder / MARKER).read_text()).get("entries", [])


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ a user's folder is not a run
@pytest.mark.parametrize("flag", ["--overwrite", None])
def test_a_user_folder_with_run_file_names_is_refused_by_train(blobs, tmp_path: Path, flag: str | None) -> None:
    proj = tmp_path / "proj"
    (proj / "checkpoints").mkdir(parents=True)
    (proj / "model.pt").write_bytes(b"my own model")
    (proj / "config.toml").write_text("# my notes\n")
    (proj / "checkpoints" / "epoch_10.pt").write_bytes(b"ten epochs of my work")
    before = _listing(proj)
    result = invoke("train", "--data", blobs["npz"], *FAST, "--out", proj, *([flag] if flag else []))
    assert_one_line_error(result, 1, f"{proj} is not empty and was not written by metriclearn")
    assert _listing(proj) == before and sorted(os.listdir(proj)) == ["checkpoints", "config.toml", "model.pt"]


def test_resume_into_a_user_folder_with_a_comments_only_config_is_refused(blobs, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.toml").write_text("# nothing but comments\n")
    (proj / "log.csv").write_text("my measurements\n")
    before = _listing(proj)
    result = invoke("train", "--data", blobs["npz"], *FAST, "--out", proj, "--resume")
    assert_one_line_error(result, 1, f"{proj} is not empty and was not written by metriclearn")
    assert _listing(proj) == before and sorted(os.listdir(proj)) == ["config.toml", "log.csv"]


def test_report_and_index_refuse_user_folders_named_like_their_outputs(blobs, tmp_path: Path) -> None:
    site, paper, idx = tmp_path / "site", tmp_path / "report", tmp_path / "idx"
    for folder, name in ((site, "report.html"), (paper, "paper.tex"), (idx, "index.json")):
        folder.mkdir()
        (folder / name).write_text("the user's")
    args = ["report", "--embeddings", blobs["e"], "--labels", blobs["y"], "--method", "tsne", "--overwrite"]
    assert_one_line_error(invoke(*args, "--out", site), 1, "not written by metriclearn (it holds report.html)")
    assert_one_line_error(invoke(*args, "--out", paper), 1, "not written by metriclearn (it holds paper.tex)")
    assert_one_line_error(invoke("index", "build", "--embeddings", blobs["e"], "--out", idx, "--overwrite"), 1,
                          "not written by metriclearn (it holds index.json)")
    for folder in (site, paper, idx):
        assert [p.read_text() for p in folder.iterdir()] == ["the user's"]  # no marker, no lock


# ------------------------------------------------------------------- overwrite touches only the recorded files
def test_overwrite_of_a_run_keeps_the_files_a_user_put_inside_it(blobs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--data", blobs["npz"], *FAST, "--out", run).exit_code == 0
    recorded = recorded_entries(run)
    assert {"model.pt", "config.toml", "log.csv", "metrics.json", "checkpoints/last.pt"} <= set(recorded)
    (run / "checkpoints" / "hand.pt").write_bytes(b"a hand-made checkpoint")
    (run / "report").mkdir()
    (run / "report" / "my.md").write_text("my notes on this run")
    (run / "notes.txt").write_text("top-level notes")
    old_model = (run / "model.pt").read_bytes()
    result = invoke("train", "--data", blobs["npz"], *FAST, "--seed", "7", "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "hand.pt").read_bytes() == b"a hand-made checkpoint"
    assert (run / "report" / "my.md").read_text() == "my notes on this run"
    assert (run / "notes.txt").read_text() == "top-level notes"
    assert (run / "model.pt").read_bytes() != old_model  # the run itself was replaced
    entries = set(recorded_entries(run))
    assert not entries & {"checkpoints/hand.pt", "report/my.md", "notes.txt", "report"}


def test_evaluate_into_the_run_is_recorded_and_replaced_by_overwrite(blobs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--data", blobs["npz"], *FAST, "--out", run).exit_code == 0
    assert invoke("evaluate", "--model", run, "--data", blobs["npz"], "--quiet").exit_code == 0
    assert "evaluate.json" in recorded_entries(run)
    assert invoke("train", "--data", blobs["npz"], *FAST, "--out", run, "--overwrite").exit_code == 0
    assert not (run / "evaluate.json").exists()  # the previous run's evaluation went with it


# -------------------------------------------------------------------------- a refused command leaves nothing
def test_a_claim_whose_work_fails_leaves_no_marker_lock_or_folder(tmp_path: Path) -> None:
    ivf = EmbeddingIndex(4, metric="l2", kind="ivf", nlist=None, device="cpu")  # built on the first add: nothing yet
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "deeper"):
        with pytest.raises(ValueError, match="nothing to save"):
            with claim_output_dir(folder, "index") as out:
                ivf.save(out)
    assert os.listdir(empty) == [] and not (tmp_path / "new").exists()


def test_a_command_that_fails_inside_its_claim_leaves_the_folder_as_it_was(blobs, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    monkeypatch.setattr(EmbeddingIndex, "save", disk_full)
    empty, new = tmp_path / "empty", tmp_path / "new" / "idx"
    empty.mkdir()
    for out in (empty, new):
        assert_one_line_error(invoke("index", "build", "--embeddings", blobs["e"], "--out", out), 1,
                              "No space left on device")
    assert os.listdir(empty) == [] and not (tmp_path / "new").exists()  # no marker, no lock, no folder made


# ----------------------------------------------------------------------- two outputs never share one path
def test_two_outputs_or_an_output_over_an_input_are_refused_up_front(blobs, tmp_path: Path) -> None:
    run, idx = tmp_path / "run", tmp_path / "idx"
    assert invoke("train", "--data", blobs["npz"], *FAST, "--out", run).exit_code == 0
    assert invoke("index", "build", "--embeddings", blobs["e"], "--labels", blobs["y"], "--out", idx).exit_code == 0
    queries = blobs["e"].read_bytes()
    e = tmp_path / "e2.npy"
    cases = [
        (["embed", "--model", run, "--data", blobs["npz"], "--out", e, "--labels-out", e], "--labels-out is the same file as --out"),
        (["classify", "--index", idx, "--queries", blobs["e"], "--method", "knn", "--out", tmp_path / "s.npy", "--sets",
          tmp_path / "." / "s.npy"], "--sets is the same file as --out"),
        (["index", "query", "--index", idx, "--queries", blobs["e"], "-k", "3", "--out", blobs["e"]],
         "--out is the same file as --embeddings"),
    ]
    for args, message in cases:
        assert_one_line_error(invoke(*args), 2, message)
    assert blobs["e"].read_bytes() == queries and not e.exists() and not (tmp_path / "s.npy").exists()
    os.link(blobs["e"], tmp_path / "hard.npy")  # another name for the same file
    assert_one_line_error(invoke("index", "query", "--index", idx, "--queries", blobs["e"], "-k", "3", "--out",
                                 tmp_path / "hard.npy"), 2, "--out is the same file as --embeddings")
    assert np.load(blobs["e"]).shape == (67, 6)  # the queries are intact
