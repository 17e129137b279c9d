"""``--workers`` and ``--skip-bad-images`` on every command that takes image ``--data`` (one definition,
:func:`metriclearn.cli._inputs.image_data_options`), through the real CLI: a damaged folder stops each command
with one line naming a bad file, and ``--skip-bad-images --workers 2`` goes on without the bad files; and
``second-opinion --image-size`` decodes the cache and the inputs at the asked size."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, invoke

from .conftest import write_images

pytest.importorskip("kornia")

COUNTS = {"0": 7, "1": 5, "2": 6, "3": 4}  # 22 pictures, uneven; integer class folders (second-opinion)
TRAIN = ["--encoder", "cnn:4", "--epochs", "1", "--batch-size", "4", "--samples-per-class", "2",
         "--embedding-dim", "4", "--image-size", "8", "--device", "cpu", "--quiet", "--threads", "1",
         "--val-fraction", "0"]
SKIP = ["--skip-bad-images", "--workers", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a run, its clean folder, a copy with 3 bad files) and an index of the clean folder beside the run."""
    root = tmp_path_factory.mktemp("options")
    write_images(root / "clean", COUNTS)
    shutil.copytree(root / "clean", root / "damaged")
    _damage_integer_folders(root / "damaged")
    result = invoke("train", "--data", root / "clean", "--out", root / "run", *TRAIN)
    assert result.exit_code == 0, result.output
    result = invoke("index", "build", "--model", root / "run", "--data", root / "clean", "--out", root / "idx",
                    "--quiet")
    assert result.exit_code == 0, result.output
    return root / "run", root / "clean", root / "damaged"


def _damage_integer_folders(folder: Path) -> None:
    """A corrupt file (not an image), a truncated PNG and a zero-byte JPEG among the good pictures."""
    (folder / "0" / "corrupt.png").write_bytes(b"this is not a picture at all" * 10)
    whole = (folder / "2" / "2_00.png").read_bytes()
    (folder / "2" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "0" / "z.jpg").write_bytes(b"")


def _commands(run: Path, root: Path, data: Path) -> dict[str, list[object]]:
    idx = run.parent / "idx"
    return {
        "evaluate": ["evaluate", "--model", run, "--data", data, "--out", root / "eval.json"],
        "index build": ["index", "build", "--model", run, "--data", data, "--out", root / "idx2", "--overwrite"],
        "index query": ["index", "query", "--index", idx, "--model", run, "--data", data, "-k", "2", "--json",
                        "--out", root / "q.json"],
        "classify": ["classify", "--index", idx, "--model", run, "--data", data, "--method", "knn",
                     "--out", root / "p.csv"],
        "report": ["report", "--model", run, "--data", data, "--method", "tsne", "--out", root / "r", "--overwrite"],
    }


@pytest.mark.parametrize("command", ["evaluate", "index build", "index query", "classify", "report"])
def test_every_command_stops_at_a_bad_image_or_skips_it(setup: tuple[Path, Path, Path], tmp_path: Path,
                                                        command: str) -> None:
    run, _, damaged = setup
    args = _commands(run, tmp_path, damaged)[command]
    assert_one_line_error(invoke(*args, "--quiet"), 1, "--skip-bad-images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke(*args, *SKIP, "--quiet")
    assert result.exit_code == 0, result.output
    good = sum(COUNTS.values())  # the 3 bad files left out
    if command == "evaluate":
        assert json.loads((tmp_path / "eval.json").read_text())["data"]["n_query"] == good
    elif command == "index build":
        assert f"indexed {good} vectors" in result.output
    elif command == "index query":
        assert len(json.loads((tmp_path / "q.json").read_text())["ids"]) == good
    elif command == "classify":
        assert len((tmp_path / "p.csv").read_text().splitlines()) == good + 1
    else:
        assert (tmp_path / "r" / "explorer.html").is_file()


def test_second_opinion_takes_the_image_options(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, clean, damaged = setup
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 4))
    torch.jit.script(net).save(tmp_path / "classifier.pt")
    args = ["second-opinion", "--model", tmp_path / "classifier.pt", "--cache", clean, "--out", tmp_path / "b.npy",
            "--quiet"]
    assert_one_line_error(invoke(*args, "--data", damaged), 1, "--skip-bad-images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke(*args, "--data", damaged, "--image-size", "6", *SKIP)
    assert result.exit_code == 0, result.output
    blend = np.load(tmp_path / "b.npy")
    assert blend.shape == (sum(COUNTS.values()), 4)
    np.testing.assert_allclose(blend.sum(axis=1), 1.0, rtol=1e-5)
    result = invoke("second-opinion", "--index", setup[0].parent / "idx", "--embeddings", tmp_path / "b.npy",
                    "--probs", tmp_path / "b.npy", "--workers", "2", "--out", tmp_path / "c.npy")
    assert_one_line_error(result, 2, "--workers does not go with --index")
