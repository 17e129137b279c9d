"""Run directories: train one from a :class:`TrainConfig`, load it back, embed and evaluate with it.

A run directory holds::

    config.toml        the resolved configuration (re-read by --resume)
    classes.json       label values in code order (code i means classes[i])
    model.pt           {"format_version", "encoder", "input_shape", "embedding_dim", "normalize",
                        "encoder_options", "state_dict"} and, for softmax/complement runs, "head" (the
                        classification head's weights); a frozen sentence transformer is not in the
                        state_dict (only its projection head): it is re-read from the model folder the spec names
    metrics.json       held-out retrieval + separation metrics
    log.csv            one row per epoch
    checkpoints/       last.pt and best.pt: full training state for --resume

Everything loads with ``torch.load(weights_only=True)``; every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metriclearn._atomic import save_with, write_json
from metriclearn._checks import check_positive_int, describe
from metriclearn._outdir import check_output_dir, claim_output_dir, remove_recorded
from metriclearn.fingerprint import model_fingerprint
from metriclearn.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    HealthMonitor,
    ModelCheckpoint,
    TensorBoardLogger,
)
from metriclearn.training import distributed
from metriclearn.training.config import TrainConfig
from metriclearn.training.objectives import build_objective
from metriclearn.training.embedding import embed_array
from metriclearn.training.resume import (
    RUNTIME_KEYS,
    check_same_data,
    checkpoint_path,
    clean_stale_temp_files,
    data_stamp,
    differences,
    load_checkpoint,
    run_state,
    started_config,
)
from metriclearn.training.rng import seed_everything
from metriclearn.training.splits import split_for_validation
from metriclearn.training.trainer import Trainer
from metriclearn._device import resolve_device

MODEL_FORMAT_VERSION = 1
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
        callbacks=callbacks, verbose=verbose, encoder_lr=config.encoder_lr,
    )


def overfit_batch_check(config: TrainConfig, steps: int = 200, verbose: bool = True) -> OverfitResult:
    """The "overfit one batch" sanity check of ``config``: train on one batch for ``steps`` steps.

    A sound model/objective drives the loss of a single batch to at most 10 % of its first value (or, for
    a loss that starts at 0, below it); if it cannot, something between data, model and loss is broken.
    """
    from metriclearn.data import CsvColumns, load_data

    seed_everything(config.seed)
    data = load_data(config.data, columns=CsvColumns(label=config.label_column))
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
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    verbose: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the run ``config`` describes into ``out`` (or continue it with ``resume``); return metrics.json.

    ``out`` must be new, empty or a metriclearn run folder (:func:`~metriclearn._outdir.claim_output_dir`);
    ``overwrite`` replaces a previous run there. ``resume`` continues ``out/checkpoints/last.pt`` exactly;
    ``config`` must equal the configuration the run started with (see
    :func:`~metriclearn.training.resume.resume_config`) apart from the runtime keys. Extra ``callbacks``
    run before the built-in logging/checkpointing. Data and settings are checked before anything is
    written, and ``model.pt`` is written last: a run without it can always be resumed.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
    # before reading, loading or training anything: a folder without metriclearn's marker is never taken for a
    # run (whatever its files), and one that holds a run needs --resume or --overwrite. Only the rank that
    # writes checks (check_output_dir reads torchrun's RANK; the process group is joined below).
    if distributed.is_main_process():
        check_output_dir(out, "run", overwrite=overwrite, resume=resume, hint=_RUN_HINT)
    checkpoint = _checkpoint_to_resume(out, config) if resume else None
    # under torchrun: the CLI's group, else one made here; its maker makes every rank wait for rank 0's writes
    with distributed.process_group():
        return _train(config, out, checkpoint, callbacks, verbose, overwrite, resume)


def _train(config: TrainConfig, out: Path, checkpoint: dict[str, Any] | None, callbacks: Sequence[Callback],
           verbose: bool, overwrite: bool, resume: bool) -> dict[str, Any]:
    """:func:`train_run` once the folder and the checkpoint to resume are checked (every rank runs it)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data, train, val = _load_splits(config)
    input_shape = tuple(np.shape(data.X)[1:]) if isinstance(data.X, np.ndarray) else ()
    _check_encoder_fits(config, data.is_text)
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


def _best_epoch(config: TrainConfig, trainer: Trainer, callbacks: Sequence[Callback], val: Any) -> dict[str, Any] | None:
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
    best_at = max(range(len(values)), key=lambda i: (values[i] if values[i] is not None else -math.inf, -i))
    best, last = float(values[best_at]), float(values[-1])
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


