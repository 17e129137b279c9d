"""Training a run directory from a :class:`TrainConfig` (:func:`train_run`), and the one-batch sanity check.

The run directory's layout, ``save_model`` and ``load_run`` live in :mod:`metriclearn.runs` (what inference
reads, without the trainer); they are re-exported here for the import paths that predate that module.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metriclearn import _distributed as distributed
from metriclearn._atomic import write_json
from metriclearn._outdir import check_output_dir, claim_output_dir, remove_recorded
from metriclearn.runs import (  # noqa: F401  (re-exported: the old import paths keep working)
    MODEL_FORMAT_VERSION,
    RunEmbeddings,
    TrainedRun,
    embed_from_run,
    load_run,
    save_model,
)
from metriclearn.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    HealthMonitor,
    ModelCheckpoint,
    TensorBoardLogger,
)
from metriclearn.training.config import TrainConfig
from metriclearn.training.objectives import build_objective
from metriclearn.training.resume import (
    ResumePoint,
    check_same_data,
    clean_stale_temp_files,
    data_stamp,
    load_checkpoint,
    resume_config,
    run_state,
)
from metriclearn.training.rng import seed_everything
from metriclearn.training.splits import split_for_validation
from metriclearn.training.trainer import Trainer

_RUN_HINT = "--resume to continue it or --overwrite"
_RUN_FILES = ("model.pt", "config.toml", "classes.json", "metrics.json", "log.csv", "checkpoints",
              "checkpoints/last.pt", "checkpoints/best.pt")  # recorded in the marker before training starts


def build_model(config: TrainConfig, input_shape: Sequence[int]) -> nn.Module:
    """The encoder of ``config`` for inputs of ``input_shape`` (features per sample)."""
    from metriclearn.encoders import build_encoder

    return build_encoder(config.encoder, tuple(input_shape), config.embedding_dim, normalize=config.normalize,
                         **config.encoder_kwargs())


def make_trainer(config: TrainConfig, model: nn.Module, num_classes: int, callbacks: Sequence[Callback] = (),
                 verbose: bool = True) -> Trainer:
    """The :class:`Trainer` (objective, optimiser, schedule) that ``config`` describes."""
    objective = build_objective(config.terms(), config.embedding_dim, num_classes, config.combine, config.loss_options)
    return Trainer(
        model, objective, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
        scheduler=config.scheduler, batch_size=config.batch_size, samples_per_class=config.samples_per_class,
        grad_clip=config.grad_clip, amp=config.amp, device=config.device, seed=config.seed, monitor=config.monitor,
        callbacks=callbacks, verbose=verbose, encoder_lr=config.encoder_lr, compile=config.compile,
    )


def overfit_batch_check(config: TrainConfig, steps: int = 200, verbose: bool = True) -> OverfitResult:
    """The "overfit one batch" sanity check of ``config``: train on one batch for ``steps`` steps.

    A sound model/objective drives the loss of a single batch to at most 10 % of its first value (or, for
    a loss that starts at 0, below it); if it cannot, something between data, model and loss is broken.
    """
    from metriclearn.data import CsvColumns, load_data

    seed_everything(config.seed)
    data = load_data(config.data, columns=CsvColumns(label=config.label_column), images=image_options(config))
    input_shape = tuple(np.shape(data.X)[1:]) if isinstance(data.X, np.ndarray) else ()
    trainer = make_trainer(config, build_model(config, input_shape), data.num_classes, verbose=verbose)
    losses = trainer.overfit_batch(data, steps=steps)
    first, last = losses[0], losses[-1]
    return OverfitResult(passed=last <= 0.1 * first if first > 0 else last < first, first=first, last=last,
                         steps=len(losses), batch_size=config.batch_size)


@dataclass(frozen=True)
class OverfitResult:
    """Outcome of :func:`overfit_batch_check`: the loss at the first and last step, and the verdict."""

    passed: bool
    first: float
    last: float
    steps: int
    batch_size: int

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"overfit-batch: {verdict}: loss {self.first:.4f} -> {self.last:.4f} after {self.steps} steps on one "
                f"batch of {self.batch_size}")


def train_run(
    config: TrainConfig,
    out: str | os.PathLike[str],
    resume: bool | ResumePoint = False,
    callbacks: Sequence[Callback] = (),
    verbose: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the run ``config`` describes into ``out`` (or continue it with ``resume``); return metrics.json.

    ``out`` must be new, empty or a metriclearn run folder (:func:`~metriclearn._outdir.claim_output_dir`);
    ``overwrite`` replaces a previous run there. ``resume`` continues ``out/checkpoints/last.pt`` exactly:
    ``True`` checks ``config`` with :func:`~metriclearn.training.resume.resume_config` (it must equal the
    configuration the run started with, apart from the runtime keys); a
    :class:`~metriclearn.training.resume.ResumePoint` that ``resume_config`` returned is used as it is
    (the CLI's ``--resume``: the checkpoint is loaded once). Extra ``callbacks``
    run before the built-in logging/checkpointing. Data and settings are checked before anything is
    written, and ``model.pt`` is written last: a run without it can always be resumed.
    """
    out, resuming = Path(out), bool(resume)
    if resuming and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
    # before reading, loading or training anything: a folder without metriclearn's marker is never taken for a
    # run (whatever its files), and one that holds a run needs --resume or --overwrite. Only the rank that
    # writes checks (check_output_dir reads torchrun's RANK; the process group is joined below).
    if distributed.is_main_process():
        check_output_dir(out, "run", overwrite=overwrite, resume=resuming, hint=_RUN_HINT)
    checkpoint = None
    if resuming:
        if run_state(out) == "finished":
            raise ValueError(f"{out} is a finished run (model.pt is written); nothing to resume")
        # resume_config owns the resume: it loads the checkpoint and checks the settings, once
        config, checkpoint = resume if isinstance(resume, ResumePoint) else resume_config(out, config.to_dict())
    # under torchrun: the CLI's group, else one made here; its maker makes every rank wait for rank 0's writes
    with distributed.process_group():
        return _train(config, out, checkpoint, callbacks, verbose, overwrite, resuming)


