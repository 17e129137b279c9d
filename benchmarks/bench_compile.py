"""``--compile`` on CPU: the first epoch (compilation included) and a whole run, eager vs ``torch.compile``.

The protocol of ``bench_mnist.py`` (MNIST-5000 split, MLP 784-256-64, batch 128, the default objective), through
metriclearn's ``Trainer`` as ``metriclearn train`` builds it, ``compile=False`` then ``compile=True``, rounds
interleaved. Reported per round: the wall time of the first epoch's batch loop (for the compiled side it holds
Inductor's code generation and C++ build for the batch shapes seen: 128 and the last batch's 32), the steady
epochs' mean, and the whole 15-epoch run. A fresh process per side is not needed: Inductor's on-disk cache is
pointed at a new temporary directory for every compiled run, so each one compiles from scratch.

Run: ``python benchmarks/bench_compile.py [--threads 1] [--rounds 2] [--epochs 15]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import BATCH, EMB, load_split, score


def run(Xtr: Any, ytr: Any, Xte: Any, yte: Any, compile: bool, epochs: int) -> dict[str, float]:
    import torch._dynamo
    import torch._inductor.config

    from metriclearn.training import TrainConfig
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    torch._dynamo.reset()
    config = TrainConfig().replace(epochs=epochs, batch_size=BATCH, embedding_dim=EMB, encoder="mlp:256", device="cpu",
                                   seed=0, compile=compile)
    seed_everything(0)
    model = build_model(config, (784,))
    trainer = make_trainer(config, model, 10, verbose=False)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # no warm cache from an earlier round
        torch._inductor.config.fx_graph_cache = False
        trainer.fit((Xtr, ytr), None, epochs=epochs)
    seconds = [row["seconds"] for row in trainer.history]
    return {"first epoch s": seconds[0], "later epochs s (mean)": statistics.mean(seconds[1:]),
            f"{epochs} epochs s": sum(seconds), **score(trainer.embed(Xte), yte)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_split()
    rows: dict[str, list[dict[str, float]]] = {"eager": [], "torch.compile": []}
    for _ in range(args.rounds):
        rows["eager"].append(run(Xtr, ytr, Xte, yte, False, args.epochs))
        rows["torch.compile"].append(run(Xtr, ytr, Xte, yte, True, args.epochs))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    keys = list(rows["eager"][0])
    print("| side | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for side, runs in rows.items():
        print(f"| {side} | " + " | ".join(f"{statistics.median(r[k] for r in runs):.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
