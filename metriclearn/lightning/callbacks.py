"""Lightning callbacks: retrieval validation, the end-of-fit report and movie, and the trainer's health checks.

Each keeps its state through Lightning checkpoints (``state_dict`` / ``load_state_dict`` under its
``state_key``), so a run resumed with ``Trainer.fit(..., ckpt_path=...)`` continues their histories. Under DDP
rank 0 embeds and measures, every rank logs rank 0's numbers (the same decisions everywhere), and only rank 0
writes files.

* :class:`RetrievalValidation` — P@1, R-precision, MAP@R and kNN accuracy of held-out data
  (:func:`metriclearn.metrics.retrieval_metrics`, Musgrave et al. 2020), logged as ``val_<name>`` to every logger
  (and so visible to Lightning's ``ModelCheckpoint`` / ``EarlyStopping``).
* :class:`MetricLearningReport` — a :class:`~metriclearn.reports.CentroidMovie` snapshot every epoch, and at fit
  end the report and explorer of :func:`metriclearn.reports.write_report` plus the movie.
* :class:`HealthMonitorCallback` — :class:`metriclearn.training.HealthMonitor`'s checks (first-batch loss
  against chance, dead ReLUs, gradient and weight norms) on a Lightning run.

Example
-------
>>> import numpy as np
>>> X, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
>>> RetrievalValidation(X, y).state_key
"RetrievalValidation{'prefix': 'val_'}"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from metriclearn._checks import check_positive_int
from metriclearn.training import distributed as dist_utils
from metriclearn.training.callbacks import HealthMonitor


def _embed(module: L.LightningModule, X: Any) -> np.ndarray:
    embed = getattr(module, "embed", None)
    if not callable(embed):
        raise TypeError(f"the module must have an embed(X) method (MetricLearningModule has), got "
                        f"{type(module).__name__}")
    return embed(X)


class RetrievalValidation(L.Callback):
    """Log ``val_precision_at_1``, ``val_r_precision``, ``val_map_at_r`` and ``val_knn_accuracy`` every epoch.

    Parameters
    ----------
    X, y:
        Held-out inputs (array or texts) and integer labels; leave-one-out retrieval within them, or against
        ``reference`` = ``(X_ref, y_ref)`` when given.
    every_n_epochs:
        Measure after every that many epochs (and always after the last one).
    metric:
        ``"l2"`` (on the raw vectors, as pytorch-metric-learning's AccuracyCalculator) or ``"cosine"``.
    prefix:
        Prepended to every logged name.

    ``history`` (one dict per measured epoch) is checkpointed.
    """

    def __init__(self, X: Any, y: Any, reference: tuple[Any, Any] | None = None, every_n_epochs: int = 1,
                 metric: str = "l2", prefix: str = "val_") -> None:
        self.X, self.y = X, np.asarray(y)
        if len(self.X) != len(self.y):
            raise ValueError(f"X has {len(self.X)} samples but y has {len(self.y)} labels")
        self.reference = reference
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.metric, self.prefix = metric, prefix
        self.history: list[dict[str, float]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def measure(self, module: L.LightningModule) -> dict[str, float]:
        """The retrieval metrics of the module's current embeddings of ``X``."""
        from metriclearn.metrics import retrieval_metrics

        ref_x, ref_y = (None, None) if self.reference is None else (_embed(module, self.reference[0]),
                                                                   np.asarray(self.reference[1]))
        metrics = retrieval_metrics(_embed(module, self.X), self.y, ref_x, ref_y, metric=self.metric)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.integer, np.floating))}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        metrics = dist_utils.decide_on_main(self.measure, pl_module)  # rank 0 measures; all ranks log its numbers
        self.history.append({"epoch": epoch, **metrics})
        for name, value in metrics.items():
            pl_module.log(f"{self.prefix}{name}", value, on_step=False, on_epoch=True, prog_bar=name == "map_at_r")

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]


