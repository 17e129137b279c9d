"""Issue #19 item 7: CSV columns by name — the label, ids that go into the index, metadata shown by queries."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke, make_blobs

COUNTS = {"setosa": 23, "versicolor": 31, "virginica": 17}


def _write(path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv-columns")
    x, y = make_blobs(COUNTS, dim=4, seed=7, spread=5.0)
    features = [f"f{i}" for i in range(4)]
    _write(root / "train.csv", [*features[:2], "species", *features[2:]],
           [[*row[:2].tolist(), label, *row[2:].tolist()] for row, label in zip(x, y)])
    ids = 1000 + 7 * np.arange(len(y))
    _write(root / "catalog.csv", ["id", "name", *features, "species"],
           [[i, f"plant {i}", *row.tolist(), label] for i, row, label in zip(ids, x, y)])
    _write(root / "queries.csv", features, x[:3].tolist())
    result = invoke("train", "--data", root / "train.csv", "--label-column", "species", "--epochs", 2,
                    "--batch-size", 16, "--encoder", "mlp:16", "--embedding-dim", 4, "--device", "cpu", "-q",
                    "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root, ids, x


def test_train_reads_the_named_label_column(files) -> None:
    root, _, _ = files
    assert json.loads((root / "run" / "classes.json").read_text()) == sorted(COUNTS)
    assert 'label_column = "species"' in (root / "run" / "config.toml").read_text()


def test_ids_and_kept_columns_go_into_the_index_and_show_in_queries(files) -> None:
    root, ids, x = files
    result = invoke("index", "build", "--model", root / "run", "--data", root / "catalog.csv", "--label-column",
                    "species", "--id-column", "id", "--keep-columns", "name", "--out", root / "idx")
    assert result.exit_code == 0, result.output
    out = invoke("index", "query", "--index", root / "idx", "--model", root / "run", "--data", root / "queries.csv",
                 "-k", 2, "--json")
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    assert found["ids"][0][0] == ids[0]  # the first catalogue row is its own nearest neighbour, by its own id
    assert found["metadata"][0][0] == {"name": f"plant {ids[0]}"}
    table = invoke("index", "query", "--index", root / "idx", "--model", root / "run", "--data",
                   root / "queries.csv", "-k", 1).output
    assert table.splitlines()[0].split() == ["query", "rank", "id", "similarity", "label", "metadata"]
    assert f'{{"name": "plant {ids[0]}"}}' in table.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["--label-column", "species"], 1, ["feature column 'name' is not numeric", "--keep-columns"]),
        (["--label-column", "kind"], 1, ["has no 'kind' column"]),
        (["--label-column", "species", "--keep-columns", "name", "--id-column", "name"], 1,
         ["id column 'name' holds 'plant 1000'; ids must be integers"]),
        (["--label-column", "species", "--keep-columns", "name,"], 2, ["expected column names separated by commas"]),
    ],
)
def test_column_errors_name_the_column(files, tmp_path, args, code, fragments) -> None:
    root, _, _ = files
    result = invoke("index", "build", "--model", root / "run", "--data", root / "catalog.csv", *args,
                    "--out", tmp_path / "idx")
    assert_one_line_error(result, code, *fragments)
    assert not (tmp_path / "idx").exists()