def _checkpoint_to_resume(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint ``config`` continues (``None``: killed before the first one, start over); checked."""
    state = run_state(out)
    if state == "finished":
        raise ValueError(f"{out} is a finished run (model.pt is written); nothing to resume")
    if state == "new":
        raise FileNotFoundError(2, "No such file or directory (no run to resume; start it without --resume)",
                                str(out / "config.toml"))
    checkpoint = load_checkpoint(checkpoint_path(out)) if state == "partial" else None
    changed = differences(started_config(out, checkpoint), config.to_dict(), skip=RUNTIME_KEYS)
    if changed:
        raise ValueError(f"resume: the configuration differs from the one {out} started with: {'; '.join(changed)}")
    return checkpoint


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

    data = load_data(config.data, columns=CsvColumns(label=config.label_column))
    train, val = data, None
    if config.val_fraction > 0:
        train, val = split_for_validation(data, config.val_split, config.val_fraction, config.seed)
        val = val if val is not None and len(val) > 0 else None  # too small a fraction to hold anything out
    if data.is_pairs:  # every pair is a class of its own texts: nothing more can go wrong
        return data, train, val
    if len(np.unique(train.y)) < 2:
        raise ValueError(f"{config.data}: the training split holds a single class; metric learning needs at least 2")
    held_out, name = (val, "validation split") if val is not None else (train, "training data")
    counts = np.bincount(held_out.y)
    if not (counts >= 2).any():
        raise ValueError(
            f"{config.data}: the {name} ({len(held_out)} samples) has no class with 2 or more samples, so no "
            f"retrieval metric can be measured; use more samples per class, a larger --val-fraction, or "
            f"--val-fraction 0 (measure on the training data)"
        )
    return data, train, val


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


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: TrainConfig,
    input_shape: Sequence[int],
    head: nn.Module | None = None,
) -> None:
    """Write ``model.pt``: the encoder spec, input shape, embedding size and the weights (CPU tensors).

    ``head``: the classification head of a ``softmax``/``complement`` run, saved as ``"head"`` (its
    state_dict: ``weight`` (K, D), ``bias`` (K,)), so the run can be used as a classifier
    (:func:`metriclearn.pretrained.load_model`).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "encoder": getattr(model, "spec", config.encoder),  # a sentence model folder as an absolute path
        "input_shape": [int(s) for s in input_shape],
        "embedding_dim": int(config.embedding_dim),
        "normalize": bool(config.normalize),
        "encoder_options": config.encoder_kwargs(),
        "state_dict": state,
    }
    if head is not None:
        payload["head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    save_with(path, lambda f: torch.save(payload, f))


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A trained run directory loaded once: its model (eval mode, CPU), configuration and classes.

    Unpacks as ``model, config, classes`` (what :func:`load_run` has always returned).
    """

    path: Path
    model: nn.Module
    config: dict[str, Any]
    classes: list[Any]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.config, self.classes))

    @cached_property
    def fingerprint(self) -> str:
        """:func:`metriclearn.fingerprint.model_fingerprint` of the weights (recorded by indexes)."""
        return model_fingerprint(self.model)

    def embed(
        self,
        data: Any,
        batch_size: int = 1024,
        device: str = "auto",
        *,
        require_labels: bool = False,
        unseen: str = "append",
        layer: str = "embedding",
    ) -> RunEmbeddings:
        """Embed ``data`` (a path, ``"digits"`` or :class:`~metriclearn.data.LabeledData`) with this run.

        Labels are optional (``require_labels``) and classes the run never saw are welcome (``unseen=
        "append"``: they follow the run's classes); ``unseen="error"`` refuses them, naming them, for what
        needs the training classes. ``layer="hidden"`` embeds with the MLP's last hidden layer
        (:class:`metriclearn.hidden.HiddenFeatures`), which transfers better to new classes.
        """
        from metriclearn.data import LabeledData, encode_labels, load_data
        from metriclearn.hidden import select_layer

        model = select_layer(self.model, layer)

        batch_size = check_positive_int(batch_size, "batch_size")
        if isinstance(data, LabeledData):
            values = data.label_values()
            codes, classes = (None, list(self.classes)) if values is None else encode_labels(
                values, self.classes, unseen)
            X, source = data.X, data.source
        else:
            loaded = load_data(data, classes=self.classes, require_labels=require_labels, unseen=unseen)
            X, codes, source = loaded.X, loaded.y, loaded.source
            classes = loaded.classes if codes is not None else list(self.classes)
        if require_labels and codes is None:
            raise ValueError(f"{source} has no labels, but they are needed here")
        text_model, text_data = bool(getattr(self.model, "is_text", False)), not isinstance(X, np.ndarray)
        if text_model != text_data:
            raise ValueError(f"{source}: the data holds {'texts' if text_data else 'numeric features'} but the model "
                             f"in {self.path} embeds {'texts (.jsonl)' if text_model else 'numeric features'}")
        expected = tuple(self.model.input_shape)  # type: ignore[arg-type]
        if isinstance(X, np.ndarray) and expected and tuple(X.shape[1:]) != expected:
            raise ValueError(f"{source}: samples have shape {tuple(X.shape[1:])} but the model in {self.path} "
                             f"expects {expected}")
        device_ = resolve_device(device)
        # under torchrun each rank embeds a strided shard; every rank gets all rows in input order
        model = model.to(device_)  # the encoder, or its hidden layer (--layer)
        embeddings = distributed.embed_strided(lambda part: embed_array(model, part, batch_size, device_), X)
        self.model.to("cpu")
        return RunEmbeddings(embeddings, codes, classes, len(self.classes), source)


@dataclass(frozen=True, eq=False)
class RunEmbeddings:
    """Data embedded by a trained run.

    Attributes
    ----------
    embeddings : (n, D) float32.
    labels : (n,) int64 codes into ``classes``, or ``None`` for unlabelled data.
    classes : the run's classes, then (sorted) the classes of the data that the run never saw.
    known : how many of ``classes`` the run was trained on: codes below it are classes seen in training.
    source : where the data came from.

    Example
    -------
    >>> e = RunEmbeddings(np.zeros((3, 2), np.float32), np.array([0, 2, 3]), ["a", "b", "c", "d"], 2, "new.csv")
    >>> e.present_classes(), e.label_values().tolist()
    ((['a'], ['c', 'd']), ['a', 'c', 'd'])
    """

    embeddings: np.ndarray
    labels: np.ndarray | None
    classes: list[Any]
    known: int
    source: str

    def label_values(self) -> np.ndarray | None:
        """The labels as their values (ints or strings), or ``None``."""
        return None if self.labels is None else np.asarray(self.classes)[self.labels]

    def present_classes(self) -> tuple[list[Any], list[Any]]:
        """``(seen, unseen)``: the classes present in the data that the run was / was not trained on."""
        present = [] if self.labels is None else np.unique(self.labels).tolist()
        return ([self.classes[c] for c in present if c < self.known],
                [self.classes[c] for c in present if c >= self.known])


def load_run(run_dir: str | os.PathLike[str]) -> TrainedRun:
    """Load a trained run directory: ``(model in eval mode on CPU, config dict, classes)`` as a :class:`TrainedRun`.

    A missing, damaged or foreign ``model.pt``, ``config.toml`` or ``classes.json`` is a ``ValueError`` (or
    ``FileNotFoundError``) that names the file.
    """
    from metriclearn.encoders import build_encoder
    from metriclearn.training.config import tomllib

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such run directory", str(run_dir))
    for name in ("model.pt", "config.toml", "classes.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(2, "No such file or directory (not a trained run directory?)", str(run_dir / name))
    try:
        payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
        version = payload["format_version"]
    except Exception as exc:
        raise ValueError(f"{run_dir / 'model.pt'}: not a readable metriclearn model ({exc})") from exc
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(f"{run_dir / 'model.pt'}: format_version {version!r} is not supported")
    model = build_encoder(payload["encoder"], tuple(payload["input_shape"]), payload["embedding_dim"],
                          normalize=payload["normalize"], **payload.get("encoder_options", {}))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    try:
        with open(run_dir / "config.toml", "rb") as fh:
            config = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{run_dir / 'config.toml'} is not valid TOML ({exc}); restore it from the run") from None
    classes = _read_classes(run_dir / "classes.json")
    model.input_shape = tuple(payload["input_shape"])  # type: ignore[assignment]
    return TrainedRun(run_dir, model, config, classes)


def _read_classes(path: Path) -> list[Any]:
    """``classes.json``: a JSON list of distinct ints or strings (label values in code order)."""
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from the run") from None
    if (not isinstance(classes, list) or len(classes) < 2
            or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes)
            or len(set(classes)) != len(classes)):
        raise ValueError(f"{path} must hold a list of at least 2 distinct integer or string labels, "
                         f"got {describe(classes)}")
    return classes


def embed_from_run(
    run_dir: str | os.PathLike[str],
    data: Any,
    batch_size: int = 1024,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """Embed ``data`` (path, ``"digits"`` or LabeledData) with a trained run: :meth:`TrainedRun.embed`.

    Returns ``(embeddings float32 (n, D), labels int64 (n,) or None for unlabelled data, classes)``; labels are
    codes into ``classes``: the run's classes, then the classes it never saw (welcome: learned spaces
    exist to serve new classes).
    """
    embedded = load_run(run_dir).embed(data, batch_size=batch_size, device=device)
    return embedded.embeddings, embedded.labels, embedded.classes


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
