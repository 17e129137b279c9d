"""An image CSV's open-metric-learning columns through the real CLI: ``split`` decides what ``train`` trains
and validates on, ``is_query``/``is_gallery`` what ``evaluate`` searches (checked against a naive loop), and
bad columns are one-line errors naming the row. Uneven classes; validation classes unseen in training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke

from .conftest import write_images

pytest.importorskip("kornia")

COUNTS = {"red": 7, "green": 5, "blue": 6, "yellow": 4, "grey": 5}  # 27 pictures, uneven
TRAIN_CLASSES = ("red", "green", "blue")  # yellow and grey: validation only (new classes, as in OML)
TRAIN = ["--encoder", "cnn:4,8", "--epochs", "2", "--batch-size", "4", "--samples-per-class", "2",
         "--embedding-dim", "6", "--image-size", "8", "--device", "cpu", "--quiet", "--threads", "1"]


def _rows(files: list[Path], root: Path) -> list[dict[str, str]]:
    """OML-style rows: train rows (query/gallery blank) and validation rows, where the first picture of each
    class is a query only, the last a gallery item only, and the others both."""
    rows = []
    for label in COUNTS:
        mine = [f for f in files if f.parent.name == label]
        for i, f in enumerate(mine):
            row = {"path": str(f.relative_to(root)), "label": label}
            if label in TRAIN_CLASSES and i < len(mine) - 1:  # the last one of a train class: validation too
                row.update(split="train", is_query="", is_gallery="")
            else:
                row.update(split="validation", is_query=str(int(i != len(mine) - 1 or label in TRAIN_CLASSES)),
                           is_gallery=str(int(i != 0)))
            rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def oml(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], Path]:
    """(the CSV, its rows, a run trained on it)."""
    root = tmp_path_factory.mktemp("oml")
    files = write_images(root / "pictures", COUNTS)
    rows = _rows(files, root)
    table = _write_csv(root / "items.csv", rows)
    result = invoke("train", "--data", table, "--out", root / "run", *TRAIN)
    assert result.exit_code == 0, result.output
    return table, rows, root / "run"


def test_train_trains_on_split_train_and_validates_on_split_validation(oml) -> None:
    _, rows, run = oml
    metrics = json.loads((run / "metrics.json").read_text())
    n_train = sum(r["split"] == "train" for r in rows)
    assert (metrics["split"], metrics["n_train"], metrics["n_eval"]) == ("val", n_train, len(rows) - n_train)
    assert metrics["val_split"] == "column" and "retrieval_vs_reference" in metrics  # val shares 3 train classes


def test_validation_of_classes_unseen_in_training_is_leave_one_out(oml, tmp_path: Path) -> None:
    table, rows, _ = oml
    rows = [dict(r, split="train" if r["label"] in TRAIN_CLASSES else "validation") for r in rows]
    result = invoke("train", "--data", _write_csv(table.parent / "disjoint.csv", rows), "--out", tmp_path / "run",
                    *TRAIN)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_split"] == "column" and "retrieval_vs_reference" not in metrics
    assert metrics["n_eval"] == sum(n for label, n in COUNTS.items() if label not in TRAIN_CLASSES)


def _naive(x: np.ndarray, y: np.ndarray, query: np.ndarray, gallery: np.ndarray) -> tuple[float, float]:
    """Precision@1 and MAP@R by a loop: each query ranks the gallery without itself (ties: gallery order)."""
    p1, maps = [], []
    for q in np.flatnonzero(query):
        g = np.array([i for i in np.flatnonzero(gallery) if i != q])
        order = g[np.argsort(np.linalg.norm(x[g] - x[q], axis=1), kind="stable")]
        rel = (y[order] == y[q]).astype(float)
        r = int(rel.sum())
        if r == 0:
            continue
        p1.append(rel[0])
        maps.append(sum(rel[i] * rel[: i + 1].mean() for i in range(r)) / r)
    return float(np.mean(p1)), float(np.mean(maps))


def test_evaluate_searches_the_gallery_with_the_queries(oml, tmp_path: Path) -> None:
    table, rows, run = oml
    result = invoke("evaluate", "--model", run, "--data", table, "--json", "--out", tmp_path / "m.json", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    val = [r for r in rows if r["split"] == "validation"]
    query = np.array([r["is_query"] == "1" for r in val])
    gallery = np.array([r["is_gallery"] == "1" for r in val])
    assert metrics["data"]["protocol"] == "query/gallery"
    assert (metrics["data"]["n_query"], metrics["data"]["n_reference"]) == (query.sum(), gallery.sum())

    result = invoke("embed", "--model", run, "--data", table, "--out", tmp_path / "e.npy", "--quiet")
    assert result.exit_code == 0, result.output
    emb = np.load(tmp_path / "e.npy")[[r["split"] == "validation" for r in rows]]
    p1, map_r = _naive(emb, np.array([r["label"] for r in val]), query, gallery)
    assert metrics["retrieval"]["precision_at_1"] == pytest.approx(p1, rel=1e-6)
    assert metrics["retrieval"]["map_at_r"] == pytest.approx(map_r, rel=1e-6)


def test_evaluate_with_reference_says_the_roles_go_unused(oml, tmp_path: Path) -> None:
    """--reference searches every --reference row with every --data row; the CSV's role columns would be
    silently ignored, so the command says so (one warning line per file that has them)."""
    table, rows, run = oml
    plain = _write_csv(tmp_path / "plain.csv", [{"path": str(table.parent / r["path"]), "label": r["label"]}
                                                for r in rows])
    result = invoke("evaluate", "--model", run, "--data", table, "--reference", plain, "--out", tmp_path / "m.json",
                    "--quiet")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "--data" in warned[0] and "are not used with --reference" in warned[0]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["data"]["reference"] == str(plain) and "protocol" not in metrics["data"]


def test_query_gallery_of_every_row_is_leave_one_out() -> None:
    from metriclearn.metrics import query_gallery_metrics, retrieval_metrics

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [7, 2, 5, 3, 9])
    x = (rng.normal(size=(len(y), 4)) + y[:, None]).astype(np.float32)
    every = np.ones(len(y), bool)
    assert query_gallery_metrics(x, y, every, every) == pytest.approx(retrieval_metrics(x, y), rel=1e-6)
    query, gallery = rng.random(len(y)) < 0.6, rng.random(len(y)) < 0.7
    m = query_gallery_metrics(x, y, query, gallery)
    assert (m["precision_at_1"], m["map_at_r"]) == pytest.approx(_naive(x, y, query, gallery), rel=1e-6)


@pytest.mark.parametrize("change, fragments", [
    ({"split": ""}, ["row 3 of", "split is blank"]),
    ({"is_gallery": ""}, ["row 2 of", "go together"]),
])
def test_bad_columns_name_the_row(oml, tmp_path: Path, change: dict[str, str], fragments: list[str]) -> None:
    table, rows, run = oml
    rows = [dict(r) for r in rows]
    row = 1 if "split" in change else next(i for i, r in enumerate(rows) if r["split"] == "validation")
    rows[row].update(change)
    bad = _write_csv(table.parent / f"bad_{row}.csv", rows)
    if "is_gallery" in change:
        fragments = [f"row {row + 2} of", "go together"]
    assert_one_line_error(invoke("evaluate", "--model", run, "--data", bad), 1, *fragments)


def test_evaluated_row_without_query_or_gallery_is_an_error(oml) -> None:
    table, rows, run = oml
    rows = [dict(r) for r in rows]
    row = next(i for i, r in enumerate(rows) if r["split"] == "validation")
    rows[row].update(is_query="", is_gallery="")
    bad = _write_csv(table.parent / "blank_flags.csv", rows)
    assert_one_line_error(invoke("evaluate", "--model", run, "--data", bad), 1, f"row {row + 2} of",
                          "is_query and is_gallery are blank")
