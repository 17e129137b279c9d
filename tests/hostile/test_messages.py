"""Messages a hostile (or unlucky) user meets: each is one line that names the user's file or option and says what
to do, never a library's own text (torch's 7-line "Weights only load failed", "size mismatch for standardize.mean",
"Unable to allocate 233. TiB"), never a temporary file's name."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, invoke, make_blobs
from torch import nn

COUNTS = {0: 30, 1: 21, 2: 26, 3: 17}  # uneven on purpose
FAST = ("--epochs", 2, "--batch-size", 16, "--samples-per-class", 4, "--device", "cpu", "--no-report", "-q")


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed after its last checkpoint (model.pt not yet written), trained on ``d.npz`` beside it (named
    relative to the folder, so that a copy of both resumes from its own folder)."""
    root = tmp_path_factory.mktemp("partial")
    X, y = make_blobs(COUNTS, dim=6)
    np.savez(root / "d.npz", X=X, y=y)
    here = os.getcwd()
    os.chdir(root)
    try:
        result = invoke("train", "--data", "d.npz", *FAST, "--out", "run")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    (root / "run" / "model.pt").unlink()
    return root


def _resumable(partial_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A private copy of the partial run and its data, in the current folder: (run folder, data file)."""
    shutil.copy(partial_run / "d.npz", tmp_path / "d.npz")
    shutil.copytree(partial_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return Path("run"), Path("d.npz")


def _resume(run: Path, data: Path):
    return invoke("train", "--data", data, *FAST, "--out", run, "--resume")


# --------------------------------------------------------------------------------------------- checkpoints, resume
@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint", "link to /dev/zero"])
def test_damaged_last_pt_on_resume_is_exit_1_naming_it(partial_run: Path, tmp_path: Path, monkeypatch,
                                                        damage: str) -> None:
    run, data = _resumable(partial_run, tmp_path, monkeypatch)
    last = run / "checkpoints" / "last.pt"
    content = last.read_bytes()
    last.unlink()
    if damage == "link to /dev/zero":
        last.symlink_to("/dev/zero")
    else:
        last.write_bytes({"truncated": content[:200], "empty": b"", "not a checkpoint": b"my notes\n"}[damage])
    result = _resume(run, data)
    assert_one_line_error(result, 1, str(last), "--overwrite")
    assert "Weights only load failed. This file" not in result.output and not (run / "model.pt").exists()


@pytest.mark.parametrize("change", ["another width", "same size, other values"])
def test_data_changed_before_resume_is_named(partial_run: Path, tmp_path: Path, monkeypatch, change: str) -> None:
    run, data = _resumable(partial_run, tmp_path, monkeypatch)
    X, y = make_blobs(COUNTS, dim=7 if change == "another width" else 6, seed=5)
    np.savez(data, X=X, y=y)
    result = _resume(run, data)
    expected = "shape (6,) in 4 classes then" if change == "another width" else "its SHA-256 differs"
    assert_one_line_error(result, 1, f"--data {data} changed since the run started", expected, "restore the file")
    assert "size mismatch" not in result.output


def test_resume_on_the_same_data_still_finishes(partial_run: Path, tmp_path: Path, monkeypatch) -> None:
    run, data = _resumable(partial_run, tmp_path, monkeypatch)
    result = _resume(run, data)
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").is_file()


# --------------------------------------------------------------------------------------------- writing
def test_disk_full_while_writing_a_checkpoint_names_the_path(partial_run: Path, tmp_path: Path, monkeypatch) -> None:
    """torch's writer on a full disk raises its own C++ text; simulated (a tmpfs needs root) as torch words it."""
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 237120 vs 237008")

    monkeypatch.setattr(torch, "save", full_disk_save)
    X, y = make_blobs(COUNTS, dim=6)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    result = invoke("train", "--data", tmp_path / "d.npz", *FAST, "--out", tmp_path / "run")
    assert_one_line_error(result, 1, str(tmp_path / "run" / "checkpoints"), ".pt: could not write the file")
    assert ".tmp" not in result.output
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))  # no temporary file left behind