def _train(config: TrainConfig, out: Path, checkpoint: dict[str, Any] | None, callbacks: Sequence[Callback],
           verbose: bool, overwrite: bool, resume: bool) -> dict[str, Any]:
    """:func:`train_run` once the folder and the checkpoint to resume are checked (every rank runs it)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data, train, val = _load_splits(config)
    input_shape = tuple(np.shape(data.X)[1:]) if isinstance(data.X, np.ndarray) else ()
    _check_encoder_fits(config, data.is_text)
    _check_images_fit(config, data)
    stamp = data_stamp(config.data, len(data), input_shape, data.num_classes)
    check_same_data(checkpoint, stamp)  # before the model is built for data it was not trained on
    model = build_model(config, input_shape)
    all_callbacks = _run_callbacks(config, out, val, callbacks)
    trainer = make_trainer(config, model, data.num_classes, all_callbacks, verbose=verbose)
    trainer.metadata = {"config": config.to_dict(), "data": stamp}  # a resumed run gets its checkpoint's copy back
    claim = (claim_output_dir(out, "run", overwrite=overwrite, resume=resume, writes=_RUN_FILES,
                              hint=_RUN_HINT)
             if trainer.is_main_process else contextlib.nullcontext(out))
    with claim:
        if trainer.is_main_process:
            if overwrite:  # only what the previous run wrote (its marker's record): the user's files stay
                remove_recorded(out)
            for path in clean_stale_temp_files(out):
                trainer.log(f"removed {path.name}, left by an interrupted write")
            if checkpoint is None:  # a fresh start (or a resume before the first checkpoint): write the settings
                config.save(out / "config.toml")
                write_json(out / "classes.json", list(data.classes))
        start = time.perf_counter()
        trainer.fit(train, val, epochs=config.epochs, resume_from=checkpoint)
        seconds = time.perf_counter() - start
        if not trainer.is_main_process:  # no collective follows: the others wait for rank 0 as the group ends
            return {}
        best = _best_epoch(config, trainer, all_callbacks, val)
        held_out = val if val is not None else train
        if data.is_pairs:
            metrics = _pair_run_metrics(trainer, held_out)
            metrics.update(split="val" if val is not None else "train", n_train=len(train.pairs),
                           n_eval=len(held_out.pairs), epochs=trainer.epoch, train_seconds=seconds)
            metrics.update(best or {})
            write_json(out / "metrics.json", metrics)
            save_model(out / "model.pt", model, config, input_shape, head=classification_head(trainer.objective))
            return metrics
        held_out_emb = trainer.embed(held_out)
        unseen = val is not None and config.val_split == "classes"
        # held-out classes have no same-class item among the training samples: leave-one-out among themselves
        reference = (None, None) if unseen else (trainer.embed(train), train.y)
        metrics = evaluate_embeddings(held_out_emb, held_out.y, *reference)
        metrics.update(split="val" if val is not None else "train", n_train=len(train), n_eval=len(held_out),
                       epochs=trainer.epoch, train_seconds=seconds, val_split=config.val_split)
        if best is not None:
            metrics.update(best)
        if unseen:
            metrics["val_classes"] = [data.classes[c] for c in np.unique(held_out.y)]
        write_json(out / "metrics.json", metrics)
        if config.report:
            from metriclearn.reports import write_report
            from metriclearn.reports.explorer import item_content

            texts, thumbnails = item_content(held_out)
            write_report(held_out_emb, held_out.y, out / "report", classes=list(data.classes),
                         config=config.to_dict(), texts=texts, thumbnails=thumbnails, training_log=out / "log.csv")
        save_model(out / "model.pt", model, config, input_shape,  # last: its presence marks a finished run
                   head=classification_head(trainer.objective))
    return metrics


def _best_epoch(
    config: TrainConfig, trainer: Trainer, callbacks: Sequence[Callback], val: Any
) -> dict[str, Any] | None:
    """Warn when the last epoch's validation metric is below the best by more than noise; with
    ``config.restore_best``, load the best epoch's weights (``checkpoints/best.pt``) into the trainer's model and
    objective. Returns ``{"best_epoch", "best_<monitor>", "restored_best"}``, or ``None`` without validation.

    Noise is two standard errors of a mean over the n validation queries of per-query scores in [0, 1]:
    2·√(m(1 − m)/n) at the best value m (the largest spread such scores can have).
    """
    checkpoint = next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint)), None)
    monitor = f"val_{config.monitor}"
    values = [row.get(monitor) for row in trainer.history]
    if val is None or config.monitor == "loss" or checkpoint is None or not values or values[-1] is None:
        return None
    scores = [v if v is not None else -math.inf for v in values]
    best_at = max(range(len(scores)), key=lambda i: (scores[i], -i))
    best, last = float(scores[best_at]), float(scores[-1])
    restore = config.restore_best and best_at != len(values) - 1 and checkpoint.best_path.is_file()
    noise = 2 * math.sqrt(max(best * (1 - best), 0.0) / max(len(val), 1))
    if best - last > noise:
        kept = ("model.pt holds the best epoch's weights (--no-restore-best keeps the last)" if restore else
                "model.pt holds the last epoch's weights (--restore-best keeps the best)")
        warnings.warn(f"the last epoch's {monitor} {last:.4f} is below the best, {best:.4f} at epoch {best_at + 1}, "
                      f"by more than noise ({noise:.4f}); {kept}", stacklevel=2)
    if restore:
        state = load_checkpoint(checkpoint.best_path)
        trainer.model.load_state_dict(state["model"])
        trainer.objective.load_state_dict(state["objective"])  # a classification head belongs to the model
    return {"best_epoch": best_at + 1, f"best_{monitor}": best, "restored_best": bool(restore)}


def _pair_run_metrics(trainer: Trainer, held_out: Any) -> dict[str, Any]:
    """``{"pairs": pair_metrics, "retrieval": leave-one-out retrieval}`` of the held-out pairs' anchors and
    positives (n_eval counts pairs)."""
    from metriclearn.metrics import pair_metrics, retrieval_metrics

    pairs = held_out.subset_pairs(np.arange(len(held_out.pairs)), negatives=False)
    embeddings = trainer.embed(pairs)
    return {"pairs": pair_metrics(embeddings[pairs.pairs[:, 0]], embeddings[pairs.pairs[:, 1]]),
            "retrieval": retrieval_metrics(embeddings, pairs.y)}


def _run_callbacks(config: TrainConfig, out: Path, val: Any, extra: Sequence[Callback]) -> list[Callback]:
    """Health checks, the caller's callbacks, early stopping, logs, report snapshots and checkpoints, in order."""
    monitor = "loss" if val is None or config.monitor == "loss" else f"val_{config.monitor}"
    mode = "min" if monitor == "loss" else "max"
    callbacks: list[Callback] = [HealthMonitor(), *extra]
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor, patience=config.patience, mode=mode))
    callbacks.append(CSVLogger(out / "log.csv"))
    if TensorBoardLogger.available():
        callbacks.append(TensorBoardLogger(out / "tensorboard"))
    if config.report and val is not None:
        callbacks.append(_MovieSnapshots(out / "report", val, config.seed))
    callbacks.append(ModelCheckpoint(out / "checkpoints", monitor=monitor, mode=mode,
                                     every_n_steps=config.checkpoint_every))
    return callbacks


