"""Every bad-image path: a missing, corrupt or truncated file is an error naming it (and its CSV row);
``--skip-bad-images`` leaves them out, counting and listing them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke
from metriclearn.data import load_data
from metriclearn.images import ImageOptions

from .conftest import write_images

FAST = ["--epochs", "1", "--batch-size", "6", "--samples-per-class", "2", "--embedding-dim", "4", "--encoder",
        "cnn:4", "--device", "cpu", "--quiet", "--threads", "1", "--val-fraction", "0", "--image-size", "8"]


def _damage(folder: Path) -> dict[str, Path]:
    """A corrupt file (not an image), a truncated PNG and a zero-byte JPEG among good pictures."""
    corrupt, truncated, empty = folder / "red" / "corrupt.png", folder / "blue" / "truncated.png", folder / "red" / "z.jpg"
    corrupt.write_bytes(b"this is not a picture at all" * 10)
    whole = (folder / "blue" / "blue_00.png").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    empty.write_bytes(b"")
    return {"corrupt": corrupt, "truncated": truncated, "empty": empty}


@pytest.mark.parametrize("kind, reason", [("corrupt", "not a readable image"), ("truncated", "damaged image"),
                                          ("empty", "not a readable image")])
def test_a_bad_file_is_an_error_naming_it(image_folder: Path, kind: str, reason: str) -> None:
    bad = _damage(image_folder)
    for other in set(bad) - {kind}:
        bad[other].unlink()
    with pytest.raises(ValueError, match=f"{bad[kind].name}: {reason}.*--skip-bad-images"):
        load_data(image_folder, images=ImageOptions(size=8, cache=False))


def test_missing_file_in_csv_names_file_and_row(image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,label\npictures/red/red_00.png,red\npictures/red/gone.png,red\n"
                                    "pictures/blue/blue_00.jpg,blue\n")
    with pytest.raises(ValueError, match=r"gone\.png: no such image file \(row 3 of .*l\.csv\)"):
        load_data(tmp_path / "l.csv", images=ImageOptions(size=8))
    result = invoke("train", "--data", tmp_path / "l.csv", "--out", tmp_path / "run", *FAST)
    assert_one_line_error(result, 1, "gone.png: no such image file", "row 3 of")


def test_skip_bad_images_counts_and_lists_them(image_folder: Path) -> None:
    bad = _damage(image_folder)
    with pytest.raises(ValueError, match="--skip-bad-images"):
        load_data(image_folder, images=ImageOptions(size=8))
    with pytest.warns(UserWarning, match=r"skipped 3 of 30 images that cannot be read") as caught:
        data = load_data(image_folder, images=ImageOptions(size=8, skip_bad=True))
    message = str(caught[0].message)
    assert all(path.name in message for path in bad.values())
    assert len(data) == 27 and np.bincount(data.y).tolist() == [5, 6, 7, 9]  # labels follow the kept images


def test_skip_bad_images_through_train(image_folder: Path, tmp_path: Path) -> None:
    _damage(image_folder)
    result = invoke("train", "--data", image_folder, "--out", tmp_path / "refused", *FAST)
    assert_one_line_error(result, 1, "--skip-bad-images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke("train", "--data", image_folder, "--out", tmp_path / "run", "--skip-bad-images", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_train"] == 27  # 30 files, 3 bad


def test_every_image_bad(tmp_path: Path) -> None:
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"x\.png: not a readable image"):
        load_data(tmp_path / "d", images=ImageOptions(size=8, skip_bad=True))
