"""metriclearn for PyTorch Lightning users: a LightningModule, callbacks and run-directory interchange.

Needs the ``lightning`` extra (``pip install 'metriclearn[lightning]'``); importing this package without it
raises one ``ImportError`` line saying so. Guide: ``docs/lightning.md``.

* :class:`MetricLearningModule` — an encoder trained with a metriclearn :class:`~metriclearn.training.Objective`
  (weighted sum, PCGrad, or COT's alternating steps by manual optimisation), with ``TrainConfig``'s optimiser
  and schedule (OneCycle stepped per batch); under ``strategy="ddp"`` the losses see the global batch.
* :class:`DistributedClassBalancedSampler` and :func:`balanced_loader` — class-balanced batches with
  ``DistributedSampler`` semantics (each rank gets its shard of every global batch).
* Callbacks :class:`RetrievalValidation`, :class:`MetricLearningReport`, :class:`HealthMonitorCallback`.
* :func:`export_run` (a Lightning checkpoint → a metriclearn run directory) and
  :meth:`MetricLearningModule.from_run` (a run directory → the module).

Example
-------
>>> from metriclearn.lightning import MetricLearningModule  # doctest: +SKIP
"""

from __future__ import annotations

try:
    import lightning  # noqa: F401 - only whether it imports
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without lightning
    raise ImportError(
        "metriclearn.lightning needs PyTorch Lightning, which is not installed: "
        "pip install 'metriclearn[lightning]' (or pip install 'lightning>=2.2')"
    ) from exc

from metriclearn.lightning.callbacks import HealthMonitorCallback, MetricLearningReport, RetrievalValidation
from metriclearn.lightning.interchange import export_run
from metriclearn.lightning.module import MetricLearningModule
from metriclearn.lightning.sampler import DistributedClassBalancedSampler, IndexedDataset, balanced_loader

__all__ = [
    "DistributedClassBalancedSampler",
    "HealthMonitorCallback",
    "IndexedDataset",
    "MetricLearningModule",
    "MetricLearningReport",
    "RetrievalValidation",
    "balanced_loader",
    "export_run",
]
