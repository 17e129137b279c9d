"""Issue #8 (a): a small ConvNet trained briefly on MNIST-5000 with softmax, then its own second opinion.

Per seed: stratified 60/20/20 train / val / test split; the ConvNet of ``examples/second_opinion_convnet.py``
trained with cross-entropy on train only; :class:`~metriclearn.pretrained.SecondOpinion` caches its features of
the training images and tunes θ, λ and the layer on val; test is used once. Also reported: the test accuracy each
candidate layer would have given at its own val-tuned θ, λ (``score_layers``; not used to choose).

Run: ``PYTHONPATH=. python benchmarks/bench_second_opinion_convnet.py [--seeds 5] [--epochs 1 3] [--json F]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import second_opinion_convnet as example  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--json")
    args = parser.parse_args()
    set_quiet(True)
    torch.set_num_threads(1)
    X, y = example.load_mnist()
    results = {}
    for epochs in args.epochs:
        rows = [example.run(X, y, seed, epochs) for seed in range(args.seeds)]
        results[epochs] = rows
        print(f"\nMNIST-5000, ConvNet, {epochs} epoch(s) of softmax training; 3000 / 1000 / 1000")
        layers = list(rows[0]["layers"])
        print("| seed | chosen layer | θ | λ | test acc model | test acc second opinion | gain (points) | "
              + " | ".join(f"test acc with `{k}`" for k in layers) + " |")
        print("|---" * (7 + len(layers)) + "|")
        for r in rows:
            gain = 100 * (r["test_acc_blend"] - r["test_acc_model"])
            print(f"| {r['seed']} | `{r['layer']}` | {r['theta']:g} | {r['lam']:g} | {r['test_acc_model']:.4f} | "
                  f"{r['test_acc_blend']:.4f} | {gain:+.1f} | "
                  + " | ".join(f"{r['layers'][k]['accuracy']:.4f}" for k in layers) + " |")
        gains = [100 * (r["test_acc_blend"] - r["test_acc_model"]) for r in rows]
        model = [r["test_acc_model"] for r in rows]
        blend = [r["test_acc_blend"] for r in rows]
        print(f"mean: model {statistics.mean(model):.4f} ± {statistics.pstdev(model):.4f} -> second opinion "
              f"{statistics.mean(blend):.4f} ± {statistics.pstdev(blend):.4f}; gain {statistics.mean(gains):+.2f} "
              f"points (min {min(gains):+.2f})")
    if args.json:
        write_json(args.json, {str(k): v for k, v in results.items()})


if __name__ == "__main__":
    main()