class MetricLearningReport(L.Callback):
    """At fit end write the report of ``(X, y)`` and the centroid movie of the epochs into ``out_dir``.

    ``out_dir`` receives ``report.html``, ``explorer.html``, ``metrics.json`` and the projection PNGs
    (:func:`metriclearn.reports.write_report`),
    and ``centroids.gif`` / ``centroids.png`` (:class:`~metriclearn.reports.CentroidMovie`, one snapshot per epoch,
    checkpointed). ``classes``: label names in code order; ``report_options``: further keyword arguments of
    ``write_report`` (``tsne_iter``, ``max_points``, ``metric`` ...). ``out_dir`` must be new, empty or a
    metriclearn report (``overwrite=True`` replaces one; a run resumed from a checkpoint replaces its own); this
    is checked when the fit starts, before any training.
    """

    def __init__(self, X: Any, y: Any, out_dir: str | os.PathLike[str], classes: list[Any] | None = None,
                 method: str = "tsne", movie: bool = True, seed: int = 0,
                 report_options: dict[str, Any] | None = None, overwrite: bool = False) -> None:
        from metriclearn.reports import CentroidMovie

        self.X, self.y = X, np.asarray(y)
        if len(self.X) != len(self.y):
            raise ValueError(f"X has {len(self.X)} samples but y has {len(self.y)} labels")
        self.out_dir, self.classes, self.method, self.seed = Path(out_dir), classes, method, seed
        self.movie = CentroidMovie(classes=classes, seed=seed) if movie else None
        self.report_options = dict(report_options or {})
        self.overwrite = bool(overwrite)
        self.written: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(out_dir=str(self.out_dir))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from metriclearn._outdir import check_output_dir

        if trainer.is_global_zero:  # refuse a folder it may not write before the training, not after
            self.overwrite = self.overwrite or trainer.ckpt_path is not None
            check_output_dir(self.out_dir, "report", overwrite=self.overwrite, hint="overwrite=True")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.movie is not None and trainer.is_global_zero:
            self.movie.add(trainer.current_epoch + 1, _embed(pl_module, self.X), self.y)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from metriclearn._outdir import claim_output_dir, remove_recorded
        from metriclearn.reports import write_report

        embeddings = _embed(pl_module, self.X)
        with claim_output_dir(self.out_dir, "report", overwrite=self.overwrite, hint="overwrite=True") as out:
            if self.overwrite:  # what an earlier report wrote there (its marker's record); the user's files stay
                remove_recorded(out)
            self.written = write_report(embeddings, self.y, out, method=self.method, classes=self.classes,
                                        seed=self.seed, **self.report_options)
            if self.movie is not None and len(self.movie):
                self.movie.save(out)

    def state_dict(self) -> dict[str, Any]:
        return {"movie": self.movie.state_dict() if self.movie is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.movie is not None and state_dict.get("movie") is not None:
            self.movie.load_state_dict(state_dict["movie"])


class _TrainerView:
    """What :class:`~metriclearn.training.HealthMonitor` reads of metriclearn's trainer, from a Lightning run."""

    def __init__(self, trainer: L.Trainer, module: Any, batch_size: int, samples_per_class: int, num_classes: int,
                 num_samples: int) -> None:
        self.trainer, self.module = trainer, module
        self.batch_size, self.samples_per_class = batch_size, samples_per_class
        self.num_classes, self.num_samples = num_classes, num_samples

    @property
    def model(self) -> Any:
        return getattr(self.module, "encoder", self.module)

    @property
    def objective(self) -> Any:
        return self.module.objective

    @property
    def global_step(self) -> int:
        return int(getattr(self.module, "batches_done", self.trainer.global_step))

    @property
    def is_main_process(self) -> bool:
        return bool(self.trainer.is_global_zero)

    def parameters(self) -> list[Any]:
        return list(self.module.trainable_parameters())

    def log(self, message: str) -> None:
        if self.trainer.is_global_zero:
            print(message, file=sys.stderr)  # noqa: T201 - the module's log line, on rank 0 only, to stderr


class HealthMonitorCallback(L.Callback):
    """metriclearn's training-health checks (:class:`~metriclearn.training.HealthMonitor`) on a Lightning run.

    Warns when the first batch's loss of a term is far above its chance level for an untrained model, or when
    the gradient norm is NaN/inf or above ``max_grad_norm``; logs ``health_grad_norm`` (epoch mean),
    ``health_weight_norm`` and ``health_dead_relu`` (share of ReLU units silent on a whole batch) every epoch.
    The first-batch losses it compared are checkpointed. Needs a :class:`MetricLearningModule`.
    """

    def __init__(self, every: int = 10, tolerance: float = 1.0, max_grad_norm: float = 1e3) -> None:
        self.monitor = HealthMonitor(every=every, tolerance=tolerance, max_grad_norm=max_grad_norm)
        self._view: _TrainerView | None = None

    @property
    def initial(self) -> dict[str, tuple[float, float | None]]:
        """``{term: (first-batch loss, chance level or None)}``."""
        return self.monitor.initial

    def _view_of(self, trainer: L.Trainer, module: Any, batch: Any) -> _TrainerView:
        if self._view is None:
            sampler = getattr(trainer.train_dataloader, "sampler", None)
            dataset = getattr(trainer.train_dataloader, "dataset", None)
            labels = np.asarray(batch[1].cpu() if hasattr(batch[1], "cpu") else batch[1])
            batch_size = getattr(sampler, "batch_size", None) or len(labels) * trainer.world_size
            per_class = getattr(sampler, "samples_per_class", None) or int(np.bincount(labels).max(initial=1))
            y = getattr(dataset, "y", labels)
            self._view = _TrainerView(trainer, module, int(batch_size), int(per_class), int(np.max(y)) + 1, len(y))
        return self._view

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._view = None
        view = _TrainerView(trainer, pl_module, 0, 0, 0, 0)
        self.monitor.on_fit_start(view)  # type: ignore[arg-type]  # a duck-typed view of the trainer; hooks on ReLUs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor.on_epoch_start(None, trainer.current_epoch)  # type: ignore[arg-type]  # the hook reads no trainer

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        logs = dict(getattr(pl_module, "last_logs", {}))
        view = self._view_of(trainer, pl_module, batch)
        self.monitor.on_batch_end(view, batch_idx, logs)  # type: ignore[arg-type]  # a duck-typed view of the trainer

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logs: dict[str, float] = {}
        self.monitor.on_epoch_end(None, trainer.current_epoch, logs)  # type: ignore[arg-type]  # the hook reads no trainer
        for key, value in logs.items():
            pl_module.log(f"health_{key}", float(value), on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor.on_fit_end(None)  # type: ignore[arg-type]  # the hook reads no trainer

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.monitor.on_fit_end(None)  # type: ignore[arg-type]  # reads no trainer; removes the forward hooks

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict)
