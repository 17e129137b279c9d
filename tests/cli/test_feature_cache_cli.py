"""Issue #19 item 4: a frozen encoder's features are kept on disk, so train → embed → evaluate encode once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke

pytest.importorskip("transformers", reason="needs the 'text' extra")

WORDS = {"animals": ["dog", "cat", "horse", "owl"], "food": ["pizza", "soup", "bread"],
         "music": ["guitar", "piano", "violin", "drum", "flute"], "travel": ["airport", "hotel", "beach"]}


@pytest.fixture
def texts_jsonl(tmp_path):
    rows = [{"text": f"{start} the {word}.", "label": topic} for topic, words in WORDS.items()
            for word in words for start in ("I like", "Tell me about", "Where is")]  # 45 texts, uneven topics
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def encoded(monkeypatch):
    """The texts the transformer actually encodes, in call order."""
    from metriclearn.sentence import SentenceEncoder

    seen: list[str] = []
    original = SentenceEncoder._encode

    def counting(self, texts):
        seen.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(SentenceEncoder, "_encode", counting)
    return seen


def test_train_embed_evaluate_encode_each_text_once(tmp_path, texts_jsonl, tiny_bert_dir, encoded, monkeypatch) -> None:
    run = tmp_path / "run"
    result = invoke("train", "--data", texts_jsonl, "--encoder", f"sentence:{tiny_bert_dir}", "--epochs", "2",
                    "--batch-size", "12", "--samples-per-class", "3", "--embedding-dim", "8", "--device", "cpu",
                    "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    texts = [json.loads(line)["text"] for line in texts_jsonl.read_text().splitlines()]
    assert sorted(encoded) == sorted(texts)  # each text once, whatever the split
    first = tmp_path / "a.npy"
    assert invoke("embed", "--model", run, "--data", texts_jsonl, "--out", first, "--device", "cpu").exit_code == 0
    assert invoke("evaluate", "--model", run, "--data", texts_jsonl, "--device", "cpu").exit_code == 0
    assert len(encoded) == len(texts)  # embed and evaluate read every feature from the disk cache
    # a damaged shard is encoded again, with the same result
    shards = sorted(Path(os.environ["METRICLEARN_CACHE"]).glob("features/*/*.npz"))
    assert shards
    shards[0].write_bytes(b"not an npz")
    again = tmp_path / "b.npy"
    assert invoke("embed", "--model", run, "--data", texts_jsonl, "--out", again, "--device", "cpu").exit_code == 0
    assert len(texts) < len(encoded) < 2 * len(texts)
    np.testing.assert_array_equal(np.load(again), np.load(first))
    # off: every text is encoded again
    monkeypatch.setenv("METRICLEARN_CACHE", "off")
    before = len(encoded)
    assert invoke("embed", "--model", run, "--data", texts_jsonl, "--out", again, "--device", "cpu").exit_code == 0
    assert len(encoded) - before == len(texts)
    np.testing.assert_array_equal(np.load(again), np.load(first))


def test_feature_cache_keys_rows_by_model_and_text(tmp_path) -> None:
    from metriclearn.feature_cache import FeatureCache, text_hash

    a = FeatureCache("model a", dim=2, root=tmp_path)
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    a.put(["x", "y", "z"], rows)
    found = a.get(["z", "x", "w"])
    assert set(found) == {"x", "z"} and found["z"].tolist() == [4.0, 5.0]
    assert FeatureCache("model b", dim=2, root=tmp_path).get(["x"]) == {}
    assert FeatureCache("model a", dim=3, root=tmp_path).get(["x"]) == {}  # another width: not this model's rows
    with pytest.raises(ValueError, match=r"features must have shape \(1, 2\), got \(1, 3\)"):
        a.put(["x"], np.zeros((1, 3)))
    shard = a.folder / f"{text_hash('y')[:2]}.npz"
    np.savez(shard, hashes=np.array([text_hash("y")]), features=np.array([[np.nan, 1.0]], np.float32))
    assert "y" not in a.get(["y"])  # non-finite rows are not trusted
    a.put(["y"], rows[1:2])
    assert a.get(["y"])["y"].tolist() == [2.0, 3.0]
