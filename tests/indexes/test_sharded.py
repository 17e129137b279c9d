"""Sharded index directories and the sharded exact cache: one process, 2 gloo ranks, and the CLI under torchrun.

Every result is compared with the unsharded single-process one on the same vectors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from conftest import assert_one_line_error
from metriclearn.classify import CacheClassifier, KNNClassifier
from metriclearn.classify.sharded_cache import sharded_cache_proba
from metriclearn.cli import cli
from metriclearn.indexes import EmbeddingIndex, describe, load_index
from metriclearn.indexes.sharded import ShardedIndex, is_sharded


def _data(n: int = 203, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uneven classes (string labels) around 7 centres, and 31 queries, one of a class never indexed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 2
    y = rng.choice(7, size=n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.06, 0.04])
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    q = (centres[rng.integers(0, 8, 31)] + rng.normal(size=(31, d))).astype(np.float32)
    return x, np.array([f"c{v}" for v in y]), q


@pytest.mark.parametrize(("metric", "kind", "shards"), [("l2", "flat", 3), ("cosine", "flat", 4), ("ip", "flat", 2),
                                                         ("l2", "ivf", 3), ("cosine", "pq", 2)])
def test_sharded_search_equals_unsharded(metric, kind, shards, tmp_path) -> None:
    x, y, q = _data()
    params = {"nlist": 8, "nprobe": 3} if kind in ("ivf", "pq") else {}
    params |= {"pq_nbits": 4} if kind == "pq" else {}
    whole = EmbeddingIndex(x.shape[1], metric=metric, kind=kind, device="cpu", **params)
    whole.add(x, labels=y)
    sharded = ShardedIndex.build(x, labels=y, num_shards=shards, metric=metric, kind=kind, device="cpu", **params)
    sizes = [len(s) for s in sharded.shards]
    assert sum(sizes) == len(x) and max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate([s.ids for s in sharded.shards]).tolist()) == list(range(len(x)))
    sharded.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx", device="cpu")  # a sharded directory opens as one index
    assert isinstance(loaded, ShardedIndex) and is_sharded(tmp_path / "idx") and len(loaded) == len(x)
    for k in (1, 10, len(x) + 5):  # beyond the index: clamped like EmbeddingIndex
        D0, I0 = whole.search(q, k)
        D1, I1 = loaded.search(q, k)
        finite = np.isfinite(D0)
        assert np.array_equal(finite, np.isfinite(D1)) and np.allclose(D0[finite], D1[finite], atol=1e-4)
        if kind == "pq":  # 4-bit codes tie often: the same neighbours up to the order of equal scores
            better = D0 > D0[:, -1:]  # strictly better than the last one kept
            assert all(set(a[m]) == set(b[m]) for a, b, m in zip(I0, I1, better)), (metric, kind, k)
            continue
        assert np.array_equal(I0, I1), (metric, kind, k)
        assert np.array_equal(whole.labels_for(I0), loaded.labels_for(I1))
    assert I1.shape == (len(q), len(x))  # IVF/PQ probe some lists: −1 where they found fewer
    assert kind != "flat" or sorted(I1[0]) == list(range(len(x)))


def test_hnsw_shards_search_each_graph(tmp_path) -> None:
    x, y, q = _data()
    sharded = ShardedIndex.build(x, labels=y, num_shards=3, metric="l2", kind="hnsw", device="cpu")
    _, I = sharded.search(q, 5)
    flat = EmbeddingIndex(x.shape[1], metric="l2", device="cpu")
    flat.add(x)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(I, flat.search(q, 5)[1])])
    assert recall > 0.95


def test_one_way_to_open_either_kind_of_directory(tmp_path) -> None:
    x, y, _ = _data()
    x, y = x[:23], y[:23]  # 23 rows over 3 shards: 8, 8, 7
    sharded = ShardedIndex.build(x, labels=y, num_shards=3, metric="l2", device="cpu")
    sharded.attrs = {"note": "n"}
    sharded.save(tmp_path / "sharded")
    single = EmbeddingIndex(x.shape[1], metric="l2", device="cpu")
    single.add(x, labels=y, metadata=[{"i": i} for i in range(len(x))])
    single.save(tmp_path / "single")
    assert type(load_index(tmp_path / "single", device="cpu")) is EmbeddingIndex
    assert type(load_index(tmp_path / "sharded", device="cpu")) is ShardedIndex
    with pytest.raises(ValueError, match="is a sharded index directory: open it with metriclearn.indexes.load_index"):
        EmbeddingIndex.load(tmp_path / "sharded", device="cpu")  # EmbeddingIndex.load gives only EmbeddingIndex
    one, many = describe(tmp_path / "single"), describe(tmp_path / "sharded")
    assert list(one) == list(many)  # one description, built in one place
    assert (one["shards"], many["shards"], one["metadata"], many["metadata"]) == (None, 3, True, False)
    assert one["size"] == many["size"] == 23 and one["labels"] and many["labels"] and many["attrs"] == ["note"]
    assert one["params"] == many["params"] and one["factory"] == many["factory"] == "Flat"
    np.testing.assert_array_equal(load_index(tmp_path / "sharded", device="cpu").labels_for([[22, -1, 0]]),
                                  [[y[22], "", y[0]]])  # the id -> label look-up of EmbeddingIndex
    with pytest.raises(ValueError, match=r"ids not in the index: \[99\]"):
        sharded.labels_for([99])


def test_damaged_shards_are_named(tmp_path) -> None:
    x, y, _ = _data()
    ShardedIndex.build(x, labels=y, num_shards=2, device="cpu").save(tmp_path / "idx")
    other = tmp_path / "other"
    ShardedIndex.build(x[::-1].copy(), labels=y[::-1], num_shards=2, device="cpu").save(other)
    (tmp_path / "idx" / "shard-001" / "index.json").write_bytes((other / "shard-001" / "index.json").read_bytes())
    with pytest.raises(ValueError, match="is damaged: shard-001/index.json does not match its checksum"):
        ShardedIndex.load(tmp_path / "idx")
    ShardedIndex.build(x, labels=y, num_shards=2, device="cpu").save(tmp_path / "idx2")
    with open(tmp_path / "idx2" / "shard-000" / "labels.npy", "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"#")
    with pytest.raises(ValueError, match="shard-000 is damaged: labels.npy does not match its checksum"):
        ShardedIndex.load(tmp_path / "idx2", device="cpu")
    with pytest.raises(ValueError, match="shard-000 is damaged: labels.npy does not match its checksum"):
        ShardedIndex.load(tmp_path / "idx2", device="cpu", held=[1])  # read without its faiss file too
    with pytest.raises(ValueError, match="num_shards=300 is larger than the number of vectors"):
        ShardedIndex.build(x, num_shards=300)


def test_sharded_cache_and_knn_equal_single_process() -> None:
    x, y, q = _data()
    sharded = ShardedIndex.build(x, labels=y, num_shards=3, metric="l2", device="cpu")
    for theta in (5.0, 50.0, 400.0):  # 400: terms far below float32 range relative to a query's best key
        classes, proba = sharded_cache_proba(sharded, q, theta, device="cpu", query_block=8, key_block=16)
        single = CacheClassifier(theta=theta, device="cpu").fit(x, y)
        assert np.array_equal(classes, single.classes_)
        assert np.abs(proba - single.predict_proba(q)).max() < 1e-5
        assert np.allclose(proba.sum(axis=1), 1.0)
    knn = KNNClassifier.from_index(sharded, n_neighbors=7)
    whole = EmbeddingIndex(x.shape[1], metric="l2", device="cpu")
    whole.add(x, labels=y)
    assert np.allclose(knn.predict_proba(q), KNNClassifier.from_index(whole, n_neighbors=7).predict_proba(q))


# ---------------------------------------------------------------------------- 2 gloo ranks (in-process spawn)
def _worker(rank: int, port: int, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from metriclearn.training import distributed

    distributed.init_from_env(backend="gloo")
    try:
        x, y, q = _data()
        index = ShardedIndex.load(folder, device="cpu")  # 3 shards on 2 ranks: rank 0 holds 0 and 2, rank 1 holds 1
        held = [r for r, s in enumerate(index.shards) if s is not None]
        queries = q if rank == 0 else np.zeros_like(q)  # rank 0's queries are the ones searched
        D, I = index.search(queries, 9)
        classes, proba = sharded_cache_proba(index, queries, theta=30.0, device="cpu")
        np.savez(f"{out}.{rank}.npz", held=held, D=D, I=I, proba=proba, classes=classes)
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_their_shards_and_match_one_process(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    x, y, q = _data()
    ShardedIndex.build(x, labels=y, num_shards=3, metric="cosine", device="cpu").save(tmp_path / "idx")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "idx"), str(tmp_path / "out")), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"out.{r}.npz") for r in range(2)]
    assert ranks[0]["held"].tolist() == [0, 2] and ranks[1]["held"].tolist() == [1]
    whole = EmbeddingIndex(x.shape[1], metric="cosine", device="cpu")
    whole.add(x, labels=y)
    D, I = whole.search(q, 9)
    single = CacheClassifier(theta=30.0, device="cpu").fit(x, y).predict_proba(q)
    for result in ranks:  # every rank holds the merged answer
        assert np.array_equal(result["I"], I) and np.allclose(result["D"], D, atol=1e-5)
        assert np.abs(result["proba"] - single).max() < 1e-5


# ---------------------------------------------------------------------------- the CLI, one process and torchrun
def _invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sharded-cli")
    x, y, q = _data()
    np.save(root / "emb.npy", x)
    np.save(root / "labels.npy", y)
    np.save(root / "q.npy", q)
    for name, shards in (("whole", 1), ("sharded", 2)):
        result = _invoke("index", "build", "--embeddings", root / "emb.npy", "--labels", root / "labels.npy",
                         "--metric", "l2", "--shards", shards, "--device", "cpu", "--out", root / name)
        assert result.exit_code == 0, result.output
    assert "2 shards" in result.output and (root / "sharded" / "shard-001" / "index.faiss").is_file()
    return root


def test_cli_query_and_classify_on_a_sharded_index_in_one_process(folders) -> None:
    outputs = {}
    for name in ("whole", "sharded"):
        result = _invoke("index", "query", "--index", folders / name, "--queries", folders / "q.npy", "-k", 6,
                         "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads(result.output)
        for method in ("knn", "cache"):
            out = folders / f"{name}-{method}.json"
            result = _invoke("classify", "--index", folders / name, "--queries", folders / "q.npy", "--method", method,
                             "--device", "cpu", "--out", out)
            assert result.exit_code == 0, result.output
    assert outputs["whole"]["ids"] == outputs["sharded"]["ids"]
    assert outputs["whole"]["labels"] == outputs["sharded"]["labels"]
    for method in ("knn", "cache"):
        a, b = (json.loads((folders / f"{n}-{method}.json").read_text()) for n in ("whole", "sharded"))
        assert a["classes"] == b["classes"] and a["predictions"] == b["predictions"]
        assert np.abs(np.array(a["probabilities"]) - np.array(b["probabilities"])).max() < 1e-5
    info = _invoke("index", "info", "--index", folders / "sharded", "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.output)
    assert (facts["shards"], facts["size"], facts["dim"], facts["metric"], facts["labels"]) == (2, 203, 12, "l2", True)
    result = _invoke("classify", "--index", folders / "sharded", "--queries", folders / "q.npy", "--method", "cache",
                     "--k", 5, "--out", folders / "x.json")
    assert result.exit_code == 2 and "--k (top-k cache) needs an unsharded index" in result.output


def test_calibrating_a_sharded_index_knn_works_and_cache_refuses_in_one_line(folders, tmp_path) -> None:
    x, y, _ = _data()
    rows = np.random.default_rng(5).choice(len(x), 90, replace=False)  # held-out stand-ins near indexed rows
    np.save(tmp_path / "cal.npy", x[rows] + np.random.default_rng(6).normal(0, 0.3, (90, x.shape[1])).astype(np.float32))
    np.save(tmp_path / "cal_y.npy", y[rows])
    stored = {}
    for name in ("whole", "sharded"):
        index = shutil.copytree(folders / name, tmp_path / name)
        calibrate = ("calibrate", "--index", index, "--embeddings", tmp_path / "cal.npy", "--labels",
                     tmp_path / "cal_y.npy", "--device", "cpu")
        if name == "sharded":  # was: Error: 'ShardedCache' object has no attribute 'calibrate'
            assert_one_line_error(_invoke(*calibrate, "--method", "cache"), 1,
                                  "a calibration of the cache classifier needs an unsharded index")
        result = _invoke(*calibrate, "--method", "knn", "--target-precision", "0.9")
        assert result.exit_code == 0, result.output
        stored[name] = load_index(index, device="cpu").attrs["calibration"]["knn"]
        result = _invoke("classify", "--index", index, "--queries", folders / "q.npy", "--method", "knn", "--device",
                         "cpu", "--reject", "--sets", tmp_path / f"{name}-sets.npy", "--out", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
    assert stored["whole"]["rejection"]["threshold"] == pytest.approx(stored["sharded"]["rejection"]["threshold"],
                                                                      rel=1e-6)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "sharded"))
    assert a["predictions"] == b["predictions"] and a["rejected"] == b["rejected"]
    np.testing.assert_array_equal(np.load(tmp_path / "whole-sets.npy"), np.load(tmp_path / "sharded-sets.npy"))


def test_torchrun_query_and_classify_hold_one_shard_per_rank(folders, torchrun, tmp_path) -> None:
    """Rank r loads shard r, rank 0's queries are broadcast and the merged answer written once."""
    single = _invoke("index", "query", "--index", folders / "whole", "--queries", folders / "q.npy", "-k", 6,
                     "--json", "--device", "cpu")
    done = torchrun("index", "query", "--index", folders / "sharded", "--queries", folders / "q.npy", "-k", 6,
                    "--json", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = json.loads(done.stdout), json.loads(single.output)  # printed once (by rank 0)
    assert two["ids"] == one["ids"] and two["labels"] == one["labels"]
    assert np.allclose(two["distances"], one["distances"], atol=1e-4)  # float round-off of other GEMM shapes
    for method in ("cache",):  # knn over a sharded index is the collective search above plus a local vote
        out = tmp_path / f"{method}.json"
        done = torchrun("classify", "--index", folders / "sharded", "--queries", folders / "q.npy", "--method", method,
                        "--device", "cpu", "--out", out)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("predictions written") == 1
        two = json.loads(out.read_text())
        result = _invoke("classify", "--index", folders / "whole", "--queries", folders / "q.npy", "--method",
                         method, "--device", "cpu", "--out", tmp_path / f"one-{method}.json")
        assert result.exit_code == 0, result.output
        one = json.loads((tmp_path / f"one-{method}.json").read_text())
        assert one["classes"] == two["classes"] and one["predictions"] == two["predictions"]
        assert np.abs(np.array(one["probabilities"]) - np.array(two["probabilities"])).max() < 1e-5


@pytest.mark.gpu(faiss=True)
def test_sharded_search_on_gpus_equals_cpu() -> None:
    x, y, q = _data()
    cpu = ShardedIndex.build(x, labels=y, num_shards=2, metric="l2", device="cpu")
    gpu = ShardedIndex.build(x, labels=y, num_shards=2, metric="l2", device="cuda")
    assert np.array_equal(cpu.search(q, 10)[1], gpu.search(q, 10)[1])


def test_torchrun_classify_reject_on_a_calibrated_sharded_index(folders, torchrun, tmp_path) -> None:
    """The acceptance score's search is a collective too: every rank computes the rejection (rank 0 alone hung)."""
    x, y, _ = _data()
    np.save(tmp_path / "cal.npy", x[::2] + np.random.default_rng(7).normal(0, 0.3, x[::2].shape).astype(np.float32))
    np.save(tmp_path / "cal_y.npy", y[::2])
    index = shutil.copytree(folders / "sharded", tmp_path / "sharded")
    result = _invoke("calibrate", "--index", index, "--embeddings", tmp_path / "cal.npy", "--labels",
                     tmp_path / "cal_y.npy", "--device", "cpu", "--method", "knn", "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    common = ("--index", index, "--queries", folders / "q.npy", "--method", "knn", "--device", "cpu", "--reject")
    done = torchrun("classify", *common, "--out", tmp_path / "two.json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("rejected as unknown") == 1
    result = _invoke("classify", *common, "--out", tmp_path / "one.json")
    assert result.exit_code == 0, result.output
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["predictions"] == two["predictions"] and one["rejected"] == two["rejected"]
