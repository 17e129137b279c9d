"""The Lightning examples in examples/, each on a tiny slice with the tiny BERT fixture standing in for MiniLM."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning", reason="needs the 'lightning' extra")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _accuracies(output: str) -> tuple[float, float]:
    line = next(line for line in output.splitlines() if line.startswith("accuracy on "))
    model = float(line.split("model ")[1].split(",")[0])
    blend = float(line.split("second opinion ")[1].split()[0])
    return model, blend


def test_cot_example_trains_alternating_steps_and_gets_a_second_opinion(tiny_bert_dir, tmp_path) -> None:
    main = runpy.run_path(str(EXAMPLES / "lightning_cot_sentences.py"))["main"]
    output = main(["--out", str(tmp_path), "--encoder", f"sentence:{tiny_bert_dir}", "--per-class", "6",
                   "--epochs", "2"])
    config = (tmp_path / "run" / "config.toml").read_text()
    assert 'combine = "alternate"' in config and '"softmax",\n    "complement",' in config
    assert len(json.loads((tmp_path / "run" / "classes.json").read_text())) == 12
    assert np.load(tmp_path / "proba.npy").shape == (22, 12)  # 30 % of 72 texts, rounded by the split
    model, blend = _accuracies(output)
    assert 0.0 <= model <= 1.0 and 0.0 <= blend <= 1.0


def test_sequence_classifier_example_steps_onecycle_per_batch(tiny_bert_dir, tmp_path) -> None:
    main = runpy.run_path(str(EXAMPLES / "lightning_sequence_classifier.py"))["main"]
    output = main(["--out", str(tmp_path), "--encoder", f"sentence:{tiny_bert_dir}", "--per-class", "6",
                   "--epochs", "2", "--lr", "1e-3"])
    with open(next((tmp_path / "logs").glob("version_*/metrics.csv")), newline="") as fh:
        lrs = [float(row["lr-AdamW/pg1"]) for row in csv.DictReader(fh) if row.get("lr-AdamW/pg1")]
    assert len(lrs) == 4  # 2 epochs × ceil(36 / 32) batches: one learning rate per batch
    # OneCycle over 4 steps: from max_lr / 25 up (peak at 30 %), then annealed to max_lr / 25 / 1e4
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[1] > lrs[0] and lrs[-1] == pytest.approx(1e-3 / 25 / 1e4)
    assert "freeze = false" in (tmp_path / "run" / "config.toml").read_text()
    assert np.load(tmp_path / "proba.npy").shape == (22, 12)
    model, blend = _accuracies(output)
    assert 0.0 <= model <= 1.0 and 0.0 <= blend <= 1.0
