"""Fit MetricLearningModule under Lightning's DDP strategy on CPU (gloo); each rank saves its final state.

Run by tests/lightning/test_lightning_ddp.py as ``python ddp_fit.py OUT DEVICES``; Lightning's launcher starts
the other ranks by running this script again. Two objectives are fitted one after the other (same processes).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's make_blobs

from conftest import make_blobs  # noqa: E402

from metriclearn.lightning import MetricLearningModule, balanced_loader  # noqa: E402
from metriclearn.training import TrainConfig  # noqa: E402

COUNTS = {0: 37, 1: 23, 2: 50, 3: 9, 4: 30}  # 149 samples: the last global batch (21) splits 11 / 10
CONFIGS = {
    "sum": TrainConfig(loss=["neighborhood", "cache:0.5", "prototype"], loss_options={"prototype": {"mode": "ema"}},
                       embedding_dim=6, batch_size=32, samples_per_class=4),
    "alternate": TrainConfig(loss=["neighborhood", "softmax"], combine="alternate", embedding_dim=6, batch_size=32,
                             samples_per_class=4),  # the neighbourhood step leaves the head unused
}


def fit(name: str, devices: int) -> dict[str, torch.Tensor]:
    """Train ``CONFIGS[name]`` for 2 epochs on ``devices`` CPU processes; the final weights and buffers."""
    X, labels = make_blobs(COUNTS, dim=8)
    y = labels.astype(np.int64)
    torch.manual_seed(0)
    module = MetricLearningModule.from_config(CONFIGS[name], (8,), len(COUNTS))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, balanced_loader(X, y, 32, 4))
    state = {f"encoder.{k}": v.clone() for k, v in module.encoder.state_dict().items()}
    state.update({f"objective.{k}": v.clone() for k, v in module.objective.state_dict().items()})
    state["batches_done"] = torch.tensor(module.batches_done)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return state


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    results = {name: fit(name, devices) for name in CONFIGS}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(results, out / f"devices{devices}_rank{rank}.pt")


if __name__ == "__main__":
    main()
