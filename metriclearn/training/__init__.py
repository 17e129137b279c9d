"""metriclearn.training: the trainer, its callbacks, objectives, configuration and run directories.

Guide: docs/training.md. ``Trainer(model, objective, optimizer, ...)``, ``.fit(train, val=None, epochs=...)``,
``.embed(data)``; ``Objective`` (weighted sum / alternating steps / PCGrad); ``train_run``. ``load_run`` and
``embed_from_run`` (trained run directories) live in :mod:`metriclearn.runs` and are re-exported here.
"""

from __future__ import annotations

from metriclearn._lazy import lazy_exports

# public name -> the module that defines it; imported on first use, so the CLI's --help needs no torch
_EXPORTS = {
    "Callback": "metriclearn.training.callbacks",
    "CSVLogger": "metriclearn.training.callbacks",
    "EarlyStopping": "metriclearn.training.callbacks",
    "HealthMonitor": "metriclearn.training.callbacks",
    "LambdaCallback": "metriclearn.training.callbacks",
    "ModelCheckpoint": "metriclearn.training.callbacks",
    "TensorBoardLogger": "metriclearn.training.callbacks",
    "TrainConfig": "metriclearn.training.config",
    "parse_loss_term": "metriclearn.losses.registry",
    "Objective": "metriclearn.training.objectives",
    "build_loss": "metriclearn.training.objectives",
    "build_objective": "metriclearn.training.objectives",
    "expected_initial_loss": "metriclearn.losses.registry",
    "pcgrad": "metriclearn.training.objectives",
    "RunEmbeddings": "metriclearn.runs",
    "TrainedRun": "metriclearn.runs",
    "embed_from_run": "metriclearn.runs",
    "evaluate_embeddings": "metriclearn.training.run",
    "load_run": "metriclearn.runs",
    "train_run": "metriclearn.training.run",
    "distributed": "metriclearn.training.distributed",
    "resume_config": "metriclearn.training.resume",
    "ResumePoint": "metriclearn.training.resume",
    "run_state": "metriclearn.training.resume",
    "seed_everything": "metriclearn.training.rng",
    "Trainer": "metriclearn.training.trainer",
    "resolve_device": "metriclearn._device",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
