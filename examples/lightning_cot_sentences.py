"""COT in PyTorch Lightning: a sentence classifier on frozen MiniLM, then metriclearn's cache second opinion.

1. ``MetricLearningModule`` with a linear head on the frozen all-MiniLM-L6-v2 sentence embedding, trained with
   complement-objective training (Chen et al. 2019): per batch a cross-entropy step, then a complement-entropy
   step (``combine="alternate"``, Lightning manual optimisation), OneCycle stepped per batch.
2. ``export_run`` turns the Lightning checkpoint into a metriclearn run directory.
3. ``metriclearn second-opinion --model RUN --cache train.jsonl --tune-data val.jsonl --data test.jsonl``: the
   run's own features of the training texts form the cache; θ, λ and the layer are chosen on val.

Data: Debian's fortune cookies (``examples/data/fortunes/``), stratified 50/20/30 % train/val/test.
Run: ``python examples/lightning_cot_sentences.py --out runs/cot [--epochs 10] [--per-class N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from metriclearn.lightning import MetricLearningModule, RetrievalValidation, balanced_loader, export_run
from metriclearn.training import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from second_opinion_huggingface import DATA, read_jsonl, split  # noqa: E402


def texts_and_codes(rows: list[dict], classes: list[str]) -> tuple[list[str], np.ndarray]:
    return [r["text"] for r in rows], np.array([classes.index(r["label"]) for r in rows])


def train(config: TrainConfig, parts: dict[str, list[dict]], out: Path, epochs: int) -> Path:
    """Fit the module on train (validated on val every epoch), save a Lightning checkpoint, export the run."""
    classes = sorted({r["label"] for r in parts["train"]})
    (X, y), (Xv, yv) = texts_and_codes(parts["train"], classes), texts_and_codes(parts["val"], classes)
    torch.manual_seed(config.seed)
    module = MetricLearningModule.from_config(config, (), len(classes), classes=classes)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[RetrievalValidation(Xv, yv, metric="cosine")])
    trainer.fit(module, balanced_loader(X, y, config.batch_size, config.samples_per_class, config.seed))
    print(f"val MAP@R {float(trainer.callback_metrics['val_map_at_r']):.4f}, "
          f"P@1 {float(trainer.callback_metrics['val_precision_at_1']):.4f}")
    trainer.save_checkpoint(out / "module.ckpt")
    return export_run(out / "module.ckpt", out / "run", overwrite=True)


def second_opinion(run: Path, parts: dict[str, list[dict]], out: Path) -> str:
    """``metriclearn second-opinion`` on the exported run (the CLI, as a user would type it)."""
    for name, rows in parts.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    command = [sys.executable, "-m", "metriclearn", "--quiet", "second-opinion", "--model", str(run),
               "--cache", str(out / "train.jsonl"), "--tune-data", str(out / "val.jsonl"),
               "--data", str(out / "test.jsonl"), "--out", str(out / "proba.npy")]
    print("$ metriclearn " + " ".join(command[3:]))
    stdout = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(stdout, end="")
    return stdout


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder", default="sentence", help="sentence[:DIR] (default: the packaged MiniLM)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=None, help="use the first N texts of each class")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = split(read_jsonl(DATA, args.per_class), args.seed)
    config = TrainConfig(encoder=args.encoder, embedding_dim=128, loss=["softmax", "complement"],
                         combine="alternate", batch_size=48, samples_per_class=4, seed=args.seed)
    return second_opinion(train(config, parts, args.out, args.epochs), parts, args.out)


if __name__ == "__main__":
    main()
