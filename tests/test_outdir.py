"""The output-folder rule: new, empty or metriclearn's own folders only; one writer at a time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metriclearn._outdir import LOCK, MARKER, claim_output_dir, output_kind


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path: Path) -> None:
    with claim_output_dir(tmp_path / "a" / "b", "run") as d:
        assert d.is_dir()
    assert output_kind(tmp_path / "a" / "b") == "run"
    (tmp_path / "empty").mkdir()
    with claim_output_dir(tmp_path / "empty", "index"):
        pass
    assert output_kind(tmp_path / "empty") == "index"


def test_foreign_files_are_refused_and_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "labels.npy").write_bytes(b"user data")
    with pytest.raises(ValueError, match=r"not empty and was not written by metriclearn \(it holds labels.npy\)"):
        with claim_output_dir(tmp_path, "index", overwrite=True):
            pytest.fail("the block must not run")
    assert (tmp_path / "labels.npy").read_bytes() == b"user data"
    assert not (tmp_path / MARKER).exists()


def test_own_output_needs_overwrite_or_resume(tmp_path: Path) -> None:
    with claim_output_dir(tmp_path, "run") as d:
        (d / "model.pt").write_text("w")
    with pytest.raises(ValueError, match="already holds a metriclearn run; pass --overwrite"):
        with claim_output_dir(tmp_path, "run"):
            pass
    for flags in ({"overwrite": True}, {"resume": True}):
        with claim_output_dir(tmp_path, "run", **flags):
            pass


def test_other_kind_and_files_are_refused(tmp_path: Path) -> None:
    with claim_output_dir(tmp_path / "r", "report") as d:
        (d / "report.html").write_text("x")
    with pytest.raises(ValueError, match=r"holds a metriclearn report output \(this command writes a index\)"):
        with claim_output_dir(tmp_path / "r", "index", overwrite=True):
            pass
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        with claim_output_dir(tmp_path / "f", "run"):
            pass


def test_file_names_do_not_make_a_folder_metriclearn_s(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not written by metriclearn \(it holds index.json\)"):
        with claim_output_dir(tmp_path, "index", overwrite=True):
            pass
    assert output_kind(tmp_path) is None and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    holder = textwrap.dedent(f"""
        import sys, time
        from metriclearn._outdir import claim_output_dir
        with claim_output_dir({str(tmp_path)!r}, "run"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"being written by another metriclearn process \(pid {proc.pid}\)"):
            with claim_output_dir(tmp_path, "run", overwrite=True):
                pass
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0
    with claim_output_dir(tmp_path, "run", overwrite=True):  # released: the next writer gets in
        assert (tmp_path / LOCK).exists()


def test_a_refused_folder_is_left_exactly_as_it_was(tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and was not written by metriclearn"):
        with claim_output_dir(folder, "index"):
            pass
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # no marker, no lock file


def test_the_marker_records_what_was_written_and_overwrite_removes_only_that(tmp_path: Path) -> None:
    from metriclearn._outdir import recorded_entries, remove_recorded

    with pytest.raises(KeyboardInterrupt):  # killed part-way: the planned files stay recorded, for --resume
        with claim_output_dir(tmp_path / "run", "run", writes=("ckpt/last.pt", "model.pt")) as d:
            (d / "ckpt").mkdir()
            (d / "ckpt" / "last.pt").write_text("state")
            raise KeyboardInterrupt
    assert recorded_entries(tmp_path / "run") == ["ckpt", "ckpt/last.pt", "model.pt"]
    with claim_output_dir(tmp_path / "run", "run", resume=True, writes=("ckpt/last.pt", "model.pt")) as d:
        (d / "model.pt").write_text("weights")
    assert recorded_entries(tmp_path / "run") == ["ckpt", "ckpt/last.pt", "model.pt"]
    (tmp_path / "run" / "ckpt" / "mine.pt").write_text("the user's")
    assert remove_recorded(tmp_path / "run") == ["ckpt/last.pt", "model.pt"]  # ckpt/ holds the user's file: kept
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == [MARKER, LOCK, "ckpt", "mine.pt"]


def test_new_output_dirs_never_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime
    import types

    from metriclearn import _outdir

    frozen = types.SimpleNamespace(now=lambda: datetime.datetime(2026, 1, 2, 3, 4, 5))
    monkeypatch.setattr(_outdir, "datetime", types.SimpleNamespace(datetime=frozen))
    names = [_outdir.new_output_dir(tmp_path / "runs").name for _ in range(3)]
    assert names == ["20260102-030405", "20260102-030405-2", "20260102-030405-3"]
