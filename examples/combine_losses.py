"""Combine losses and reuse a trained run directory: the COT recipe and PCGrad, side by side.

    python examples/combine_losses.py [--epochs 10] [--out runs/examples]

1. COT (Chen et al. 2019): a cross-entropy step, then a complement-entropy step on the same batch
   with the same optimiser (`combine="alternate"`).
2. Neighbourhood softmax + learned prototypes with conflicting gradients projected by PCGrad.
Each run is written like `metriclearn train` does; `embed_from_run` reloads it for new data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from metriclearn.runs import embed_from_run
from metriclearn.training import TrainConfig, train_run

RECIPES = {
    "cot": dict(loss=["softmax", "complement"], combine="alternate"),
    "pcgrad": dict(loss=["neighborhood", "prototype:0.5"], combine="pcgrad"),
}


def main(epochs: int = 10, out: str | None = None) -> dict:
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="metriclearn-examples-"))
    results = {}
    for name, recipe in RECIPES.items():
        config = TrainConfig(epochs=epochs, device="cpu", embedding_dim=32, **recipe)
        metrics = train_run(config, root / name, verbose=False)
        embeddings, labels, classes = embed_from_run(root / name, "digits")
        results[name] = metrics["retrieval"]["map_at_r"]
        print(f"{name:>7}: held-out MAP@R {results[name]:.3f}, 5-NN accuracy {metrics['knn_accuracy_k5']:.3f}; "
              f"re-embedded {embeddings.shape[0]} digits into {embeddings.shape[1]} dims ({len(classes)} classes)")
    print(f"runs in {root}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    main(args.epochs, args.out)
