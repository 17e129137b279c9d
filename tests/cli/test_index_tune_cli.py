"""``metriclearn index build --target-recall`` and ``metriclearn index info`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from metriclearn.cli import cli
from metriclearn.indexes import EmbeddingIndex, exact_search, tuning

DIM = 16


@pytest.fixture
def files(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((30, DIM)) * 3
    pick = rng.choice(30, 3000, p=np.arange(1, 31) / 465)  # uneven clusters
    x = (centers[pick] + rng.standard_normal((3000, DIM))).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "labels.npy", pick % 4)
    np.save(tmp_path / "tq.npy", (centers[rng.choice(30, 90)] + rng.standard_normal((90, DIM))).astype(np.float32))
    return tmp_path


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def build(files: Path, *extra: object) -> Result:
    args = ["index", "build", "--embeddings", files / "emb.npy", "--labels", files / "labels.npy", "--metric", "l2"]
    return run(*args, *extra, "--out", files / "idx")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_build_to_a_target_recall(files: Path, kind: str) -> None:
    result = build(files, "--kind", kind, "--target-recall", 0.95, "--k", 5)
    assert result.exit_code == 0, result.output
    tuned = [line for line in result.output.splitlines() if line.startswith("tuned: ")]
    assert len(tuned) == 1 and "(target 0.95) on 300 held-out queries with" in tuned[0]
    index = EmbeddingIndex.load(files / "idx", device="cpu")
    tuning = index.attrs["tuning"]
    assert tuning["k"] == 5 and tuning["recall_at_k"] >= 0.95 and f"recall@5 {tuning['recall_at_k']:.3f} ± {tuning['recall_se']:.3f}" in tuned[0]
    x, q = np.load(files / "emb.npy"), np.load(files / "tq.npy")
    gt = exact_search(q, x, 5, metric="l2")[0]
    D, _ = index.search(q, 5)
    fresh = (D <= gt[:, -1:] + 1e-3).mean(axis=1)  # (90,) each fresh query's recall@5
    se = np.hypot(tuning["recall_se"], fresh.std(ddof=1) / np.sqrt(len(fresh)))  # both recalls are sample means
    assert fresh.mean() >= 0.95 - 3 * se  # fresh queries: the recall asked for, within the sampling error


def test_a_pq_factory_string_is_tuned_with_a_re_ranking_depth(files: Path) -> None:
    result = build(files, "--kind", "IVF16,PQ2x4", "--target-recall", 0.95, "--k", 5)
    assert result.exit_code == 0, result.output
    index = EmbeddingIndex.load(files / "idx", device="cpu")
    tuning = index.attrs["tuning"]
    depth = tuning["params"]["k_factor"]
    assert tuning["reached"] and index.k_factor == depth and f"k_factor={depth}" in result.output
    assert max(t["recall"] for t in tuning["tried"] if "k_factor" not in t) < 0.95  # the codes alone fall short
    x, q = np.load(files / "emb.npy"), np.load(files / "tq.npy")
    gt = exact_search(q, x, 5, metric="l2")[0]
    D, ids = index.search(q, 5)
    assert (D <= gt[:, -1:] + 1e-3).mean() >= 0.93
    np.testing.assert_allclose(D, ((x[ids] - q[:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)  # re-ranked exactly
    text = run("index", "info", "--index", files / "idx")
    assert text.exit_code == 0, text.output
    lines = {k: v.strip() for k, v in (row.split(": ", 1) for row in text.output.strip().splitlines())}
    assert lines["re-ranking"] == f"exact distances over the top k·{depth} candidates"
    assert f"k_factor={depth}" in lines["tuned parameters"] and f"k_factor={depth}" in lines["parameters"]


def test_tune_queries_file_and_info(files: Path) -> None:
    result = build(files, "--kind", "ivf", "--target-recall", 0.9, "--tune-queries", files / "tq.npy")
    assert result.exit_code == 0, result.output
    assert "on 90 held-out queries" in result.output
    result = run("index", "info", "--index", files / "idx", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    index = EmbeddingIndex.load(files / "idx", device="cpu")
    assert facts["kind"] == "ivf" and facts["factory"] == index.factory and facts["metric"] == "l2"
    assert facts["size"] == 3000 and facts["dim"] == DIM and facts["labels"] and not facts["metadata"]
    assert facts["format_version"] == 1 and facts["shards"] is None and facts["model_fingerprint"] is None
    assert facts["tuning"] == index.attrs["tuning"] and facts["tuning"]["held_out_queries"] == 90
    assert facts["params"]["nprobe"] == index.nprobe == facts["tuning"]["params"]["nprobe"]
    text = run("index", "info", "--index", files / "idx")
    assert text.exit_code == 0, text.output
    rows = text.output.strip().splitlines()
    assert len({len(row) - len(row.split(": ", 1)[1].lstrip()) for row in rows}) == 1  # one value column
    lines = {k: v.strip() for k, v in (row.split(": ", 1) for row in rows)}
    assert set(lines) >= {"kind", "metric", "vectors", "dimension", "labels", "recall@10", "speed"}
    assert lines["vectors"] == "3000" and lines["kind"] == f"ivf ({index.factory})"
    recall = lines["recall@10"]
    assert recall.startswith(f"{facts['tuning']['recall_at_k']} ± {facts['tuning']['recall_se']} (target 0.9, "
                             "reached; 90 held-out queries)")


def test_info_of_an_untuned_index_with_provenance(files: Path) -> None:
    index = EmbeddingIndex(DIM, metric="cosine", device="cpu")
    index.add(np.load(files / "emb.npy")[:50], metadata=[{"i": i} for i in range(50)])
    index.attrs.update(model_fingerprint="f" * 64, calibration={"method": "knn", "alpha": 0.1})
    index.save(files / "plain")
    result = run("index", "info", "--index", files / "plain")
    assert result.exit_code == 0, result.output
    out = {k.strip(): v.strip() for k, v in (line.split(": ", 1) for line in result.output.strip().splitlines())}
    assert out["kind"] == "flat (Flat)" and out["vectors"] == "50" and out["labels"] == "no" and out["metadata"] == "yes"
    assert out["recall"] == "not measured (build with --target-recall R)"
    assert out["model fingerprint"] == "f" * 64 and json.loads(out["calibration"]) == {"method": "knn", "alpha": 0.1}


def test_flat_faster_and_unreachable_are_printed(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = build(files, "--kind", "IVF8,SQ4", "--target-recall", 0.999)  # 4-bit codes, no re-ranking
    assert result.exit_code == 0, result.output
    assert "note: no setting of kind 'IVF8,SQ4' reaches recall@10 0.999" in result.output
    assert EmbeddingIndex.load(files / "idx", device="cpu").attrs["tuning"]["reached"] is False
    monkeypatch.setattr(tuning, "_qps", lambda c, xq, k: 5000.0 if c.kind == "flat" else 2000.0)
    result = run("index", "build", "--embeddings", files / "emb.npy", "--kind", "hnsw", "--target-recall", 0.9, "--out", files / "idx2")
    assert result.exit_code == 0, result.output
    assert "note: exact search is faster than kind 'hnsw' at this size (5000 vs 2000 queries/s): use kind 'flat'" in result.output
    assert "0.40x the speed of exact search" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--target-recall", 0], 2, "Invalid value for '--target-recall'"),
        (["--target-recall", 1.2], 2, "Invalid value for '--target-recall'"),
        (["--target-recall", 0.9, "--k", 0], 2, "Invalid value for '--k'"),
        (["--tune-queries", "tq.npy"], 2, "--tune-queries goes with --target-recall R"),
        (["--target-recall", 0.9, "--tune-queries", "bad.npy"], 1, "bad.npy has dimension 3 but the embeddings have dimension 16"),
    ],
)
def test_bad_tuning_options(files: Path, args: list, code: int, message: str) -> None:
    np.save(files / "bad.npy", np.zeros((4, 3), dtype=np.float32))
    args = [files / a if isinstance(a, str) and a.endswith(".npy") else a for a in args]
    result = build(files, "--kind", "ivf", *args)
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output and not (files / "idx" / "index.json").exists()


def test_info_of_a_missing_or_foreign_folder(files: Path) -> None:
    result = run("index", "info", "--index", files / "nope")
    assert result.exit_code == 1 and "index directory does not exist" in result.output
    result = run("index", "info", "--index", files)
    assert result.exit_code == 1 and "index.json is missing" in result.output
