"""metriclearn.training: the trainer, its callbacks, objectives, configuration and run directories.

See DESIGN.md: ``Trainer(model, objective, optimizer, ...)``, ``.fit(train, val=None, epochs=...)``,
``.embed(data)``; ``Objective`` (weighted sum / alternating steps / PCGrad); ``load_run`` and
``embed_from_run`` for trained run directories.
"""

from __future__ import annotations

from metriclearn.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    HealthMonitor,
    LambdaCallback,
    ModelCheckpoint,
    TensorBoardLogger,
)
from metriclearn.training.config import TrainConfig, parse_loss_term
from metriclearn.training.objectives import Objective, build_loss, build_objective, expected_initial_loss, pcgrad
from metriclearn.training.run import (
    RunEmbeddings,
    TrainedRun,
    embed_from_run,
    evaluate_embeddings,
    load_run,
    train_run,
)
from metriclearn.training import distributed
from metriclearn.training.resume import resume_config, run_state
from metriclearn.training.rng import seed_everything
from metriclearn.training.trainer import Trainer
from metriclearn._device import resolve_device

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "HealthMonitor",
    "LambdaCallback",
    "ModelCheckpoint",
    "RunEmbeddings",
    "Objective",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainedRun",
    "Trainer",
    "build_loss",
    "distributed",
    "build_objective",
    "embed_from_run",
    "evaluate_embeddings",
    "expected_initial_loss",
    "load_run",
    "parse_loss_term",
    "pcgrad",
    "resolve_device",
    "resume_config",
    "run_state",
    "seed_everything",
    "train_run",
]
