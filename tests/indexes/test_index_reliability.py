"""Issue 10 for indexes: saves that never lose the previous index nor a user's files, k clamped, faiss type checked."""

from __future__ import annotations

import errno
import os
import json
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from metriclearn._outdir import claim_output_dir
from metriclearn.indexes import EmbeddingIndex, _dirswap, _persist, _storage

DIM = 8


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32)


def _index(x: np.ndarray, n: int = 20, **kw) -> EmbeddingIndex:
    index = EmbeddingIndex(DIM, metric="l2", device="cpu", **kw)
    index.add(x[:n], labels=np.arange(n) % 3, metadata=[{"row": i} for i in range(n)])
    return index


# ---------------------------------------------------------------------- k
def test_huge_k_is_clamped_to_the_index_size_without_allocating(x) -> None:
    index = _index(x, n=4)
    tracemalloc.start()
    D, I = index.search(x[:2], 10**7)  # before the fix: two (2, 10**7) arrays, 240 MB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    assert I.shape == D.shape == (2, 4) and sorted(I[0].tolist()) == [0, 1, 2, 3]
    assert index.search(x[:2], 10**9)[1].shape == (2, 4)
    assert EmbeddingIndex(DIM, kind="ivf", device="cpu").search(x[:3], 5)[1].shape == (3, 0)  # nothing added yet


def test_an_approximate_index_that_finds_fewer_still_pads(x) -> None:
    index = EmbeddingIndex(DIM, metric="l2", kind="ivf", device="cpu", nlist=8, nprobe=1)
    index.add(x)
    D, I = index.search(x[:20], 300)  # one list of 8 scanned: fewer than 300 found
    assert I.shape == (20, 300) and ((I == -1).sum(axis=1) > 0).all()
    assert np.isinf(D[I == -1]).all() and np.isfinite(D[I >= 0]).all()


