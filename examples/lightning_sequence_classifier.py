"""A MiniLM sequence classifier fine-tuned in PyTorch Lightning with OneCycle per batch, then its second opinion.

1. ``MetricLearningModule`` over the all-MiniLM-L6-v2 transformer (fine-tuned: ``encoder_options.freeze =
   False``), a projection and a linear classification head trained with cross-entropy (``loss = ["softmax"]``):
   a sequence classifier. OneCycle (Smith & Topin 2019) warms the learning rate up and anneals it, stepped
   after every batch (the module's default schedule); the gradient norm is clipped at ``grad_clip``.
2. ``export_run`` writes the checkpoint as a metriclearn run directory (encoder + head).
3. ``metriclearn second-opinion --model RUN``: a cache of the classifier's own features of the training texts
   blends its kNN vote into the model's probabilities; θ, λ and the layer are chosen on val.

Data: Debian's fortune cookies (``examples/data/fortunes/``), stratified 50/20/30 % train/val/test.
Run: ``python examples/lightning_sequence_classifier.py --out runs/seq [--epochs 3] [--per-class 40]``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from metriclearn.lightning import HealthMonitorCallback, MetricLearningModule, balanced_loader, export_run
from metriclearn.training import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_cot_sentences import second_opinion, texts_and_codes  # noqa: E402
from second_opinion_huggingface import DATA, read_jsonl, split  # noqa: E402


def fine_tune(config: TrainConfig, train: list[dict], out: Path, epochs: int) -> Path:
    """Fine-tune the classifier on ``train``; save the Lightning checkpoint and export it as a run directory."""
    classes = sorted({r["label"] for r in train})
    X, y = texts_and_codes(train, classes)
    torch.manual_seed(config.seed)
    module = MetricLearningModule.from_config(config, (), len(classes), classes=classes)
    lrs = LearningRateMonitor(logging_interval="step")  # needs a logger: Lightning's CSV logger under out/
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=out, log_every_n_steps=1,
                        logger=CSVLogger(out, name="logs"), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, callbacks=[lrs, HealthMonitorCallback()])
    trainer.fit(module, balanced_loader(X, y, config.batch_size, config.samples_per_class, config.seed))
    print(f"{module.batches_done} OneCycle steps, last train loss {float(trainer.callback_metrics['train_loss']):.4f}")
    trainer.save_checkpoint(out / "module.ckpt")
    return export_run(out / "module.ckpt", out / "run", overwrite=True)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder", default="sentence", help="sentence[:DIR] (default: the packaged MiniLM)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4, help="OneCycle's peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=40, help="use the first N texts of each class")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = split(read_jsonl(DATA, args.per_class), args.seed)
    config = TrainConfig(encoder=args.encoder, encoder_options={"freeze": False, "max_length": 64},
                         embedding_dim=128, loss=["softmax"], lr=args.lr, scheduler="onecycle", batch_size=32,
                         samples_per_class=4, seed=args.seed)
    return second_opinion(fine_tune(config, parts["train"], args.out, args.epochs), parts, args.out)


if __name__ == "__main__":
    main()
