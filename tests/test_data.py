"""Tests for metriclearn.data: every format, label encoding, error messages, the stratified split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metriclearn.data import (
    LabeledData,
    encode_labels,
    load_data,
    load_labels,
    load_matrix,
    train_val_split,
)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------------------------- formats
def test_digits() -> None:
    data = load_data("digits")
    assert data.X.shape == (1797, 64) and data.X.dtype == np.float32
    assert data.X.min() == 0 and data.X.max() == 16
    assert data.y.dtype == np.int64 and data.classes == list(range(10)) and data.num_classes == 10
    assert data.source == "digits" and len(data) == 1797 and not data.is_text


def test_npz_string_labels_sorted_and_json_able(tmp_path: Path) -> None:
    X = np.arange(24, dtype=np.float64).reshape(4, 2, 3)  # (n, ...) keeps its trailing shape
    np.savez(tmp_path / "d.npz", X=X, y=np.array(["dog", "cat", "emu", "cat"]))
    data = load_data(tmp_path / "d.npz")
    assert data.classes == ["cat", "dog", "emu"]
    assert all(type(c) is str for c in data.classes)
    json.dumps(data.classes)
    assert data.y.tolist() == [1, 0, 2, 0]
    assert data.X.shape == (4, 2, 3) and data.X.dtype == np.float32
    np.testing.assert_array_equal(data.X, X.astype(np.float32))


def test_npz_int_labels_become_python_ints(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 2)), y=np.array([7, 3, 7], dtype=np.int32))
    data = load_data(tmp_path / "d.npz")
    assert data.classes == [3, 7] and all(type(c) is int for c in data.classes)
    assert data.y.tolist() == [1, 0, 1]


def test_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "a,label,b\n1.5,x,2\n3,y, 4\n\n5,x,6e0\n")
    data = load_data(path)
    np.testing.assert_array_equal(data.X, np.array([[1.5, 2], [3, 4], [5, 6]], np.float32))
    assert data.classes == ["x", "y"] and data.y.tolist() == [0, 1, 0]


def test_csv_integer_labels_are_ints(tmp_path: Path) -> None:
    data = load_data(write_csv(tmp_path / "d.csv", "label,f\n10,1\n2,2\n10,3\n"))
    assert data.classes == [2, 10] and data.y.tolist() == [1, 0, 1]


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a b", "label": "pos"}\n\n   \n{"text": "c", "label": "neg"}\n')
    data = load_data(path)
    assert data.X == ["a b", "c"] and data.is_text
    assert data.classes == ["neg", "pos"] and data.y.tolist() == [1, 0]
    sub = data.subset([1])
    assert sub.X == ["c"] and sub.y.tolist() == [0] and sub.classes == data.classes


def test_classes_mapping_encodes_with_saved_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 1)), y=np.array(["b", "b"]))
    data = load_data(tmp_path / "d.npz", classes=["c", "b", "a"])  # a single present class is fine here
    assert data.classes == ["c", "b", "a"] and data.y.tolist() == [1, 1]


def test_encode_labels_unknown_names_a_few() -> None:
    labels = ["a", "z1", "z2", "z3", "z4", "z5", "z6"]
    with pytest.raises(ValueError, match=r"6 label value\(s\) are not in the 2 known classes: 'z1', .*'z5', \.\.\."):
        encode_labels(labels, classes=["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        encode_labels([1], classes=[1, 1])
    codes, classes = encode_labels(np.array([2.0, 1.0]))
    assert codes.tolist() == [1, 0] and classes == [1, 2] and all(type(c) is int for c in classes)


def test_unknown_label_error_names_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "label,f\nq,1\nr,2\n")
    with pytest.raises(ValueError, match=r"d\.csv: 1 label value\(s\) are not in the 2 known classes: 'r'"):
        load_data(path, classes=["p", "q"])


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("d.csv", "f,g\n1,2\n", r"d\.csv has no 'label' column \(columns: \['f', 'g'\]\)"),
        ("d.csv", "label,f,colour\n0,1,red\n1,2,blue\n", r"column 'colour' is not numeric \(line 2 holds 'red'\)"),
        ("d.csv", "label,f\n0,1\n1,2,3\n", r"d\.csv, line 3: 3 fields, but the header has 2"),
        ("d.csv", "label,f\n0,1\n0,2\n", r"d\.csv: needs at least 2 classes, found 1"),
        ("d.csv", "label,f\n", r"d\.csv is empty: it holds no samples"),
        ("d.csv", "label\n0\n1\n", r"no feature columns"),
        ("d.csv", "label,f,g\n0,nan,1\n1,inf,2\n0,1,2\n", r"d\.csv: X contains NaN or inf values in 2 of 3 rows"),
        ("d.csv", "", r"d\.csv is empty"),
        ("d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 2\n', r"d\.jsonl, line 3: invalid JSON"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 2}\n', r"line 2: expected an object with 'text'"),
        ("d.jsonl", '{"text": 3, "label": 1}\n', r"line 1: 'text' must be a string, got 3"),
        ("d.jsonl", '{"text": "a", "label": 1.5}\n', r"line 1: label 1\.5 is a number but not an integer"),
        ("d.jsonl", '{"text": "a", "label": [1]}\n', r"line 1: 'label' must be an integer or a string"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n', r"line 2: label 'x' mixes"),
        ("d.jsonl", "\n\n", r"d\.jsonl is empty: it holds no samples"),
        ("d.txt", "1,2\n", r"d\.txt: unknown data file extension '\.txt'; expected one of \.npz, \.csv, \.jsonl"),
    ],
)
def test_text_format_errors(tmp_path: Path, name: str, content: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_data(path)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.zeros((3, 2))}, r"d\.npz has no array y \(arrays found: \['X'\]\)"),
        ({"features": np.zeros((3, 2))}, r"has no array X or y"),
        ({"X": np.zeros((3, 2)), "y": np.array([0, 1])}, r"d\.npz: X has 3 rows but y has 2 labels"),
        ({"X": np.zeros(3), "y": np.array([0, 1, 0])}, r"X must have shape \(n, features\.\.\.\), got shape \(3,\)"),
        ({"X": np.zeros((2, 2)), "y": np.zeros((2, 2))}, r"y must be 1-D \(n,\), got shape \(2, 2\)"),
        ({"X": np.array([[1.0], [np.nan], [np.inf]]), "y": np.array([0, 1, 0])}, r"NaN or inf values in 2 of 3 rows"),
        ({"X": np.zeros((0, 2)), "y": np.zeros(0)}, r"d\.npz is empty: it holds no samples"),
        ({"X": np.zeros((2, 1)), "y": np.array([0, 1], dtype=object)}, r"array y is an object array"),
        ({"X": np.array([["a"], ["b"]]), "y": np.array([0, 1])}, r"X must be numeric, got dtype <U1"),
        ({"X": np.zeros((2, 1)), "y": np.array([0.5, 1])}, r"d\.npz: y must hold integer .*position 0 holds the float 0\.5"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_data(tmp_path / "d.npz")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data file '.*missing\.npz' does not exist"):
        load_data(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"image folder .* holds no image"):  # a folder is read as images
        load_data(tmp_path)
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.npz is empty"):
        load_data(tmp_path / "e.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"bad\.npz is not a readable \.npz file"):
        load_data(tmp_path / "bad.npz")
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"x\.npy: a \.npy file holds no labels; .*\.npz"):
        load_data(tmp_path / "x.npy")
    (tmp_path / "latin.csv").write_bytes(b"label,f\n\xe9,1\n")
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text"):
        load_data(tmp_path / "latin.csv")


# --------------------------------------------------------------------------------------------- npy
def test_load_matrix(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.arange(6, dtype=np.float64).reshape(3, 2))
    out = load_matrix(tmp_path / "e.npy", "embeddings")
    assert out.dtype == np.float32 and out.shape == (3, 2)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(3), r"embeddings file '.*e\.npy' must be a 2-D array"),
        (np.zeros((0, 3)), r"embeddings file '.*e\.npy' is empty"),
        (np.array([[np.nan, 1.0], [1.0, 1.0]]), r"NaN or inf values in 1 of 2 rows"),
        (np.array([[1], ["a"]], dtype=object), r"embeddings file '.*e\.npy' holds an object array"),
    ],
)
def test_load_matrix_errors(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "e.npy", array, allow_pickle=True)
    with pytest.raises(ValueError, match=match):
        load_matrix(tmp_path / "e.npy", "embeddings")


def test_load_matrix_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"probabilities file '.*p\.npy' does not exist"):
        load_matrix(tmp_path / "p.npy", "probabilities")
    (tmp_path / "p.txt").write_text("1")
    with pytest.raises(ValueError, match=r"must be a \.npy file, got extension '\.txt'"):
        load_matrix(tmp_path / "p.txt", "probabilities")
    (tmp_path / "p.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"is not a readable \.npy file"):
        load_matrix(tmp_path / "p.npy", "probabilities")
    np.save(tmp_path / "s.npy", np.array([["a"]]))
    with pytest.raises(TypeError, match=r"must be a numeric array"):
        load_matrix(tmp_path / "s.npy")


def test_load_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "y.npy", np.array(["a", "b"]))
    assert load_labels(tmp_path / "y.npy", n=2).tolist() == ["a", "b"]
    with pytest.raises(ValueError, match=r"labels file '.*y\.npy' has 2 entries but there are 3 samples"):
        load_labels(tmp_path / "y.npy", n=3)
    np.save(tmp_path / "z.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"labels file '.*z\.npy' must be a 1-D array"):
        load_labels(tmp_path / "z.npy")
    np.save(tmp_path / "e.npy", np.zeros(0))
    with pytest.raises(ValueError, match=r"labels file '.*e\.npy' is empty"):
        load_labels(tmp_path / "e.npy")


# --------------------------------------------------------------------------------------------- dataclass
def test_labeled_data_length_mismatch() -> None:
    with pytest.raises(ValueError, match="toy: X has 2 rows but y has 3 labels"):
        LabeledData(np.zeros((2, 1)), np.zeros(3, np.int64), [0], "toy")


# --------------------------------------------------------------------------------------------- split
def test_split_is_stratified_seeded_and_disjoint() -> None:
    data = load_data("digits")
    train, val = train_val_split(data, val_fraction=0.25, seed=3)
    assert len(train) + len(val) == len(data) and len(val) == int(np.ceil(0.25 * len(data)))
    # digits holds duplicate images, so track rows through a marker feature = original index
    marked = LabeledData(np.arange(len(data), dtype=np.float32)[:, None], data.y, data.classes, "m")
    tr, va = train_val_split(marked, val_fraction=0.25, seed=3)
    ti, vi = tr.X[:, 0].astype(int), va.X[:, 0].astype(int)
    assert set(ti).isdisjoint(vi) and len(set(ti) | set(vi)) == len(data)
    assert np.all(np.diff(ti) > 0) and np.all(np.diff(vi) > 0)  # original order kept
    share = np.bincount(va.y, minlength=10) / np.bincount(data.y, minlength=10)
    assert np.all(np.abs(share - 0.25) < 0.02)  # stratified: every class ~25 % in val
    again = train_val_split(marked, val_fraction=0.25, seed=3)[1].X[:, 0]
    other = train_val_split(marked, val_fraction=0.25, seed=4)[1].X[:, 0]
    assert np.array_equal(again, va.X[:, 0]) and not np.array_equal(other, va.X[:, 0])
    assert train.classes == val.classes == data.classes


def test_split_singleton_classes_go_to_train() -> None:
    y = np.array([0] * 10 + [1] * 10 + [2, 3])  # classes 2 and 3 have one sample each
    data = LabeledData(np.arange(len(y), dtype=np.float32)[:, None], y, [0, 1, 2, 3], "s")
    train, val = train_val_split(data, val_fraction=0.2, seed=0)
    assert {2, 3} <= set(train.y.tolist()) and not {2, 3} & set(val.y.tolist())
    assert np.bincount(val.y, minlength=4).tolist() == [2, 2, 0, 0]


def test_split_falls_back_when_val_is_smaller_than_class_count() -> None:
    y = np.repeat(np.arange(5), 2)  # 10 samples, 5 classes; 20 % -> 2 val rows < 5 classes
    data = LabeledData(np.zeros((10, 1), np.float32), y, list(range(5)), "s")
    train, val = train_val_split(data, val_fraction=0.2, seed=0)
    assert len(train) == 8 and len(val) == 2


def test_split_zero_fraction_and_errors() -> None:
    data = load_data("digits")
    train, val = train_val_split(data, val_fraction=0.0)
    assert len(train) == len(data) and len(val) == 0 and val.X.shape == (0, 64)
    with pytest.raises(ValueError, match="val_fraction must be below 1"):
        train_val_split(data, val_fraction=1.0)
    with pytest.raises(ValueError, match="val_fraction must lie in"):
        train_val_split(data, val_fraction=1.5)


def test_split_text_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    train, val = train_val_split(load_data(path), val_fraction=0.2, seed=0)
    assert isinstance(val.X, list) and len(val.X) == 2 and sorted(val.y.tolist()) == [0, 1]
    assert sorted(train.X + val.X) == sorted(f"t{i}" for i in range(10))


# --------------------------------------------------------------------------------------------- labels optional
def test_unlabelled_files_load_without_labels_when_not_required(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "d.npz", X=X)
    np.save(tmp_path / "raw.npy", X.reshape(4, 3, 1))  # raw inputs keep their trailing shape
    write_csv(tmp_path / "d.csv", "a,b,c\n" + "".join(",".join(str(v) for v in row) + "\n" for row in X))
    write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two", "id": 2}])
    for name in ("d.npz", "d.csv"):
        data = load_data(tmp_path / name, require_labels=False)
        assert data.y is None and not data.is_labeled and data.classes == [] and len(data) == 4
        np.testing.assert_array_equal(data.X, X.astype(np.float32))
        assert data.label_values() is None and data.subset([3, 1]).X.tolist() == [X[3].tolist(), X[1].tolist()]
    raw = load_data(tmp_path / "raw.npy", require_labels=False)
    assert raw.X.shape == (4, 3, 1) and raw.y is None
    text = load_data(tmp_path / "d.jsonl", require_labels=False)
    assert text.X == ["one", "two"] and text.y is None and text.is_text
    with pytest.raises(ValueError, match=r"d\.npz has no array y"):
        load_data(tmp_path / "d.npz")  # labels stay required by default (training needs them)
    with pytest.raises(ValueError, match=r"line 1: expected an object with 'text' and 'label'"):
        load_data(tmp_path / "d.jsonl")


def test_labelled_files_keep_labels_when_optional(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", "label,f\ncat,1\ndog,2\n")
    data = load_data(tmp_path / "d.csv", require_labels=False)
    assert data.classes == ["cat", "dog"] and data.label_values().tolist() == ["cat", "dog"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', r"line 2: no 'label', but earlier lines have one"),
        ("d.jsonl", '{"text": "a"}\n\n{"text": "b", "label": 1}\n', r"line 3: has a 'label', but line 1 has none"),
        ("d.csv", "label,f\n1,1\n ,2\n", r"d\.csv, line 3: the label is blank"),
        ("d.npy", None, r"d\.npy: the array must have shape \(n, features\.\.\.\)"),
    ],
)
def test_partly_labelled_files_are_refused(tmp_path: Path, name: str, content: str | None, match: str) -> None:
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(3))
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_data(path, require_labels=False)


def test_unseen_classes_are_appended_after_the_known_ones(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((5, 2)), y=np.array(["emu", "cat", "ant", "emu", "dog"]))
    data = load_data(tmp_path / "d.npz", classes=["dog", "cat"], unseen="append")
    assert data.classes == ["dog", "cat", "ant", "emu"]  # known first, in their order; then new ones sorted
    assert data.y.tolist() == [3, 1, 2, 3, 0]
    assert data.label_values().tolist() == ["emu", "cat", "ant", "emu", "dog"]
    with pytest.raises(ValueError, match=r"d\.npz: 2 label value\(s\) are not in the 2 known classes: 'ant', 'emu'"):
        load_data(tmp_path / "d.npz", classes=["dog", "cat"])
    with pytest.raises(ValueError, match="unseen must be one of 'error', 'append'; got 'keep'"):
        load_data(tmp_path / "d.npz", classes=["dog", "cat"], unseen="keep")


# --------------------------------------------------------------------------------------------- never corrupted
@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("d.csv", "label,f,label\n1,2,3\n0,4,5\n", r"d\.csv has 2 'label' columns \(columns 1 and 3\); keep exactly one"),
        ("d.csv", "f,label\n1,cat\n2,\n", r"d\.csv, line 3: the label is blank"),
        ("d.csv", "f,label\n1,1e20\n2,3\n", r"d\.csv, line 2: label 1e20 is a number but not an integer"),
        ("d.csv", "f,label\n1,2.5\n2,3\n", r"line 2: label 2\.5 is a number but not an integer"),
        ("d.csv", "f,label\n1,nan\n2,3\n", r"line 2: label nan is a number but not an integer"),
        ("d.csv", "f,label\n1,99999999999999999999\n2,3\n", r"line 2: label 99999999999999999999 does not fit"),
        ("d.jsonl", '{"text": "a", "label": 1e20}\n', r"line 1: label 1e\+20 is a number but not an integer"),
    ],
)
def test_labels_are_never_silently_corrupted_in_text_files(tmp_path: Path, name: str, content: str,
                                                           match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_data(path)


def test_integral_float_labels_convert_losslessly(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 1)), y=np.array([1.0, 2.0, 2.0**53]))
    assert load_data(tmp_path / "d.npz").classes == [1, 2, 2**53]
    assert load_data(write_csv(tmp_path / "d.csv", "f,label\n1,1.0\n2,3\n3,1\n")).classes == [1, 3]
    text = load_data(write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 7}]))
    assert text.classes == [1, 7] and all(type(c) is int for c in text.classes)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.zeros((2, 1)), "y": np.array([1.0, 1e20])}, r"position 1 holds the float 1e\+20"),
        ({"X": np.zeros((2, 1)), "y": np.array([1 + 2j, 3])}, r"d\.npz: y must hold integer or string labels, got dtype complex128"),
        ({"X": np.array([[1 + 1j], [2]]), "y": np.array([0, 1])}, r"d\.npz: X must hold real numbers, got complex dtype complex128"),
    ],
)
def test_npz_values_are_never_silently_corrupted(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_data(tmp_path / "d.npz")


def test_load_data_names_a_bad_source_argument() -> None:
    with pytest.raises(TypeError, match=r"source must be a file path or 'digits', got 5"):
        load_data(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"embeddings must hold real numbers, got complex dtype"):
        from metriclearn._checks import check_matrix

        check_matrix(np.ones((2, 2), np.complex64), "embeddings")


def test_split_needs_labels(tmp_path) -> None:
    np.save(tmp_path / "raw.npy", np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32))
    unlabelled = load_data(tmp_path / "raw.npy", require_labels=False)
    with pytest.raises(ValueError, match=r"train_val_split stratifies by label, but .*raw\.npy has no labels"):
        train_val_split(unlabelled, val_fraction=0.3)
