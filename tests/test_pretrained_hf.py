"""The Hugging Face path of metriclearn.pretrained on a tiny BertForSequenceClassification (see conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_f32_close

from metriclearn.pretrained import FeatureExtractor, SecondOpinion, candidate_layers
from metriclearn.pretrained.loading import load_model

FORTUNES = Path(__file__).resolve().parents[1] / "examples" / "data" / "fortunes" / "fortunes.jsonl"


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    """Real fortunes of the tiny model's three classes, uneven counts (60 / 45 / 30), mixed order."""
    rows = [json.loads(line) for line in FORTUNES.read_text(encoding="utf-8").splitlines()]
    picked = [r for label, n in (("computers", 60), ("food", 45), ("politics", 30))
              for r in [r for r in rows if r["label"] == label][:n]]
    order = np.random.default_rng(0).permutation(len(picked))
    return [picked[i]["text"] for i in order], [picked[i]["label"] for i in order]


def test_hugging_face_directory_loads_offline_with_its_classes(tiny_bert_dir) -> None:
    loaded = load_model(tiny_bert_dir)
    assert loaded.kind == "huggingface" and loaded.text
    assert loaded.classes == ["computers", "food", "politics"]
    assert candidate_layers(loaded.model) == ["classifier:input", "bert.encoder.layer.2", "bert.encoder.layer.1"]


def test_features_are_the_masked_mean_of_the_hidden_states(tiny_bert_dir, texts) -> None:
    loaded = load_model(tiny_bert_dir)
    batch = texts[0][:7]
    features, probs = FeatureExtractor(loaded.model, layers="bert.encoder.layer.2", tokenizer=loaded.tokenizer,
                                       batch_size=3).extract(batch)
    tokens = loaded.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(**tokens, output_hidden_states=True)
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(features, F.normalize(pooled, dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(out.logits, 1).numpy(), atol=1e-5)
    whole, _ = FeatureExtractor(loaded.model, layers="bert.encoder.layer.2", batch_size=3).extract(dict(tokens))
    np.testing.assert_allclose(whole, features, atol=1e-5)  # a whole tokenizer output, batched by the extractor
    default, _ = FeatureExtractor(loaded.model, tokenizer=loaded.tokenizer).extract(batch)
    np.testing.assert_allclose(default, F.normalize(out_pooler(loaded.model, tokens), dim=1).numpy(), atol=1e-5)


def out_pooler(model: torch.nn.Module, tokens: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.bert(**tokens).pooler_output  # the classifier's input (dropout is off in eval)


def test_second_opinion_on_texts_aligns_names_tunes_and_round_trips(tiny_bert_dir, texts, tmp_path) -> None:
    loaded = load_model(tiny_bert_dir)
    X, y = texts
    opinion = SecondOpinion(loaded.model, tokenizer=loaded.tokenizer, batch_size=16)
    opinion.fit(X[:80], y[:80]).tune(X[80:110], y[80:110])
    assert opinion.classes_ == ["computers", "food", "politics"]
    assert set(opinion.tuning_["layers"]) == {"classifier:input", "bert.encoder.layer.2", "bert.encoder.layer.1"}
    assert opinion.metadata_[0] == {"text": X[0]}  # texts kept as evidence
    proba = opinion.predict_proba(X[110:])
    assert proba.shape == (25, 3)
    np.testing.assert_allclose(proba.sum(1), 1)
    rows = opinion.audit(X[110:], y[110:])
    assert all(n["metadata"]["text"] in X[:80] for r in rows for n in r["neighbors"])
    opinion.save(tmp_path / "cache")
    again = SecondOpinion.load(tmp_path / "cache", loaded.model, tokenizer=loaded.tokenizer)
    assert_f32_close(again.predict_proba(X[110:]), proba, gain=again.theta_)
    with pytest.raises(ValueError, match=r"cache label 'sports' is not one of the model's 3 classes"):
        SecondOpinion(loaded.model, tokenizer=loaded.tokenizer).fit(X[:2], ["food", "sports"])


def test_a_directory_without_classification_weights_is_refused(tiny_bert_dir, tmp_path) -> None:
    from transformers import AutoTokenizer, BertModel

    body = BertModel.from_pretrained(str(tiny_bert_dir), local_files_only=True)
    body.save_pretrained(tmp_path / "body")
    AutoTokenizer.from_pretrained(str(tiny_bert_dir), local_files_only=True).save_pretrained(tmp_path / "body")
    with pytest.raises(ValueError, match=r"has no trained sequence-classification weights for classifier\."):
        load_model(tmp_path / "body")
