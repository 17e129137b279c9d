"""Issue #8 (b) and (c) on a real text set: Debian's fortune cookies (examples/data/fortunes/), 12 classes.

(b) Per seed: stratified 50/20/30 train / val / test split; ``BertForSequenceClassification`` from the packaged
all-MiniLM-L6-v2 with its head trained on train (body frozen; ``examples/second_opinion_huggingface.py``);
:class:`~metriclearn.pretrained.SecondOpinion` caches the model's features of the training texts, tunes θ, λ and
the layer on val; test is used once. ``score_layers`` gives each candidate layer's test accuracy at its own
val-tuned θ, λ, to check the automatic choice against the best single layer.
(c) Same splits: 5-NN test accuracy of the raw MiniLM sentence embedding vs a neighbourhood-softmax head trained
on it (``examples/metric_head_fortunes.py``).

Run: ``PYTHONPATH=. python benchmarks/bench_second_opinion_text.py [--seeds 3] [--epochs 30] [--json F]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet
from metriclearn.encoders import SentenceEncoder
from metriclearn.pretrained import SecondOpinion
from metriclearn.sentence import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import metric_head_fortunes as metric_example  # noqa: E402
import second_opinion_huggingface as hf_example  # noqa: E402


def second_opinion(rows: list[dict], seed: int) -> dict:
    parts = hf_example.split(rows, seed)
    texts = {name: [r["text"] for r in part] for name, part in parts.items()}
    labels = {name: [r["label"] for r in part] for name, part in parts.items()}
    model, tokenizer = hf_example.build_classifier(default_model_path(), parts["train"], seed)
    opinion = SecondOpinion(model, tokenizer=tokenizer).fit(texts["train"], labels["train"])
    opinion.tune(texts["val"], labels["val"])
    p_model, _, p_blend, _ = opinion.opinions(texts["test"])
    truth = [opinion.classes_.index(label) for label in labels["test"]]
    accuracy = lambda p: float((p.argmax(1) == truth).mean())  # noqa: E731
    return {"seed": seed, "layer": opinion.layers_[0], "theta": opinion.theta_, "lam": opinion.lam_,
            "val": opinion.tuning_["layers"], "test_acc_model": accuracy(p_model),
            "test_acc_blend": accuracy(p_blend), "layers": opinion.score_layers(texts["test"], labels["test"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    set_quiet(True)
    torch.set_num_threads(1)
    rows = hf_example.read_jsonl(hf_example.DATA)
    b = [second_opinion(rows, seed) for seed in range(args.seeds)]
    layers = list(b[0]["layers"])
    print(f"(b) fortunes: {len(rows)} texts, 12 classes; MiniLM BertForSequenceClassification, head on [CLS] pooler")
    print("| seed | chosen layer | θ | λ | test acc model | test acc second opinion | gain (points) | "
          + " | ".join(f"`{k}`" for k in layers) + " | best single layer − chosen (points) |")
    print("|---" * (8 + len(layers)) + "|")
    for r in b:
        best = max(v["accuracy"] for v in r["layers"].values())
        print(f"| {r['seed']} | `{r['layer']}` | {r['theta']:g} | {r['lam']:g} | {r['test_acc_model']:.4f} | "
              f"{r['test_acc_blend']:.4f} | {100 * (r['test_acc_blend'] - r['test_acc_model']):+.2f} | "
              + " | ".join(f"{r['layers'][k]['accuracy']:.4f}" for k in layers)
              + f" | {100 * (best - r['test_acc_blend']):.2f} |")
    gains = [100 * (r["test_acc_blend"] - r["test_acc_model"]) for r in b]
    print(f"gain: mean {statistics.mean(gains):+.2f} points, min {min(gains):+.2f}")

    encoder = SentenceEncoder(embedding_dim=128)  # one frozen transformer and text cache for every seed
    c = [metric_example.run(rows, seed, args.epochs, encoder) for seed in range(args.seeds)]
    print(f"\n(c) 5-NN test accuracy (cosine, test vs train), head 384 -> 128 trained {args.epochs} epochs")
    print("| seed | raw MiniLM | metric-learning head | gain (points) |\n|---|---|---|---|")
    for r in c:
        print(f"| {r['seed']} | {r['knn_raw_minilm']:.4f} | {r['knn_metric_head']:.4f} | "
              f"{100 * (r['knn_metric_head'] - r['knn_raw_minilm']):+.2f} |")
    if args.json:
        write_json(args.json, {"b": b, "c": c})


if __name__ == "__main__":
    main()
