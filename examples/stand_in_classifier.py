"""A stand-in for "your Hugging Face text classifier", to try ``metriclearn second-opinion --model`` offline.

Writes, into the current folder:

- ``my-classifier/``: a tiny, *untrained* ``BertForSequenceClassification`` (2 layers, width 32) for three fortune
  categories, saved with ``save_pretrained`` together with the packaged all-MiniLM-L6-v2 tokenizer;
- ``train.jsonl``, ``val.jsonl``, ``test.jsonl``: 300 / 100 / 100 labelled fortune cookies of those categories
  (``examples/data/fortunes/``), seeded shuffle.

An untrained model is near chance, which is what the second opinion then has to fix. For a real classifier (MiniLM
with a trained head) see ``examples/second_opinion_huggingface.py``. Needs the ``text`` extra; nothing is
downloaded. Run: ``python examples/stand_in_classifier.py [--out DIR]`` (about 5 s).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

FORTUNES = Path(__file__).resolve().parent / "data" / "fortunes" / "fortunes.jsonl"
LABELS = ("computers", "food", "politics")
SPLITS = {"train": 300, "val": 100, "test": 100}


def write_stand_in(out: Path, seed: int = 0) -> None:
    """Save the untrained classifier to ``out/my-classifier`` and the three .jsonl splits to ``out``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from metriclearn.sentence import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)))
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out / "my-classifier")
    tokenizer.save_pretrained(out / "my-classifier")

    with open(FORTUNES, encoding="utf-8") as f:
        rows = [row for row in map(json.loads, f) if row["label"] in LABELS]
    random.Random(seed).shuffle(rows)
    start = 0
    for name, size in SPLITS.items():
        part = rows[start : start + size]
        start += size
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_stand_in(args.out, args.seed)
    print(f"wrote {args.out / 'my-classifier'}/ and train/val/test.jsonl ({', '.join(map(str, SPLITS.values()))} rows)")


if __name__ == "__main__":
    main()
