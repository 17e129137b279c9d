"""``MetricLearningModule``: an encoder trained with a metriclearn objective, as a LightningModule.

One training step is the step of :class:`metriclearn.training.Trainer` (same objective, optimiser, schedule and
defaults, all from :class:`~metriclearn.training.TrainConfig`):

* ``combine="sum"``: Lightning's automatic optimisation of ``L = Σ_t w_t · L_t`` (gradient clipping at
  ``grad_clip`` unless the Lightning ``Trainer`` sets ``gradient_clip_val``);
* ``combine="alternate"``: manual optimisation, one optimiser step per term on the same batch, each with a
  fresh forward pass — COT (Chen et al. 2019, "Complement Objective Training"): a cross-entropy step, then
  a complement-entropy step;
* ``combine="pcgrad"``: manual optimisation with gradient surgery (Yu et al. 2020) over the terms' gradients.

Schedules ``onecycle`` and ``cosine`` step once per batch over ``trainer.estimated_stepping_batches``,
``plateau`` once per epoch on ``val_<monitor>`` (logged by :class:`~metriclearn.lightning.RetrievalValidation`).

Under ``strategy="ddp"`` every rank embeds its shard of the class-balanced batch
(:class:`~metriclearn.lightning.DistributedClassBalancedSampler`) and the losses see the global batch, gathered
with gradients (:func:`metriclearn.training.distributed.gather_batch`): rank r receives W · ∂L/∂e_r and DDP's
mean over ranks gives ∂L/∂θ of one process on the whole batch. The gathered batch is the same on every rank,
so the cache of ``CacheLoss`` and the EMA centroids of ``PrototypeLoss`` stay identical across ranks, as in
metriclearn's own torchrun path. Manual steps average their gradients over the ranks themselves (PCGrad
before the projections), so terms that leave parameters unused need no ``find_unused_parameters``.

Example
-------
>>> import lightning as L, numpy as np
>>> from metriclearn.lightning import balanced_loader
>>> X = np.random.default_rng(0).normal(size=(90, 8)).astype(np.float32); y = np.arange(90) % 3
>>> module = MetricLearningModule.from_config(TrainConfig(embedding_dim=4), input_shape=(8,), num_classes=3)
>>> L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
...           enable_model_summary=False).fit(module, balanced_loader(X, y, batch_size=32, samples_per_class=4))
>>> module.embed(X).shape
(90, 4)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_positive_float
from metriclearn._embedding import embed_array
from metriclearn.training import distributed as dist_utils
from metriclearn.training.config import TrainConfig
from metriclearn.training.objectives import Objective, build_objective
from metriclearn.training.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from metriclearn.training.trainer import prepare_fresh_run

CHECKPOINT_KEY = "metriclearn"  # where the module keeps what export_run needs inside a Lightning checkpoint
CHECKPOINT_FORMAT = 1
_D = TrainConfig  # the dataclass's field defaults are the defaults


class MetricLearningModule(L.LightningModule):
    """Train ``encoder`` (inputs → embeddings (B, D)) with ``objective`` (from ``build_objective``).

    Parameters
    ----------
    encoder:
        Any ``nn.Module``; one from :func:`metriclearn.encoders.build_encoder` can also be exported as a run
        directory (:func:`~metriclearn.lightning.export_run`).
    objective:
        A :class:`~metriclearn.training.Objective`; its parameters (heads, learned centroids) are trained too and
        its buffers (cache, EMA centroids) are saved in Lightning checkpoints.
    optimizer, lr, weight_decay, scheduler, grad_clip, monitor:
        As :class:`~metriclearn.training.TrainConfig` (same defaults).
    classes:
        Label values in code order (written to ``classes.json`` by ``export_run``; default ``0 .. K-1``).
    config:
        The :class:`TrainConfig` the module was built from (:meth:`from_config`), kept for ``export_run``.

    Batches are ``(inputs, labels)`` or ``(inputs, labels, ids)`` (:func:`~metriclearn.lightning.balanced_loader`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        objective: Objective,
        *,
        optimizer: str = _D.optimizer,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        scheduler: str = _D.scheduler,
        grad_clip: float = _D.grad_clip,
        monitor: str = _D.monitor,
        classes: Sequence[Any] | None = None,
        config: TrainConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a metriclearn.training.Objective, got {type(objective).__name__}")
        self.encoder, self.objective = encoder, objective
        self.optimizer_name = check_choice(optimizer, OPTIMIZERS, "optimizer")
        self.scheduler_name = check_choice(scheduler, SCHEDULERS, "scheduler")
        self.lr = check_positive_float(lr, "lr")
        self.weight_decay = check_positive_float(weight_decay, "weight_decay", allow_zero=True)
        self.grad_clip = check_positive_float(grad_clip, "grad_clip", allow_zero=True)
        self.monitor = monitor
        self.classes = None if classes is None else list(classes)
        self.config = config
        self.automatic_optimization = objective.combine == "sum"
        self.prepared = False  # input standardisation fitted, centroids initialised (saved in checkpoints)
        self.last_logs: dict[str, float] = {}  # the last batch's loss, term losses, lr, grad_norm
        self.batches_done = 0  # batches trained (Lightning's global_step counts optimiser steps)
        self._epoch_logs: dict[str, list[float]] = {}  # this epoch's per-batch logs (their means are logged)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: TrainConfig, input_shape: Sequence[int], num_classes: int,
                    classes: Sequence[Any] | None = None) -> MetricLearningModule:
        """The encoder, objective and optimiser settings of ``config`` (what ``metriclearn train`` would train)."""
        from metriclearn.training.run import build_model

        config.validate()
        model = build_model(config, tuple(input_shape))  # then the objective: the order metriclearn train uses
        objective = build_objective(config.terms(), config.embedding_dim, num_classes, config.combine,
                                    config.loss_options)
        return cls(model, objective, optimizer=config.optimizer, lr=config.lr,
                   weight_decay=config.weight_decay, scheduler=config.scheduler, grad_clip=config.grad_clip,
                   monitor=config.monitor, classes=list(range(num_classes)) if classes is None else classes,
                   config=config)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], **changes: Any) -> MetricLearningModule:
        """A trained metriclearn run directory as a module: its encoder, objective (and head), settings.

        ``changes`` override fields of the run's configuration (e.g. ``lr=1e-4``, ``scheduler="none"``) for
        further training.
        """
        from metriclearn.runs import load_run
        from metriclearn.training.run import classification_head

        run = load_run(run_dir)
        config = TrainConfig.from_dict({k: v for k, v in run.config.items() if k in TrainConfig.keys()})  # noqa: SIM118 - a classmethod, not a dict
        config = config.replace(**changes) if changes else config
        objective = build_objective(config.terms(), config.embedding_dim, len(run.classes), config.combine,
                                    config.loss_options)
        payload = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
        head = classification_head(objective)
        if head is not None and "head" in payload:
            head.load_state_dict(payload["head"])
        module = cls(run.model.train(), objective, optimizer=config.optimizer, lr=config.lr,
                     weight_decay=config.weight_decay, scheduler=config.scheduler, grad_clip=config.grad_clip,
                     monitor=config.monitor, classes=run.classes, config=config)
        module.prepared = True  # the run's standardisation and weights are trained already
        return module

    # ------------------------------------------------------------------ inference
    def forward(self, x: Any) -> Tensor:
        """Embeddings (B, D) of a batch of inputs."""
        return self.encoder(x)

    def embed(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Embeddings (n, D) float32 of ``X`` (array, tensor or list of texts), in eval mode."""
        return embed_array(self.encoder, X, batch_size, self.device, None)

    # ------------------------------------------------------------------ training
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the encoder, then the objective (the order metriclearn's trainer uses)."""
        return [p for p in [*self.encoder.parameters(), *self.objective.parameters()] if p.requires_grad]

    def setup(self, stage: str) -> None:
        if stage == "fit" and dist_utils.world_size() > 1:
            dist_utils.convert_batchnorm(self.encoder)  # normalise the global batch, as one process would

    def prepare(self, X: Any, y: Any) -> None:
        """Fresh run: fit the encoder's input standardisation on ``X`` and initialise the objective's centroids.

        Called by :meth:`on_train_start` with the training loader's data when it is an
        :class:`~metriclearn.lightning.IndexedDataset` (as metriclearn's trainer does before its first step).
        """
        labels = torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device)
        prepare_fresh_run(self.encoder, self.objective, X, labels, self.embed, self.device)
        self.prepared = True

    def on_train_start(self) -> None:
        from metriclearn.lightning.sampler import IndexedDataset

        loader = self.trainer.train_dataloader
        data = getattr(loader, "dataset", None)
        if isinstance(data, IndexedDataset):
            precompute = getattr(self.encoder, "precompute", None)
            if callable(precompute) and not isinstance(data.X, (np.ndarray, Tensor)):
                precompute(data.X)  # a frozen text encoder caches its transformer outputs once
            if not self.prepared:
                self.prepare(data.X, data.y)
        dist_utils.broadcast_module(self.objective)  # heads, centroids, caches start as rank 0's

    def _losses(self, x: Any, y: Tensor, ids: Tensor | None, names: Sequence[str]) -> tuple[dict[str, Tensor], float]:
        embeddings = self.encoder(x)  # (b, D): this rank's shard
        embeddings, labels, ids, _ = dist_utils.gather_batch(embeddings, y, ids)  # (B, D) global batch, gradients kept
        losses = self.objective.term_losses(embeddings, labels, names, ids=ids)
        value = float(self.objective.total(losses).detach())
        if not math.isfinite(value):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise FloatingPointError(f"loss is {value} at epoch {self.current_epoch + 1}, batch "
                                     f"{self.batches_done + 1} (terms: {terms}); try a lower lr, gradient clipping, "
                                     f"or check the data")
        return losses, value

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, y, ids = _unpack_batch(batch)
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one optimizer
        logs: dict[str, float] = {"lr": float(optimizer.param_groups[0]["lr"])}  # the rate this batch's steps use
        self.last_logs = logs
        if self.automatic_optimization:
            losses, value = self._losses(x, y, ids, self.objective.names)
            logs.update(loss=value, **{name: float(v.detach()) for name, v in losses.items()})
            self.batches_done += 1
            return self.objective.total(losses)
        params = self.trainable_parameters()
        logs["loss"] = 0.0
        for group in self.objective.groups():
            optimizer.zero_grad(set_to_none=True)
            losses, value = self._losses(x, y, ids, group)
            surgery = self.objective.uses_surgery(group)
            # DDP's reducer is not armed here (no manual_backward): gradients are averaged over ranks by hand,
            # PCGrad's per task before the projections, the others after the backward pass
            self.objective.backward(losses, params, reduce=dist_utils.all_reduce_mean if surgery else None)
            if not surgery:
                _average_gradients(params)
            max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            optimizer.step()
            logs["loss"] += value
            logs.update({name: float(v.detach()) for name, v in losses.items()})
        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()  # type: ignore[union-attr]  # one scheduler (configure_optimizers), not a list
        self.batches_done += 1
        return None

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the global gradient norm at ``grad_clip`` (or the Lightning Trainer's value) and log it."""
        if gradient_clip_algorithm not in (None, "norm"):
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        limit = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        max_norm = limit if limit and limit > 0 else math.inf
        self.last_logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm))
        return None

    @staticmethod
    def _log_name(key: str) -> str:
        return key if key in ("lr", "grad_norm") else f"train_{key}"

    def on_train_epoch_start(self) -> None:
        self._epoch_logs = {}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning's self.log costs more than a small model's step: the step values go out every
        # log_every_n_steps batches, the epoch means once per epoch (from sums kept here)
        for key, value in self.last_logs.items():
            self._epoch_logs.setdefault(key, []).append(value)
        every = getattr(self.trainer, "log_every_n_steps", 50) or 50
        if self.batches_done % every == 0:
            self.log_dict({f"{self._log_name(k)}_step": v for k, v in self.last_logs.items()}, on_step=True,
                          on_epoch=False)

    def on_train_epoch_end(self) -> None:
        logs = {self._log_name(k): (v[-1] if k == "lr" else sum(v) / len(v))
                for k, v in self._epoch_logs.items() if v}
        if logs:
            self.log_dict(logs, on_step=False, on_epoch=True)
        scheduler = self.lr_schedulers()
        if not self.automatic_optimization and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            key = f"val_{self.monitor}" if f"val_{self.monitor}" in self.trainer.callback_metrics else "train_loss"
            scheduler.step(float(self.trainer.callback_metrics[key]))

    def configure_optimizers(self) -> Any:
        """``TrainConfig``'s optimiser (no decay on biases and norms) and schedule, per batch where it is one."""
        optimizer = build_optimizer(self.optimizer_name, self.trainable_parameters(), self.lr, self.weight_decay)
        if self.scheduler_name == "none":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(f"scheduler={self.scheduler_name!r} needs a known number of steps; give the Lightning "
                             f"Trainer max_epochs or max_steps (got {total})")
        mode = "min" if self.monitor == "loss" else "max"
        scheduler = build_scheduler(self.scheduler_name, optimizer, int(total), mode=mode)
        if self.scheduler_name == "plateau":
            monitor = "train_loss" if self.monitor == "loss" else f"val_{self.monitor}"
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def run_description(self) -> dict[str, Any] | None:
        """What ``export_run`` needs to write a run directory: the config, input shape and classes (``None``
        when the encoder was not built from a spec by :func:`metriclearn.encoders.build_encoder`)."""
        spec = getattr(self.encoder, "spec", None)
        if not isinstance(spec, str):
            return None
        base = self.config or TrainConfig()
        dim = getattr(self.encoder, "embedding_dim", None) or getattr(self.encoder, "out_features", None)
        config = base.replace(encoder=spec, embedding_dim=int(dim or base.embedding_dim),
                              normalize=bool(getattr(self.encoder, "normalize", base.normalize)),
                              loss=[f"{n}:{w:g}" for n, w in self.objective.weights.items()],
                              combine=self.objective.combine, optimizer=self.optimizer_name, lr=self.lr,
                              weight_decay=self.weight_decay, scheduler=self.scheduler_name, grad_clip=self.grad_clip)
        return {"config": config.to_dict(), "input_shape": [int(s) for s in getattr(self.encoder, "input_shape", ())],
                "classes": self.classes}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        try:
            run = self.run_description()
        except ValueError:  # terms outside metriclearn's registry: the checkpoint cannot become a run directory
            run = None
        checkpoint[CHECKPOINT_KEY] = {"format_version": CHECKPOINT_FORMAT, "run": run, "prepared": self.prepared,
                                      "batches_done": self.batches_done}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {})
        self.prepared = bool(saved.get("prepared", self.prepared))
        self.batches_done = int(saved.get("batches_done", self.batches_done))


def _unpack_batch(batch: Any) -> tuple[Any, Tensor, Tensor | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError(f"a batch must be (inputs, labels) or (inputs, labels, ids), got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    x, y = batch[0], torch.as_tensor(batch[1]).long()
    ids = torch.as_tensor(batch[2]).long() if len(batch) == 3 else None
    return x, y, ids


def _average_gradients(params: Sequence[Tensor]) -> None:
    """Replace every ``p.grad`` by its mean over the processes (nothing in a single process).

    A parameter no rank computed a gradient for (the head in a neighbourhood-only step) keeps ``grad=None``, so
    the optimiser skips it as it does in one process (a zero gradient would still move it by weight decay and
    momentum).
    """
    if dist_utils.world_size() == 1:
        return
    present = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)  # (P,)
    present = dist_utils.all_reduce_mean(present) > 0
    used = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
    if not used:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
    flat = dist_utils.all_reduce_mean(flat)
    offset = 0
    for p in used:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


__all__ = ["MetricLearningModule"]