def _load_splits(config: TrainConfig) -> tuple[Any, Any, Any]:
    """``(data, train, val or None)`` of ``config``, checked so that training can finish and be evaluated."""
    from metriclearn.data import CsvColumns, load_data

    data = load_data(config.data, columns=CsvColumns(label=config.label_column), images=image_options(config))
    train, val = data, None
    if config.val_fraction > 0:
        train, val = split_for_validation(data, config.val_split, config.val_fraction, config.seed)
        val = val if val is not None and len(val) > 0 else None  # too small a fraction to hold anything out
    if data.is_pairs:  # every pair is a class of its own texts: nothing more can go wrong
        if config.report:
            raise ValueError(f"{config.data}: --report plots classes, and pair data has none (each pair is a class "
                             "of its own texts); train without --report: the pair metrics go to metrics.json")
        return data, train, val
    assert train.y is not None  # load_data requires labels by default
    if len(np.unique(train.y)) < 2:
        raise ValueError(f"{config.data}: the training split holds a single class; metric learning needs at least 2")
    held_out, name = (val, "validation split") if val is not None else (train, "training data")
    assert held_out.y is not None
    counts = np.bincount(held_out.y)
    if not (counts >= 2).any():
        raise ValueError(
            f"{config.data}: the {name} ({len(held_out)} samples) has no class with 2 or more samples, so no "
            f"retrieval metric can be measured; use more samples per class, a larger --val-fraction, or "
            f"--val-fraction 0 (measure on the training data)"
        )
    return data, train, val


