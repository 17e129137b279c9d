"""A Hugging Face text classifier, built offline from the packaged MiniLM, gets a second opinion from the CLI.

1. ``BertForSequenceClassification`` from the all-MiniLM-L6-v2 weights (``local_files_only``); its linear head
   is trained on the training split of a real labelled text set (Debian's fortune cookies, one class per
   fortune file: ``examples/data/fortunes/``), with the transformer frozen.
2. ``save_pretrained`` writes an ordinary Hugging Face model directory (with the tokenizer).
3. ``metriclearn second-opinion --model DIR --cache train.jsonl --tune-data val.jsonl --data test.jsonl`` caches
   the model's own features of the training texts, chooses θ, λ and the layer on val, and prints the accuracy
   of the model and of the second opinion on test.

Run: ``python examples/second_opinion_huggingface.py --out runs/hf [--seed 0] [--per-class N]``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

DATA = Path(__file__).resolve().parent / "data" / "fortunes" / "fortunes.jsonl"


def read_jsonl(path: Path, per_class: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    if not per_class:
        return rows
    seen: Counter = Counter()  # the first N of each class: a small slice for quick runs
    return [r for r in rows if (seen.update([r["label"]]) or seen[r["label"]]) <= per_class]


def split(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    """Stratified 50 / 20 / 30 % train / val / test."""
    y = [r["label"] for r in rows]
    train, rest = train_test_split(np.arange(len(rows)), test_size=0.5, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.6, stratify=[y[i] for i in rest], random_state=seed)
    return {name: [rows[i] for i in part] for name, part in (("train", train), ("val", val), ("test", test))}


def build_classifier(base: Path, train: list[dict], seed: int, steps: int = 300) -> tuple:
    """(model, tokenizer): MiniLM + a linear head on its pooled [CLS] output, trained with the body frozen."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the head is new on purpose: no "newly initialized" report
    classes = sorted({r["label"] for r in train})
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(
        str(base), num_labels=len(classes), id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)}, local_files_only=True).eval()
    limit = model.config.max_position_embeddings
    with torch.no_grad():  # the frozen body's pooled output, computed once
        pooled = torch.cat([model.bert(**tokenizer([r["text"] for r in train[i : i + 64]], padding=True,
                                                   truncation=True, max_length=limit, return_tensors="pt")
                                       ).pooler_output for i in range(0, len(train), 64)])
    target = torch.tensor([classes.index(r["label"]) for r in train])
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):  # full-batch steps on the head only
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.classifier(pooled), target).backward()
        optimizer.step()
    return model, tokenizer


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--base", type=Path, default=None, help="BERT folder (default: the packaged MiniLM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=None, help="use the first N texts of each class")
    args = parser.parse_args(argv)
    from metriclearn.sentence import default_model_path

    parts = split(read_jsonl(args.data, args.per_class), args.seed)
    model, tokenizer = build_classifier(args.base or default_model_path(), parts["train"], args.seed)
    model.save_pretrained(args.out / "classifier")
    tokenizer.save_pretrained(args.out / "classifier")
    for name, rows in parts.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    command = [sys.executable, "-m", "metriclearn", "--quiet", "second-opinion", "--model", str(args.out / "classifier"),
               "--cache", str(args.out / "train.jsonl"), "--tune-data", str(args.out / "val.jsonl"),
               "--data", str(args.out / "test.jsonl"), "--audit", str(args.out / "audit.jsonl"),
               "--out", str(args.out / "proba.npy")]
    print("$ metriclearn " + " ".join(command[3:]))
    stdout = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(stdout, end="")
    return stdout


if __name__ == "__main__":
    main()
