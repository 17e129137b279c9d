"""Images under torchrun (2 CPU processes, gloo): training on a folder, and embedding one, as in one process.

About 40 s: two torchrun launches (each starts 2 interpreters that import torch), as the other torchrun tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import invoke

from .conftest import write_images

pytest.importorskip("kornia")

TRAIN = ["--encoder", "cnn:4,8", "--augment", "light", "--epochs", "2", "--batch-size", "6", "--samples-per-class", "2",
         "--embedding-dim", "4", "--image-size", "12", "--device", "cpu", "--threads", "1", "--quiet"]


def test_torchrun_trains_on_a_folder_and_embeds_it_as_one_process(tmp_path: Path, torchrun) -> None:
    write_images(tmp_path / "pictures", {"red": 8, "green": 7, "blue": 5})
    done = torchrun("train", "--data", tmp_path / "pictures", "--out", tmp_path / "run", *TRAIN)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()
    done = torchrun("embed", "--model", tmp_path / "run", "--data", tmp_path / "pictures", "--out",
                    tmp_path / "two.npy", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    result = invoke("embed", "--model", tmp_path / "run", "--data", tmp_path / "pictures", "--out",
                    tmp_path / "one.npy", "--quiet")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-6)
