"""The runnable examples in examples/ (a few epochs each)."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_train_digits_example(capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "train_digits.py"))["main"]
    metrics = main(epochs=3)
    assert 0.5 < metrics["knn_accuracy_k5"] <= 1.0
    assert "held-out MAP@R" in capsys.readouterr().out


def test_combine_losses_example(tmp_path, capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "combine_losses.py"))["main"]
    results = main(epochs=2, out=str(tmp_path))
    assert set(results) == {"cot", "pcgrad"} and all(0 < v <= 1 for v in results.values())
    assert (tmp_path / "cot" / "model.pt").exists() and (tmp_path / "pcgrad" / "log.csv").exists()
    assert "re-embedded 1797 digits" in capsys.readouterr().out