# ---------------------------------------------------------------------- save: a staging folder swapped in
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_save_that_fails_part_way_leaves_the_previous_index(
    tmp_path: Path, x, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(_dirswap, "_exchange", lambda a, b: False)
    old = _index(x, n=20)
    old.save(tmp_path / "idx")
    new = _index(x, n=50)

    def disk_full(index: faiss.Index, path: str) -> None:
        Path(path).write_bytes(b"half a file")
        raise RuntimeError(f"Error in faiss::FileIOWriter at impl/io.cpp:1: could not write {path}: No space left")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError, match=r"could not write the file \(.*No space left.*\): '.*idx/index\.faiss'") as info:
        new.save(tmp_path / "idx")
    assert ".saving" not in str(info.value)  # the message names the user's path, not the staging folder
    monkeypatch.undo()
    back = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    assert len(back) == 20 and back.metadata_for([19]) == [{"row": 19}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging folder left behind
    new.save(tmp_path / "idx")  # and the rebuild works once the disk has room
    assert len(EmbeddingIndex.load(tmp_path / "idx", device="cpu")) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_a_late_writer_error_also_leaves_the_previous_index(tmp_path: Path, x, monkeypatch: pytest.MonkeyPatch) -> None:
    _index(x, n=20).save(tmp_path)
    calls = []

    def fail_on_labels(path: str, array: np.ndarray) -> None:
        calls.append(path)
        if path.endswith("labels.npy"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        np.save(open(path, "wb"), array)  # noqa: SIM115 - closed on return

    monkeypatch.setattr(_persist, "_write_npy", fail_on_labels)
    with pytest.raises(OSError, match=r"No space left on device: '.*/labels\.npy'") as info:
        _index(x, n=40).save(tmp_path)
    assert info.value.filename == str(tmp_path / "labels.npy")  # the user's path, not the staging folder's
    assert len(calls) == 2  # ids written, labels failed: the save stopped there
    assert len(EmbeddingIndex.load(tmp_path, device="cpu")) == 20


def test_save_refuses_a_folder_that_is_not_an_index_and_touches_nothing(tmp_path: Path, x) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.npy").write_bytes(b"my labels")
    (mine / "metadata.json").write_text("my notes")
    with pytest.raises(ValueError, match=r"mine: it is not empty and not a metriclearn index \(it holds labels.npy"):
        EmbeddingIndex(DIM, device="cpu").save(mine)  # before the fix: labels.npy / metadata.json deleted
    assert (mine / "labels.npy").read_bytes() == b"my labels" and (mine / "metadata.json").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["labels.npy", "metadata.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        EmbeddingIndex(DIM, device="cpu").save(tmp_path / "file")


def test_resaving_keeps_files_the_manifest_does_not_list(tmp_path: Path, x) -> None:
    _index(x, n=20).save(tmp_path)
    (tmp_path / "README.txt").write_text("built from run 7")
    plain = EmbeddingIndex(DIM, device="cpu")
    plain.add(x[:5])
    plain.save(tmp_path)  # without labels / metadata: the old index's labels.npy and metadata.json go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "ids.npy", "index.faiss", "index.json"]
    assert (tmp_path / "README.txt").read_text() == "built from run 7"


def test_a_foreign_file_with_an_index_file_name_is_refused(tmp_path: Path, x) -> None:
    plain = EmbeddingIndex(DIM, device="cpu")
    plain.add(x[:5])
    plain.save(tmp_path)
    (tmp_path / "labels.npy").write_bytes(b"the user's")  # not listed in the manifest
    with pytest.raises(ValueError, match="it holds labels.npy, which its manifest does not list"):
        _index(x).save(tmp_path)
    assert (tmp_path / "labels.npy").read_bytes() == b"the user's"


def test_a_claimed_output_folder_keeps_its_marker_and_lock(tmp_path: Path, x) -> None:
    with claim_output_dir(tmp_path / "out", "index") as out:
        _index(x).save(out)
        _index(x, n=30).save(out)  # a rebuild inside the same claim
        names = sorted(p.name for p in out.iterdir())
    assert names == [".metriclearn.json", ".metriclearn.lock", "ids.npy", "index.faiss", "index.json", "labels.npy", "metadata.json"]
    assert len(EmbeddingIndex.load(tmp_path / "out", device="cpu")) == 30
    with pytest.raises(ValueError, match="already holds a metriclearn index"):
        with claim_output_dir(tmp_path / "out", "index"):
            pass


# ---------------------------------------------------------------------- the faiss type against the manifest
def _resign(root: Path) -> None:
    """What anyone who can write the folder can do: recompute every checksum (they are not keyed)."""
    manifest = json.loads((root / "index.json").read_text())
    for name, info in manifest["files"].items():
        info.update(sha256=_storage.sha256(root / name), bytes=(root / name).stat().st_size)
    manifest["checksum"] = _storage._manifest_checksum(manifest)
    (root / "index.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("other", "found"),
    [
        ({"kind": "hnsw", "hnsw_m": 8}, r"IndexIDMap\(IndexHNSWFlat, M=8\)"),
        ({"kind": "ivf", "nlist": 5}, r"IndexIVFFlat, nlist=5"),
    ],
)
def test_a_faiss_file_of_another_kind_is_refused(tmp_path: Path, x, other: dict, found: str) -> None:
    flat = _index(x, n=200)
    flat.save(tmp_path / "flat")
    imposter = EmbeddingIndex(DIM, metric="l2", device="cpu", **other)
    imposter.add(x[:200])
    faiss.write_index(imposter.faiss_index, str(tmp_path / "flat" / "index.faiss"))
    _resign(tmp_path / "flat")
    with pytest.raises(ValueError, match=rf"holds a {found} index but the manifest says kind 'flat' \(IndexIDMap\(IndexFlat\)\)"):
        EmbeddingIndex.load(tmp_path / "flat", device="cpu")


def test_ivf_with_another_nlist_is_refused(tmp_path: Path, x) -> None:
    _index(x, n=200, kind="ivf", nlist=4).save(tmp_path / "a")
    _index(x, n=200, kind="ivf", nlist=5).save(tmp_path / "b")
    (tmp_path / "a" / "index.faiss").write_bytes((tmp_path / "b" / "index.faiss").read_bytes())
    _resign(tmp_path / "a")
    with pytest.raises(ValueError, match=r"holds a IndexIVFFlat, nlist=5 index but the manifest says kind 'ivf'"):
        EmbeddingIndex.load(tmp_path / "a", device="cpu")


def test_a_save_killed_mid_way_leaves_a_staging_folder_that_the_next_save_removes(tmp_path: Path, x) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f".idx.{int(gone.stdout)}.abc123.saving"  # what kill -9 during a save leaves behind
    dead.mkdir()
    (dead / "index.faiss").write_bytes(b"partial")
    live = tmp_path / f".idx.{os.getpid()}.def456.saving"  # a save still running in this process
    live.mkdir()
    other = tmp_path / ".other.1.xyz.saving"  # another index's: not ours to judge
    other.mkdir()
    _index(x).save(tmp_path / "idx")
    assert not dead.exists() and live.exists() and other.exists()
    assert len(EmbeddingIndex.load(tmp_path / "idx", device="cpu")) == 20


def test_save_attrs_rewrites_only_the_manifest(tmp_path: Path, x) -> None:
    index = EmbeddingIndex(x.shape[1], metric="l2", kind="ivf", nlist=4, device="cpu")
    index.add(x, labels=np.arange(len(x)) % 3)
    index.save(tmp_path / "idx")
    data = {name: os.stat(tmp_path / "idx" / name).st_mtime_ns for name in ("index.faiss", "ids.npy", "labels.npy")}
    loaded = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    loaded.attrs["calibration"] = {"knn": {"alpha": 0.1}}
    loaded.save_attrs(tmp_path / "idx")
    loaded.attrs["calibration"]["cache"] = {"theta": 5.0}
    loaded.save_attrs(tmp_path / "idx")  # again: the index now matches the manifest it wrote
    back = EmbeddingIndex.load(tmp_path / "idx", device="cpu")  # every checksum still verifies
    assert back.attrs == {"calibration": {"knn": {"alpha": 0.1}, "cache": {"theta": 5.0}}}
    assert {name: os.stat(tmp_path / "idx" / name).st_mtime_ns for name in data} == data  # data files untouched
    np.testing.assert_array_equal(back.labels, index.labels)
    assert {p.name for p in tmp_path.iterdir()} == {"idx"}  # no staging folder or temp file left


def test_save_attrs_refuses_a_changed_index_or_directory(tmp_path: Path, x) -> None:
    index = EmbeddingIndex(x.shape[1], metric="l2", kind="ivf", nlist=4, device="cpu")
    index.add(x)
    stranger = EmbeddingIndex(x.shape[1], metric="l2", kind="ivf", nlist=4, device="cpu")
    stranger.add(x)
    index.save(tmp_path / "idx")
    with pytest.raises(ValueError, match="not the one this index was loaded from or saved to"):
        stranger.save_attrs(tmp_path / "idx")  # never loaded from there nor saved there
    index.attrs["note"] = "after the save"
    index.save_attrs(tmp_path / "idx")  # the index that saved the directory may add attrs to it
    grown = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    grown.add(x[:3])
    with pytest.raises(ValueError, match="differs from .* in count, next_id since it was loaded: save"):
        grown.save_attrs(tmp_path / "idx")
    probed = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    probed.nprobe = 3
    with pytest.raises(ValueError, match="in params since it was loaded"):
        probed.save_attrs(tmp_path / "idx")
    stale = EmbeddingIndex.load(tmp_path / "idx", device="cpu")
    assert stale.attrs == {"note": "after the save"}
    index.attrs["note"] = "saved again"
    index.save(tmp_path / "idx")  # another save after `stale` was loaded
    stale.attrs["note"] = "stale"
    with pytest.raises(ValueError, match="or it was saved again since"):
        stale.save_attrs(tmp_path / "idx")
    assert EmbeddingIndex.load(tmp_path / "idx", device="cpu").attrs == {"note": "saved again"}
    with pytest.raises(FileNotFoundError):
        stale.save_attrs(tmp_path / "missing")


def test_save_attrs_of_a_sharded_index(tmp_path: Path, x) -> None:
    from metriclearn.indexes import load_index
    from metriclearn.indexes.sharded import ShardedIndex

    ShardedIndex.build(x, labels=np.arange(len(x)) % 3, num_shards=2, metric="l2", device="cpu").save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx", device="cpu")
    assert isinstance(loaded, ShardedIndex)
    loaded.attrs["calibration"] = {"cache": {"theta": 5.0}}
    loaded.save_attrs(tmp_path / "idx")
    back = load_index(tmp_path / "idx", device="cpu")
    assert back.attrs == {"calibration": {"cache": {"theta": 5.0}}} and len(back) == len(x)