def image_options(config: TrainConfig) -> Any:
    """How ``config``'s image data is decoded: at ``image_size``, else the backbone's input size, else the
    first image's (:class:`metriclearn.images.ImageOptions`)."""
    from metriclearn.images import ImageOptions
    from metriclearn.images.backbones import input_size

    size = config.image_size or (input_size(config.encoder) if config.is_vision_encoder else None)
    return ImageOptions(size=size, workers=config.workers, skip_bad=config.skip_bad_images)


def _check_images_fit(config: TrainConfig, data: Any) -> None:
    """A vision backbone or augmentation needs image data (X (n, C, H, W)): say so, naming --data."""
    images = isinstance(data.X, np.ndarray) and data.X.ndim == 4
    if (config.is_vision_encoder or config.augment != "none") and not images:
        raise ValueError(f"{config.data} holds {'texts' if data.is_text else 'numeric features'}, but "
                         f"{'--encoder ' + config.encoder if config.is_vision_encoder else '--augment'} needs images: "
                         "give --data a folder of class subfolders or a .csv with a path column")


def _check_encoder_fits(config: TrainConfig, text_data: bool) -> None:
    """Texts need the sentence encoder and numeric features one of the others: say which, naming --data."""
    text_encoder = config.encoder.split(":", 1)[0] == "sentence"
    if text_data and not text_encoder:
        raise ValueError(f"{config.data} holds texts, which --encoder {config.encoder} cannot embed; "
                         "use --encoder sentence (or sentence:MODEL_DIR)")
    if text_encoder and not text_data:
        raise ValueError(f"{config.data} holds numeric features, but --encoder {config.encoder} embeds texts; "
                         "use --encoder mlp (or cnn), or give a .jsonl of texts")


class _MovieSnapshots(Callback):
    """Adds the held-out embeddings to a ``CentroidMovie`` every epoch; saves it at the end."""

    def __init__(self, out_dir: Path, val: Any, seed: int) -> None:
        from metriclearn.reports import CentroidMovie

        self.out_dir, self.val = out_dir, val
        self.movie = CentroidMovie(classes=list(val.classes), seed=seed)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if trainer.is_main_process:
            self.movie.add(epoch + 1, trainer.embed(self.val), self.val.y)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.is_main_process and len(self.movie):
            self.movie.save(self.out_dir)

    def state_dict(self) -> dict[str, Any]:  # a resumed run's movie keeps the epochs before the kill
        return self.movie.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.movie.load_state_dict(state)


def classification_head(objective: nn.Module) -> nn.Module | None:
    """The ``nn.Linear`` head that the ``softmax``/``complement`` terms of an objective share, if any."""
    from metriclearn.training.objectives import HeadLoss

    return next((term.head for term in getattr(objective, "terms", {}).values() if isinstance(term, HeadLoss)), None)


def evaluate_embeddings(
    query: np.ndarray,
    query_labels: np.ndarray,
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    k: int = 5,
) -> dict[str, Any]:
    """Retrieval and separation metrics of ``query``: :func:`metriclearn.metrics.embedding_metrics`.

    ``retrieval`` is leave-one-out within the query set (the protocol of pytorch-metric-learning's
    AccuracyCalculator); with a reference, ``retrieval_vs_reference`` searches the reference set and
    ``knn_accuracy_k{k}`` is the accuracy of a majority vote over the k nearest reference points.
    """
    from metriclearn.metrics import embedding_metrics

    return embedding_metrics(query, query_labels, reference, reference_labels, k=k)
