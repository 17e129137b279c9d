"""The training loop: class-balanced batches, AdamW, per-batch LR schedules, AMP, exact resume.

The loop only moves data and gradients; logging, checkpoints, early stopping, health checks and report
snapshots are :mod:`~metriclearn.training.callbacks`. :meth:`Trainer.state_dict` holds everything a
run depends on — model, objective (cache buffers, EMA centroids, head), optimiser, scheduler, AMP
scaler, sampler, the torch / numpy / python RNG states, epoch, step, history and callback states — so
``fit(..., resume_from=checkpoint)`` continues a killed run to the same final weights (on CPU) as an
uninterrupted one. Checkpoints hold only tensors, numbers, strings, lists and dicts and load with
``torch.load(weights_only=True)``.

Example
-------
>>> import numpy as np, torch
>>> from metriclearn.training.objectives import Objective, lambda_loss
>>> X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
>>> y = np.repeat(np.arange(4), 10)
>>> model = torch.nn.Linear(5, 3)
>>> objective = Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())})
>>> trainer = Trainer(model, objective, batch_size=8, samples_per_class=2, device="cpu", verbose=False)
>>> history = trainer.fit((X, y), epochs=2)
>>> len(history), trainer.embed(X).shape
(2, (40, 3))
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_positive_float, check_positive_int
from metriclearn._device import resolve_device
from metriclearn._progress import progress
from metriclearn.training import distributed as dist_utils
from metriclearn.training.callbacks import Callback, Logs
from metriclearn.training.config import TrainConfig
from metriclearn.training.embedding import embed_array, to_device
from metriclearn.training.objectives import Objective
from metriclearn.training.optim import SCHEDULERS, build_optimizer, build_scheduler
from metriclearn.training.rng import rng_state, seed_everything, set_rng_state  # noqa: F401 (seed_everything: re-export)

CHECKPOINT_VERSION = 2  # 2: callback states keyed by Callback.state_key, should_stop, metadata
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]
_DEFAULTS = TrainConfig  # the dataclass's field defaults are the defaults (class attributes)


class Trainer:
    """Train an embedding model with an :class:`~metriclearn.training.objectives.Objective`.

    Parameters
    ----------
    model:
        Maps a batch of inputs to embeddings (B, D).
    objective:
        The loss terms and how they combine; its parameters (heads, learned centroids) are optimised too.
    optimizer:
        An optimiser over ``model`` and ``objective`` parameters, or a name (``adamw``, ``adam``, ``sgd``:
        :func:`~metriclearn.training.optim.build_optimizer`, no decay on biases and normalisation weights).
    scheduler:
        ``"onecycle"`` (max LR = ``lr``) or ``"cosine"`` stepped every batch, ``"plateau"`` stepped
        every epoch on the monitored metric, ``"none"``, or ``factory(optimizer, total_steps)``.
    batch_size, samples_per_class:
        Class-balanced batches of ``batch_size // samples_per_class`` classes × ``samples_per_class``.
    grad_clip:
        Maximum global gradient norm (0: no clipping; the norm is still logged).
    compile:
        ``torch.compile`` the model (the DDP wrapper under torchrun) for the training steps; embedding and
        validation run the plain model. Off by default (slower on CPU: BENCHMARKS.md).
    amp:
        Mixed precision on CUDA (bfloat16 where supported, else float16 with a gradient scaler); on CPU
        bf16 autocast only for a fine-tuned transformer on a CPU with native bf16 (see ``_amp_dtype``).
    monitor:
        Validation metric for ``"plateau"`` and the logs (``map_at_r``, ``precision_at_1`` ...).
    callbacks:
        :class:`~metriclearn.training.callbacks.Callback` objects, called in order.
    encoder_lr:
        Learning rate of a fine-tuned pretrained body (the parameters ``model.encoder_parameters()`` returns,
        e.g. a :class:`~metriclearn.sentence.SentenceEncoder`'s transformer); ``None``: ``lr`` for everything.

    Every default is :class:`~metriclearn.training.config.TrainConfig`'s, so ``Trainer(model,
    build_objective(None, D, K)).fit(train, val)`` trains the run ``metriclearn train`` trains.

    A step never waits for the device: its loss, term losses and gradient norm stay device tensors and are
    read together every ``log_every`` steps (and at the end of an epoch, and for a checkpoint), where a
    NaN/inf loss raises ``FloatingPointError`` naming its step. ``Callback.on_batch_end`` gets the step's
    logs as a mapping that reads a value only when asked for.
    """

    log_every = 50  # steps between reads of the step logs off the device (one sync each)

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer | str = _DEFAULTS.optimizer,
        *,
        lr: float = _DEFAULTS.lr,
        weight_decay: float = _DEFAULTS.weight_decay,
        scheduler: str | SchedulerFactory | None = _DEFAULTS.scheduler,
        batch_size: int = _DEFAULTS.batch_size,
        samples_per_class: int = _DEFAULTS.samples_per_class,
        grad_clip: float = _DEFAULTS.grad_clip,
        amp: bool = _DEFAULTS.amp,
        compile: bool = _DEFAULTS.compile,
        device: str | torch.device = _DEFAULTS.device,
        seed: int = _DEFAULTS.seed,
        monitor: str = _DEFAULTS.monitor,
        callbacks: Sequence[Callback] = (),
        embed_batch_size: int = 1024,
        verbose: bool = True,
        encoder_lr: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a metriclearn.training.Objective, got {type(objective).__name__}")
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None and dist_utils.is_distributed():
            self.device = dist_utils.local_device()  # cuda:LOCAL_RANK under torchrun
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self.lr = check_positive_float(lr, "lr")
        self.weight_decay = check_positive_float(weight_decay, "weight_decay", allow_zero=True)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.samples_per_class = check_positive_int(samples_per_class, "samples_per_class")
        # (samples in a batch, samples per class in it): pair data makes it (pairs × texts per pair, texts per pair)
        self.batch_layout = (self.batch_size, self.samples_per_class)
        self.grad_clip = check_positive_float(grad_clip, "grad_clip", allow_zero=True)
        self.embed_batch_size = check_positive_int(embed_batch_size, "embed_batch_size")
        self.seed = check_positive_int(seed, "seed", allow_zero=True)
        self.monitor = monitor
        if isinstance(scheduler, str) or scheduler is None:
            check_choice(scheduler or "none", SCHEDULERS, "scheduler")
        self.scheduler_spec = scheduler or "none"
        self.encoder_lr = None if encoder_lr is None else check_positive_float(encoder_lr, "encoder_lr")
        if optimizer is None or isinstance(optimizer, str):
            encoder_params = getattr(model, "encoder_parameters", None)
            optimizer = build_optimizer(optimizer or "adamw", self.parameters(), self.lr, self.weight_decay,
                                        encoder_params() if callable(encoder_params) else (), self.encoder_lr)
        self.optimizer = optimizer
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.amp_dtype = _amp_dtype(self.device, model) if amp else None
        self.compile = bool(compile)
        self._compiled: Any = None  # torch.compile of the training model, made once by fit
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.scheduler: Any = None
        self.sampler: Any = None
        self.epoch = 0  # completed epochs
        self.global_step = 0  # batches done
        self.history: list[Logs] = []
        self.should_stop = False
        self.metadata: dict[str, Any] = {}  # saved in every checkpoint as it is (e.g. the run's config)
        self.num_classes = 0
        self.num_samples = 0
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self._params: list[nn.Parameter] = []
        self._ids: Tensor | None = None  # pair data: the pair id of every row (the cache's ids)
        self._sides: Tensor | None = None  # pair data: 0 for an anchor row, 1 for a positive or negative
        self._lone_last_batch = False
        # running sums of the current epoch (checkpointed, so a mid-epoch resume logs the whole epoch)
        self._progress: dict[str, Any] = {"sums": {}, "count": 0, "seen": 0, "seconds": 0.0, "lr": 0.0}
        self._pending: list[tuple[int, int, dict[str, Any]]] = []  # (epoch, step, logs) not read off the device yet
        self._last_loss = math.nan

    # ------------------------------------------------------------------ set-up
    @property
    def is_main_process(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the model and the objective (in a fixed order)."""
        return [p for p in [*self.model.parameters(), *self.objective.parameters()] if p.requires_grad]

    def _make_scheduler(self, total_steps: int) -> Any:
        spec = self.scheduler_spec
        if callable(spec):
            return spec(self.optimizer, total_steps)
        return build_scheduler(spec, self.optimizer, total_steps, mode="min" if self.monitor == "loss" else "max")

    @property
    def _per_epoch_scheduler(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def log(self, message: str) -> None:
        """Print one line to stderr (rank 0, when ``verbose``), above any progress bar."""
        if self.verbose and self.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train: Any,
        val: Any = None,
        epochs: int = _DEFAULTS.epochs,
        resume_from: str | Path | dict[str, Any] | None = None,
    ) -> list[Logs]:
        """Train for ``epochs`` epochs (in total, counting those of a resumed checkpoint).

        A checkpoint taken mid-epoch (``ModelCheckpoint(every_n_steps=...)``) resumes at the next batch.

        ``train``/``val`` are :class:`~metriclearn.data.LabeledData` or ``(X, y)`` pairs. Pair data
        (``LabeledData.pairs``) is batched by whole pairs: ``batch_size`` pairs per batch, the loss's labels
        are the pair ids (the neighbourhood loss is then the symmetric in-batch InfoNCE), and validation adds
        :func:`~metriclearn.metrics.pair_metrics`. Returns the
        history: one dict of epoch logs per epoch (train loss, per-term losses, lr, ``val_*`` metrics).
        """
        from metriclearn.data import ClassBalancedSampler

        epochs = check_positive_int(epochs, "epochs")
        X, y = _unpack(train, "train")
        self.num_classes, self.num_samples = int(y.max()) + 1, len(y)
        val_xy: tuple[Any, ...] | None = _unpack(val, "val") if val is not None else None
        if val_xy is not None and getattr(val, "pairs", None) is not None:
            val_xy = (*val_xy, val.pairs)
        pair_ids = getattr(train, "pair_ids", None)
        if pair_ids is not None:  # pair data: --batch-size pairs, each with all its texts (a "class" of 2 or 3)
            width = train.pairs.shape[1]
            # a "class" is a pair's anchor and positive (a negative has an id of its own)
            self.batch_layout = (self.batch_size * width, 2)
            base_sampler = ClassBalancedSampler(pair_ids, self.batch_size * width, width, seed=self.seed,
                                                as_tensors=True)
            self._ids = torch.as_tensor(pair_ids, dtype=torch.long, device=self.device)
            sides = np.zeros(len(pair_ids), dtype=np.int64)  # (n,)
            sides[np.asarray(train.pairs)[:, 1:]] = 1  # positives and negatives are the documents' side
            self._sides = torch.as_tensor(sides, device=self.device)
        else:  # a fine-tuned transformer's batches are bucketed by token count (see ClassBalancedSampler)
            lengths_of = getattr(self.model, "bucket_lengths", None)
            lengths = lengths_of(X) if callable(lengths_of) and not isinstance(X, (np.ndarray, Tensor)) else None
            self.batch_layout = (self.batch_size, self.samples_per_class)
            base_sampler = ClassBalancedSampler(y, self.batch_size, self.samples_per_class, seed=self.seed,
                                                lengths=lengths, as_tensors=True)
            self._ids = self._sides = None
            one_sided = [name for name, term in self.objective.terms.items()
                         if getattr(term, "same_side", True) is False]
            if one_sided:
                raise ValueError(f"loss {one_sided[0]!r} has same_side=False, which scores anchors against "
                                 "positives: it needs pair data (anchor and positive columns), and this data has "
                                 "classes")
        self.sampler = dist_utils.shard_batches(base_sampler)
        # an epoch of n = k·B + 1 samples ends with a batch of one: nothing to compare it with and a
        # BatchNorm error in training mode, so it is passed over (its sample comes back next epoch)
        self._lone_last_batch = len(y) % base_sampler.batch_size == 1 and len(self.sampler) > 1
        self.scheduler = self._make_scheduler(epochs * (len(self.sampler) - self._lone_last_batch))
        X_dev = to_device(X, self.device)
        y_dev = torch.as_tensor(y, dtype=torch.long, device=self.device)
        self._precompute(X, *([val_xy[0]] if val_xy is not None else []))
        _check_state_keys(self.callbacks)
        self.should_stop = False
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from), restore_rng=True)
            self.log(f"resumed after epoch {self.epoch} (step {self.global_step})")
        else:
            self._prepare(X, y, X_dev, y_dev)
        dist_utils.broadcast_module(self.objective)  # heads, centroids, caches start as rank 0's
        self._ddp = dist_utils.wrap_model(self.model, self.device)
        self._compiled = torch.compile(self._ddp or self.model) if self.compile else None  # not `or`: no bool()
        self._params = self.parameters()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.epoch < epochs and not self.should_stop:
                self._run_epoch(X_dev, y_dev, val_xy, epochs)
        except BaseException:
            self._end_callbacks(failed=True)  # close writers, remove hooks; never mask the original error
            raise
        self._end_callbacks(failed=False)
        return self.history

    def _end_callbacks(self, failed: bool) -> None:
        for cb in self.callbacks:
            if not failed:
                cb.on_fit_end(self)
                continue
            try:
                cb.on_fit_end(self)
            except Exception as exc:  # noqa: BLE001 - reported, the training error takes precedence
                warnings.warn(f"{type(cb).__name__}.on_fit_end failed after a training error: {exc}",
                              RuntimeWarning, stacklevel=3)

    def overfit_batch(self, train: Any, steps: int = 200) -> list[float]:
        """Train on ONE class-balanced batch of ``train`` for ``steps`` steps; return the loss per step.

        A sound model/objective drives the loss on a single batch close to zero; if it cannot, something
        between data, model and loss is broken (the "overfit one batch" check). No scheduler is used.
        """
        from metriclearn.data import ClassBalancedSampler

        steps = check_positive_int(steps, "steps")
        X, y = _unpack(train, "train")
        self.num_classes = int(y.max()) + 1
        indices = next(iter(ClassBalancedSampler(y, self.batch_size, self.samples_per_class, seed=self.seed)), None)
        if not indices:
            raise ValueError(f"train has {len(y)} samples: too few for one batch of {self.batch_size}")
        X_dev, y_dev = to_device(X, self.device), torch.as_tensor(y, dtype=torch.long, device=self.device)
        self._prepare(X, y, X_dev, y_dev)
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        x_batch, y_batch = _take(X_dev, idx), y_dev.index_select(0, idx)
        self.scheduler = None
        self.model.train()
        losses = []
        for _ in progress(range(steps), desc="overfit one batch", unit="step"):
            self._pending.append((1, self.global_step + 1, self._train_step(x_batch, y_batch, idx)))
            self._read_logs()  # checks the loss each step
            losses.append(self._last_loss)
            self.global_step += 1
        return losses

    def _precompute(self, *inputs: Any) -> None:
        """Let a frozen text encoder cache its transformer outputs once (``model.precompute(texts)``)."""
        precompute = getattr(self.model, "precompute", None)
        if callable(precompute):
            for X in inputs:
                if not isinstance(X, (np.ndarray, Tensor)):
                    precompute(X)

    def _prepare(self, X: Any, y: np.ndarray, X_dev: Any, y_dev: Tensor) -> None:
        """Fresh run: fit the encoder's input standardisation and initialise the objective from real outputs."""
        prepare_fresh_run(self.model, self.objective, X, y_dev, self.embed, self.device)

    def _run_epoch(self, X: Any, y: Tensor, val: tuple[Any, np.ndarray] | None, epochs: int) -> None:
        # One source of truth for where the run stands: ``self.epoch`` (completed epochs) and
        # ``self._progress["count"]`` (batches of the current epoch done). The sampler is positioned from
        # them; a checkpoint taken after the epoch's last batch (count == len) runs no batch again and
        # goes straight to the end of the epoch.
        epoch = self.epoch
        progress_ = self._progress
        if progress_["count"] == 0:  # a fresh epoch (else: resumed from a checkpoint taken mid-epoch)
            progress_.update(sums={}, seen=0, seconds=0.0)
        self.sampler.set_epoch(epoch)
        if 0 < progress_["count"] < len(self.sampler):
            self.sampler.load_state_dict({**self.sampler.state_dict(), "epoch": epoch, "position": progress_["count"]})
        batches = self.sampler if progress_["count"] < len(self.sampler) else ()
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        self.model.train()
        self.objective.train()
        start = time.perf_counter() - progress_["seconds"]
        bar = progress(batches, desc=f"epoch {epoch + 1}/{epochs}", total=len(self.sampler),
                       initial=progress_["count"], unit="batch")
        for batch, indices in enumerate(bar, start=progress_["count"]):
            if self._lone_last_batch and batch == len(self.sampler) - 1:
                progress_["count"] += 1
                continue
            idx = torch.as_tensor(indices, dtype=torch.long).to(self.device, non_blocking=True)  # (b,) no copy on CPU
            ids = idx if self._ids is None else self._ids.index_select(0, idx)
            sides = None if self._sides is None else self._sides.index_select(0, idx)
            logs = self._train_step(_take(X, idx), y.index_select(0, idx), ids, sides)
            self.global_step += 1
            self._pending.append((self.epoch + 1, self.global_step, logs))
            progress_["count"] += 1
            progress_["seen"] += dist_utils.global_batch_size(self.sampler, indices)
            progress_["lr"] = logs["lr"]
            if len(self._pending) >= self.log_every or batch == len(self.sampler) - 1:
                self._read_logs()  # the one host-device sync of `log_every` steps
                bar.set_postfix(loss=f"{self._last_loss:.4f}", refresh=False)
            progress_["seconds"] = time.perf_counter() - start
            for cb in self.callbacks:
                cb.on_batch_end(self, batch, _StepLogs(logs))
        self._read_logs()
        steps, seconds = max(progress_["count"] - self._lone_last_batch, 1), progress_["seconds"]
        epoch_logs: Logs = {k: v / steps for k, v in progress_["sums"].items() if k != "lr"}
        epoch_logs["lr"] = progress_["lr"]  # of the epoch's last step
        epoch_logs["seconds"] = seconds
        epoch_logs["samples_per_s"] = progress_["seen"] / max(seconds, 1e-9)
        progress_["count"] = 0
        # under torchrun rank 0 validates and every rank gets its metrics (same decisions everywhere)
        metrics = dist_utils.decide_on_main(self.validate, *val) if val is not None else {}
        for cb in self.callbacks:
            cb.on_validation_end(self, metrics)
        epoch_logs.update({f"val_{k}": v for k, v in metrics.items()})
        if self._per_epoch_scheduler:
            key = "loss" if self.monitor == "loss" or not metrics else f"val_{self.monitor}"
            self.scheduler.step(epoch_logs[key])
        self.epoch = epoch + 1
        self.history.append(epoch_logs)
        self.log(_format_epoch(epoch + 1, epochs, epoch_logs))
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, epoch_logs)
        self.should_stop = dist_utils.broadcast_object(self.should_stop)  # rank 0's early-stopping decision

    def _train_step(self, x: Any, y: Tensor, ids: Tensor | None = None, sides: Tensor | None = None
                    ) -> dict[str, Any]:
        """The optimiser step(s) of one batch (one per group of terms); its logs, left on the device.

        ``lr`` is a float; loss, term losses and gradient norm are 0-d tensors, read (and the loss checked for
        NaN/inf) by :meth:`_read_logs` every :attr:`log_every` steps, so a step never waits for the device.

        ``ids`` are the batch's dataset indices (pair data: its pair ids): terms that take them (``CacheLoss``)
        never match an anchor with a cached copy of the same sample (any text of its own pair) from an
        earlier step. ``sides`` (pair data: 0 anchor, 1 positive or negative) reach the terms that use them
        (``NeighborhoodSoftmaxLoss(same_side=False)``).
        """
        logs: dict[str, Any] = {"lr": self.optimizer.param_groups[0]["lr"]}  # the rate this batch's step(s) use
        params = self._params or self.parameters()
        model = self._compiled if self._compiled is not None else (self._ddp or self.model)
        for group in self.objective.groups():
            self.optimizer.zero_grad(set_to_none=True)
            surgery = self.objective.uses_surgery(group)
            # PCGrad takes per-task gradients with autograd.grad, which DDP's hooks never see: skip DDP's
            # sync and average each task gradient over the processes ourselves
            no_sync = self._ddp.no_sync() if self._ddp is not None and surgery else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    embeddings = model(x)  # (b, D)
                # the global batch of all ranks (shards may differ in size); gradients return to own rows
                # (B, D), (B,), (B,), (B,)
                embeddings, labels, batch_ids, batch_sides = dist_utils.gather_batch(embeddings, y, ids, sides)
                losses = self.objective.term_losses(embeddings, labels, group, ids=batch_ids, sides=batch_sides)
                total = self.objective.total(losses).detach()
                scale: Any = self.scaler.scale(torch.ones((), device=self.device)) if self.scaler else 1.0
                reduce = dist_utils.all_reduce_mean if surgery and self._ddp is not None else None
                self.objective.backward(losses, params, scale=scale, reduce=reduce)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            logs["loss"] = total if "loss" not in logs else logs["loss"] + total
            logs.update({name: v.detach() for name, v in losses.items()})
            logs["grad_norm"] = grad_norm.detach()
        if self.scheduler is not None and not self._per_epoch_scheduler:
            self.scheduler.step()
        return logs

    def _read_logs(self) -> None:
        """Read the pending steps' logs off the device at once, check each loss, add them to the epoch sums.

        One host-device sync for up to :attr:`log_every` steps instead of several per step. A NaN/inf loss
        raises ``FloatingPointError`` naming its epoch and step (the steps after it, up to the read, were taken).
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        keys = [k for k, v in pending[0][2].items() if isinstance(v, Tensor)]
        table = torch.stack([torch.stack([logs[k].double() for k in keys]) for _, _, logs in pending]).tolist()
        sums = self._progress["sums"]
        for (epoch, step, _), row in zip(pending, table, strict=True):
            values = dict(zip(keys, row, strict=True))
            if not math.isfinite(values["loss"]):
                terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k not in ("loss", "grad_norm"))
                raise FloatingPointError(
                    f"loss is {values['loss']} at epoch {epoch}, step {step} (terms: {terms}); "
                    f"try a lower --lr, gradient clipping, or check the data for extreme values"
                )
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
        self._last_loss = table[-1][keys.index("loss")]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ inference
    def embed(self, data: Any, batch_size: int | None = None) -> np.ndarray:
        """Embeddings (n, D) float32 of ``data`` (LabeledData, array, tensor or list of texts), eval mode."""
        return embed_array(self.model, data, batch_size or self.embed_batch_size, self.device, self.amp_dtype)

    def validate(self, X: Any, y: np.ndarray, pairs: np.ndarray | None = None) -> Logs:
        """Leave-one-out retrieval metrics of the embeddings of ``(X, y)``; for pair data (``pairs`` (P, 2):
        anchor and positive rows) also :func:`~metriclearn.metrics.pair_metrics`."""
        from metriclearn.metrics import pair_metrics, retrieval_metrics

        embeddings = self.embed(X)
        metrics = retrieval_metrics(embeddings, np.asarray(y))
        if pairs is not None:
            metrics.update(pair_metrics(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]))
        return {k: float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (weights_only-safe); reads the pending step logs first."""
        self._read_logs()
        return {
            "format_version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None,
            "rng": rng_state(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "epoch_progress": {**self._progress, "sums": dict(self._progress["sums"])},
            "history": [dict(row) for row in self.history],
            "should_stop": bool(self.should_stop),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "metadata": self.metadata,
        }

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        """Restore :meth:`state_dict` (call after the scheduler and sampler exist, i.e. inside ``fit``)."""
        version = state.get("format_version")
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint format_version {version!r} is not supported (expected {CHECKPOINT_VERSION}; "
                             f"it was written by another metriclearn version)")
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state["sampler"] is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self._progress = {**state["epoch_progress"], "sums": dict(state["epoch_progress"]["sums"])}
        self.history = [dict(row) for row in state["history"]]
        self.should_stop = bool(state["should_stop"])
        self.metadata = dict(state["metadata"])
        for cb in self.callbacks:  # by name, so adding or reordering callbacks never mixes their states
            saved = state["callbacks"].get(cb.state_key)
            if saved is not None:
                cb.load_state_dict(saved)
        if restore_rng:
            set_rng_state(state["rng"])


# ---------------------------------------------------------------------------- helpers
def _amp_dtype(device: torch.device, model: nn.Module) -> torch.dtype | None:
    """CUDA: bf16 where supported, else fp16. CPU: bf16 only for a model that asks for it
    (``model.cpu_bf16``: a fine-tuned transformer) on a CPU with native bf16 arithmetic (AVX-512-BF16 or AMX),
    where it was measured faster (a MiniLM fine-tuning step 1.24× faster, docs/text.md); small models
    (MLPs, a frozen transformer's head) stay in float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and getattr(model, "cpu_bf16", False) and cpu_has_bf16():
        return torch.bfloat16
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX tiles; torch's own oneDNN check)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))


def _check_state_keys(callbacks: Sequence[Callback]) -> None:
    keys = [cb.state_key for cb in callbacks if cb.state_dict()]  # stateless callbacks may share a key
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"callbacks share the state_key {repeated[0]!r}; give each a distinct state_key "
                         f"so their checkpointed states stay apart")


def _unpack(data: Any, name: str) -> tuple[Any, np.ndarray]:
    if hasattr(data, "X") and hasattr(data, "y"):
        X, y = data.X, data.y
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    else:
        raise TypeError(f"{name} must be a LabeledData or an (X, y) pair, got {type(data).__name__}")
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} labels must be a 1-D integer array, got {y.dtype} with shape {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{name} has {len(X)} samples but {len(y)} labels")
    if isinstance(X, np.ndarray):
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise ValueError(f"{name} features contain NaN or inf values")
    return X, y.astype(np.int64)


def _take(X: Any, idx: Tensor) -> Any:
    """The rows ``idx`` of ``X``: ``index_select`` on a tensor (several times faster than ``X[idx]`` on CPU)."""
    if isinstance(X, torch.Tensor):
        return X.index_select(0, idx)
    return [X[i] for i in idx.tolist()]


class _StepLogs(Mapping[str, float]):
    """One step's logs for ``Callback.on_batch_end``: a value is read off the device (a sync) only when asked for."""

    def __init__(self, logs: Mapping[str, Any]) -> None:
        self._logs = logs

    def __getitem__(self, key: str) -> float:
        return float(self._logs[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._logs)

    def __len__(self) -> int:
        return len(self._logs)


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read back (truncated, overwritten, not a checkpoint): bad input, not usage."""


_CHECKPOINT_FIX = "restore the file, or start the run again with --overwrite"


def load_checkpoint(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A checkpoint (a path, or an already loaded dict) as a dict; a damaged file raises :class:`DamagedCheckpoint`
    naming it, with the first sentence of torch's reason (its own text runs to 7 lines)."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory (no checkpoint to resume from)", str(path))
    if not path.is_file():
        raise DamagedCheckpoint(f"{path}: not a metriclearn checkpoint (not a regular file); {_CHECKPOINT_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        lines = str(exc).strip().splitlines()
        why = lines[0].split(". ")[0].rstrip(".") if lines else ("the file is empty" if path.stat().st_size == 0
                                                                 else type(exc).__name__)
        raise DamagedCheckpoint(f"{path}: damaged, or not a metriclearn checkpoint ({why}); {_CHECKPOINT_FIX}") from exc
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{path}: not a metriclearn checkpoint (it holds a {type(state).__name__}); "
                                f"{_CHECKPOINT_FIX}")
    return state


def _format_epoch(epoch: int, epochs: int, logs: Logs) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {logs['loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("val_")]
    parts.append(f"{logs['samples_per_s']:.0f} samples/s")
    return "  ".join(parts)


def prepare_fresh_run(model: nn.Module, objective: Any, X: Any, labels: Tensor, embed: Any,
                      device: torch.device | str) -> None:
    """Before a fresh run's first step: fit ``model.standardize`` on the raw inputs ``X`` (arrays only), then,
    when a loss term has ``init_centroids``, initialise the objective from ``embed(X)`` (real outputs) and
    ``labels``. Shared by :class:`Trainer` and the Lightning module."""
    standardize = getattr(model, "standardize", None)
    if standardize is not None and hasattr(standardize, "fit") and isinstance(X, np.ndarray):
        standardize.fit(X.reshape(len(X), -1) if X.ndim > 2 else X)
        standardize.to(device)
    if any(callable(getattr(t, "init_centroids", None)) for t in objective.terms.values()):
        embeddings = torch.from_numpy(embed(X)).to(device)  # (n, D)
        objective.prepare(embeddings, labels)
