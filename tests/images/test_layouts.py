"""Both image layouts (class folders and a path/label CSV), unlabelled folders, and what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metriclearn.data import load_data
from metriclearn.images import ImageOptions

from .conftest import COLOURS, COUNTS, write_images


def test_class_folders_give_labels_shapes_and_pixels(image_folder: Path) -> None:
    data = load_data(image_folder, images=ImageOptions(size=12))
    assert data.X.shape == (27, 3, 12, 12) and data.X.dtype == np.float32
    assert data.classes == ["7", "blue", "green", "red"]  # folder names; "7" stays text beside the others
    assert np.bincount(data.y).tolist() == [COUNTS["7"], COUNTS["blue"], COUNTS["green"], COUNTS["red"]]
    for code, name in enumerate(data.classes):  # each picture keeps its class colour (JPEG/WebP within noise)
        mean_rgb = data.X[data.y == code].mean(axis=(0, 2, 3)) * 255
        assert np.abs(mean_rgb - np.array(COLOURS[name])).max() < 20, (name, mean_rgb)


def test_integer_folder_names_are_integer_labels(tmp_path: Path) -> None:
    write_images(tmp_path / "digits", {"7": 3, "10": 2})
    data = load_data(tmp_path / "digits", images=ImageOptions(size=8))
    assert data.classes == [7, 10]  # as in a .csv, "7" is the number 7: the labels of an .npz of the same digits


def test_csv_with_relative_paths_and_oml_columns(image_folder: Path, tmp_path: Path) -> None:
    files = sorted(image_folder.rglob("*.*"))
    rows = ["path,label,split,is_query,is_gallery"]
    rows += [f"pictures/{f.parent.name}/{f.name},{f.parent.name},{'train' if i % 3 else 'validation'},"
             f"{i % 2},{1 - i % 2}" for i, f in enumerate(files)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    data = load_data(tmp_path / "list.csv", images=ImageOptions(size=12))
    folder = load_data(image_folder, images=ImageOptions(size=12))
    assert data.X.shape == (len(files), 3, 12, 12)
    folder_order = {(f.parent.name, f.name): i for i, f in enumerate(sorted(files, key=lambda f: (f.parent.name, f.name)))}
    rows_in_folder = [folder_order[(f.parent.name, f.name)] for f in files]
    np.testing.assert_array_equal(data.X, folder.X[rows_in_folder])  # same decode, whatever the layout
    assert data.label_values().tolist() == [f.parent.name for f in files]


def test_csv_label_column_by_another_name(image_folder: Path, tmp_path: Path) -> None:
    from metriclearn.data import CsvColumns

    files = sorted(image_folder.rglob("*.png"))
    (tmp_path / "l.csv").write_text("species,path\n" + "".join(f"{f.parent.name},{f}\n" for f in files))
    data = load_data(tmp_path / "l.csv", columns=CsvColumns(label="species"), images=ImageOptions(size=8))
    assert sorted(data.classes) == sorted({f.parent.name for f in files})


def test_unlabelled_folder_and_csv(tmp_path: Path) -> None:
    write_images(tmp_path / "flat", {"red": 3, "blue": 2}, subfolders=False)
    data = load_data(tmp_path / "flat", require_labels=False, images=ImageOptions(size=8))
    assert data.y is None and data.X.shape == (5, 3, 8, 8)
    with pytest.raises(ValueError, match=r"flat has no labels \(no class subfolders\)"):
        load_data(tmp_path / "flat")
    (tmp_path / "u.csv").write_text("path\n" + "".join(f"flat/{f.name}\n" for f in sorted((tmp_path / "flat").iterdir())))
    assert load_data(tmp_path / "u.csv", require_labels=False, images=ImageOptions(size=8)).y is None


def test_automatic_size_and_grey_images(tmp_path: Path) -> None:
    for label, value in (("a", 30), ("b", 200)):
        (tmp_path / "grey" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((10, 14), value + i, np.uint8)).save(tmp_path / "grey" / label / f"{i}.png")
    data = load_data(tmp_path / "grey")
    assert data.X.shape == (4, 1, 10, 10)  # the first image's shorter side; grey images keep one channel
    assert load_data(tmp_path / "grey", images=ImageOptions(size=6, channels=3)).X.shape == (4, 3, 6, 6)


@pytest.mark.parametrize("layout, match", [
    ("mixed", r"has images both in class subfolders and at its top"),
    ("empty", r"holds no image"),
    ("bad split", r"row 2 of .*split must be one of train, validation, got 'test'"),
    ("bad flag", r"row 2 of .*is_query must be 0/1 or true/false, got 'maybe'"),
    ("blank path", r"row 2 of .*the path is blank"),
    ("blank label", r"row 2 of .*the label is blank"),
])
def test_refused_layouts(tmp_path: Path, layout: str, match: str) -> None:
    write_images(tmp_path / "d", {"red": 2, "blue": 2})
    source = tmp_path / "d"
    if layout == "mixed":
        write_images(source, {"red": 1}, subfolders=False)
    elif layout == "empty":
        (tmp_path / "e").mkdir()
        source = tmp_path / "e"
    else:
        row = {"bad split": "d/red/red_00.png,red,test,", "bad flag": "d/red/red_00.png,red,train,maybe",
               "blank path": ",red,train,1", "blank label": "d/red/red_00.png,,train,1"}[layout]
        source = tmp_path / "l.csv"
        source.write_text(f"path,label,split,is_query\n{row}\nd/blue/blue_00.png,blue,train,0\n")
    with pytest.raises(ValueError, match=match):
        load_data(source, images=ImageOptions(size=8))
