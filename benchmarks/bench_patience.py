"""Early stopping for small data: which default ``--patience`` loses nothing against training every epoch?

Trains the default objective for ``--epochs`` epochs without early stopping on small tabular data
(scikit-learn's breast-cancer CSV, 569 rows, 2 classes; digits, 1 797 rows, 10 classes; wine, 178 rows,
3 classes), several seeds each, and reads every epoch's validation MAP@R from ``log.csv``. Early stopping
with patience p is then replayed on those logs (it changes nothing before it stops): it stops at the first
epoch that is p epochs past the best so far, and with ``--restore-best`` keeps the best epoch up to there.
Reported per p: the MAP@R kept against the best of all epochs (mean and worst shortfall), against the last
epoch (what ``--no-restore-best`` without early stopping keeps), and the share of epochs saved.

    python benchmarks/bench_patience.py --epochs 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

PATIENCES = (0, 2, 3, 5, 8, 10)


def datasets(root: Path) -> dict[str, str]:
    from sklearn.datasets import load_breast_cancer, load_wine

    paths = {"digits": "digits"}
    for name, loader in (("breast-cancer", load_breast_cancer), ("wine", load_wine)):
        bunch = loader()
        path = root / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([f"f{i}" for i in range(bunch.data.shape[1])] + ["label"])
            for row, label in zip(bunch.data, bunch.target):
                writer.writerow([*row.tolist(), int(label)])
        paths[name] = str(path)
    return paths


def curve(data: str, seed: int, epochs: int, out: Path) -> list[float]:
    from metriclearn.training import TrainConfig, train_run

    config = TrainConfig(data=data, epochs=epochs, seed=seed, patience=0, threads=1, restore_best=False)
    train_run(config, out, verbose=False)
    with open(out / "log.csv", newline="") as fh:
        return [float(row["val_map_at_r"]) for row in csv.DictReader(fh)]


def replay(values: list[float], patience: int) -> tuple[float, int]:
    """(MAP@R kept with restore-best, epochs run) under early stopping with ``patience`` (0: off)."""
    best, best_at = float("-inf"), 0
    for epoch, value in enumerate(values):
        if value > best:
            best, best_at = value, epoch
        if patience and epoch - best_at >= patience:
            return best, epoch + 1
    return best, len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        curves = {}
        for name, data in datasets(root).items():
            for seed in args.seeds:
                curves[f"{name}/seed{seed}"] = values = curve(data, seed, args.epochs, root / f"{name}-{seed}")
                print(f"{name} seed {seed}: best {max(values):.4f} at epoch {values.index(max(values)) + 1}, "
                      f"last {values[-1]:.4f}", flush=True)
    print(f"{'patience':>8} {'mean shortfall':>15} {'worst':>8} {'vs last epoch':>14} {'epochs saved':>13}")
    summary = {}
    for p in PATIENCES:
        short, gain, saved = [], [], []
        for values in curves.values():
            kept, ran = replay(values, p)
            short.append(max(values) - kept)
            gain.append(kept - values[-1])
            saved.append(1 - ran / len(values))
        n = len(curves)
        summary[p] = {"mean_shortfall": sum(short) / n, "worst_shortfall": max(short),
                      "mean_gain_vs_last": sum(gain) / n, "epochs_saved": sum(saved) / n}
        s = summary[p]
        print(f"{p if p else 'off':>8} {s['mean_shortfall']:15.4f} {s['worst_shortfall']:8.4f} "
              f"{s['mean_gain_vs_last']:+14.4f} {s['epochs_saved']:13.1%}")
    print(json.dumps({"curves": curves, "summary": summary}))


if __name__ == "__main__":
    main()