def test_disk_full_on_a_real_tiny_file_system_names_the_path(partial_run: Path, tmp_path: Path) -> None:
    """A 64 KiB tmpfs (where the test may mount one): ENOSPC, named by the file the user asked for."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the patched test above covers the message")
    try:
        result = invoke("train", "--data", partial_run / "d.npz", *FAST, "--out", mount / "run")
        assert result.exit_code == 1 and "No space left on device" in result.output, result.output
        assert_one_line_error(result, 1, str(mount / "run"), "the disk is full")
        assert ".tmp" not in result.output
    finally:
        os.system(f"umount -l {mount}")  # lazy: a writer killed by the full disk may still hold a file open


def test_errors_never_name_temporary_files(tmp_path: Path, monkeypatch) -> None:
    """A folder where no file can be created (read-only for a non-root user; simulated, since root may write)."""
    def refused(*args, dir=None, prefix="", suffix="", **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}k2j4_x{suffix}"))

    X, y = make_blobs(COUNTS, dim=6)
    np.save(tmp_path / "e.npy", X), np.save(tmp_path / "y.npy", y)
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    result = invoke("report", "--embeddings", tmp_path / "e.npy", "--labels", tmp_path / "y.npy", "--method", "tsne",
                    "--max-points", 40, "--out", tmp_path / "out")
    assert_one_line_error(result, 1, f"{tmp_path / 'out'}", "Permission denied")
    assert ".tmp" not in result.output and "k2j4" not in result.output


# --------------------------------------------------------------------------------------------- input files
def test_texts_without_the_sentence_encoder_suggest_it(tmp_path: Path) -> None:
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(8) for w in ("computers", "food")]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("train", "--data", tmp_path / "t.jsonl", "--epochs", 1, "--out", tmp_path / "run")
    assert_one_line_error(result, 1, str(tmp_path / "t.jsonl"), "--encoder sentence")
    assert "input_shape" not in result.output and not (tmp_path / "run").exists()


def test_a_fake_huge_npy_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 64)})
        fh.write(b"\0" * 64)
    result = invoke("index", "build", "--embeddings", path, "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, str(path), "header declares shape (1000000000000, 64)", "holds 64 bytes")
    assert "allocate" not in result.output


@pytest.mark.parametrize("kind", ["bytes", "dates"])
def test_bytes_and_datetime_labels_name_the_file_and_the_fix(tmp_path: Path, kind: str) -> None:
    X, y = make_blobs(COUNTS, dim=6)
    days = np.datetime64("2020-01-01") + y.astype("timedelta64[D]")
    labels = y.astype(str).astype(bytes) if kind == "bytes" else days
    np.save(tmp_path / "e.npy", X), np.save(tmp_path / "y.npy", labels)
    result = invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--labels", tmp_path / "y.npy",
                    "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, str(tmp_path / "y.npy"), f"got {kind}", "astype(str)")


@pytest.mark.parametrize("role", ["--embeddings", "--labels", "--data"])
def test_a_link_to_dev_zero_is_refused_by_name(tmp_path: Path, role: str) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    X, y = make_blobs(COUNTS, dim=6)
    np.save(tmp_path / "e.npy", X), np.save(tmp_path / "y.npy", y)
    link = tmp_path / ("zero.npz" if role == "--data" else "zero.npy")
    link.symlink_to("/dev/zero")
    if role == "--data":
        result = invoke("train", "--data", link, "--epochs", 1, "--out", tmp_path / "run")
    else:
        files = {"--embeddings": tmp_path / "e.npy", "--labels": tmp_path / "y.npy", role: link}
        result = invoke("index", "build", *[a for kv in files.items() for a in kv], "--out", tmp_path / "idx")
    assert_one_line_error(result, 1, str(link), "is not a file (a link to a device /dev/zero)")


# --------------------------------------------------------------------------------------------- models
def test_config_json_without_id2label_says_so(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_bert_dir, tmp_path / "bert"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.pop("id2label"), config.pop("label2id", None)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(4) for w in ("computers", "food", "politics")]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    texts = tmp_path / "t.jsonl"
    result = invoke("second-opinion", "--model", folder, "--cache", texts, "--data", texts, "--theta", 10, "--lam", 0.5,
                    "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, str(folder), "no id2label", "give config.json an id2label")


def _classifier(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 3))


def test_torchscript_model_of_another_width_names_the_file(tmp_path: Path) -> None:
    torch.jit.script(_classifier()).save(str(tmp_path / "m.pt"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", X=rng.normal(size=(30, 32)).astype(np.float32), y=np.arange(30) % 3)
    np.savez(tmp_path / "q.npz", X=rng.normal(size=(9, 64)).astype(np.float32), y=np.arange(9) % 3)
    result = invoke("second-opinion", "--model", tmp_path / "m.pt", "--cache", tmp_path / "c.npz",
                    "--data", tmp_path / "q.npz", "--theta", 10, "--lam", 0.5, "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, f"--cache '{tmp_path / 'c.npz'}'", "shape (32,)", "64 features per row")


def test_second_opinion_fit_names_the_width_mismatch() -> None:
    from metriclearn.pretrained import SecondOpinion

    X, y = make_blobs({0: 11, 1: 7, 2: 9}, dim=64)
    with pytest.raises(ValueError, match="X has 32 features per row, but the model's first layer takes 64"):
        SecondOpinion(_classifier()).fit(X[:, :32], y)
    with pytest.raises(ValueError, match="X has 32 features per row"):
        SecondOpinion(torch.jit.script(_classifier())).fit(X[:, :32], y)
    assert SecondOpinion(_classifier()).fit(X, y).predict_proba(X).shape == (27, 3)


# --------------------------------------------------------------------------------------------- options and configs
def test_build_objective_accepts_bare_loss_names() -> None:
    from metriclearn.training.objectives import build_objective

    assert build_objective(["neighborhood"], 64, 10).weights == {"neighborhood": 1.0}
    assert build_objective(["neighborhood", "cache:0.5"], 64, 10).weights == {"neighborhood": 1.0, "cache": 0.5}
    assert build_objective([("snn", 2.0)], 64, 10).weights == {"snn": 2.0}
    with pytest.raises(TypeError, match=r"a loss term must be 'NAME', 'NAME:WEIGHT' or \(NAME, WEIGHT\)"):
        build_objective([("snn",)], 64, 10)


@pytest.mark.parametrize("command", ["train", "report", "config"])
def test_a_seed_beyond_32_bits_names_the_flag(tmp_path: Path, command: str) -> None:
    X, y = make_blobs(COUNTS, dim=6)
    np.savez(tmp_path / "d.npz", X=X, y=y), np.save(tmp_path / "e.npy", X), np.save(tmp_path / "y.npy", y)
    if command == "config":
        (tmp_path / "c.toml").write_text("seed = 4294967296\n", encoding="utf-8")
        result = invoke("train", "--data", tmp_path / "d.npz", "--config", tmp_path / "c.toml", "--out", tmp_path / "r")
        assert_one_line_error(result, 1, str(tmp_path / "c.toml"), "seed must be an integer from 0 to 2**32 - 1")
        return
    args = (["train", "--data", tmp_path / "d.npz"] if command == "train"
            else ["report", "--embeddings", tmp_path / "e.npy", "--labels", tmp_path / "y.npy"])
    result = invoke(*args, "--seed", 2**32, "--out", tmp_path / "r")
    assert_one_line_error(result, 2, "Invalid value for '--seed'", "4294967296 is not in the range 0<=x<=4294967295")
    assert not (tmp_path / "r").exists()


def test_a_config_with_a_negative_temperature_names_the_file(tmp_path: Path) -> None:
    X, y = make_blobs(COUNTS, dim=6)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    (tmp_path / "c.toml").write_text("[loss_options.neighborhood]\ntemperature = -1\n", encoding="utf-8")
    result = invoke("train", "--data", tmp_path / "d.npz", "--config", tmp_path / "c.toml", "--out", tmp_path / "r")
    assert_one_line_error(result, 1, f"{tmp_path / 'c.toml'}: loss_options.neighborhood: temperature must be")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------- torchrun
def test_under_torchrun_calibrate_and_report_write_from_rank_0_only(torchrun, tmp_path: Path) -> None:
    """Two CPU ranks (about 20 s: two torchrun start-ups): one calibration stored, one report, each printed once."""
    from metriclearn.indexes import EmbeddingIndex

    X, y = make_blobs(COUNTS, dim=6)
    Xc, yc = make_blobs(COUNTS, dim=6, seed=3)
    index = EmbeddingIndex(6, metric="l2", device="cpu")
    index.add(X, labels=y)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "xc.npy", Xc), np.save(tmp_path / "yc.npy", yc)
    done = torchrun("calibrate", "--index", tmp_path / "idx", "--features", tmp_path / "xc.npy", "--labels",
                    tmp_path / "yc.npy", "--method", "knn", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("calibration stored in") == 1
    assert "knn" in EmbeddingIndex.load(tmp_path / "idx", device="cpu").attrs["calibration"]
    done = torchrun("report", "--embeddings", tmp_path / "xc.npy", "--labels", tmp_path / "yc.npy", "--method", "tsne",
                    "--out", tmp_path / "report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote tsne.png") == 1
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"tsne.png", "report.html", "metrics.json"}
    assert not list((tmp_path / "report").glob(".*.tmp"))
