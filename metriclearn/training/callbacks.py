"""Callbacks: everything around the training loop that is not the loop itself.

The :class:`~metriclearn.training.Trainer` calls, in this order::

    on_fit_start → [on_epoch_start → on_batch_end × batches → on_validation_end → on_epoch_end] × epochs
    → on_fit_end

Each hook receives the trainer (``trainer.model``, ``trainer.epoch``, ``trainer.global_step``,
``trainer.history``, ``trainer.should_stop`` ...). A callback with state (early stopping's counter,
the best metric) implements ``state_dict``/``load_state_dict``; it is saved in every checkpoint under
its :attr:`Callback.state_key` (the class name plus the settings that tell two instances apart, as in
Lightning), so a resumed run continues exactly where the killed one stopped even when callbacks were
added, removed or reordered in between.

Example
-------
>>> class CountBatches(Callback):
...     def __init__(self):
...         self.n = 0
...     def on_batch_end(self, trainer, batch_idx, logs):
...         self.n += 1
>>> CountBatches().n
0
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metriclearn._atomic import save_with, write_text

if TYPE_CHECKING:  # pragma: no cover
    from metriclearn.training.trainer import Trainer

Logs = dict[str, float]


class Callback:
    """Base class: override the hooks you need; all default to doing nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the batches of ``epoch`` (0-based)."""

    def on_batch_end(self, trainer: Trainer, batch_idx: int, logs: Mapping[str, float]) -> None:
        """After the optimiser step(s) of batch ``batch_idx`` (0-based within the epoch); ``logs`` holds loss, term
        losses, grad_norm, lr."""

    def on_validation_end(self, trainer: Trainer, metrics: Logs) -> None:
        """After the epoch's validation metrics (every epoch; ``metrics`` is empty without a val split)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        """After the epoch; ``logs`` holds train loss, lr and the validation metrics prefixed ``val_``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch (or early stop)."""

    @property
    def state_key(self) -> str:
        """The name this callback's state is checkpointed under; stable across runs and list positions.

        The class name by default; callbacks whose instances differ by their settings add them
        (see :func:`state_key`). Two callbacks with state must not share a key.
        """
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def state_key(callback: Callback, **settings: Any) -> str:
    """``ClassName{'key': value, ...}``: a callback's class and the settings that identify it.

    >>> state_key(EarlyStopping(), monitor="loss", mode="min")
    "EarlyStopping{'monitor': 'loss', 'mode': 'min'}"
    """
    return f"{type(callback).__qualname__}{settings!r}"


class CSVLogger(Callback):
    """One row per epoch in ``path`` (epoch, step, loss, per-term losses, lr, val_* metrics, seconds).

    The whole file is rewritten atomically after every epoch, so a crash always leaves a valid CSV;
    on resume, rows of epochs after the checkpoint are dropped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[Logs] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.rows = [row for row in _read_csv(self.path) if row.get("epoch", math.inf) <= trainer.epoch]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        self.rows.append({"epoch": epoch + 1, "step": trainer.global_step, **logs})
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        if trainer.is_main_process:
            write_text(self.path, buffer.getvalue())


def _read_csv(path: Path) -> list[Logs]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard (per batch: loss, grad_norm, lr; per epoch: everything). Needs ``tensorboard``."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without tensorboard

        self._writer_cls = SummaryWriter
        self.log_dir = str(log_dir)
        self.writer: Any = None

    @staticmethod
    def available() -> bool:
        """Whether the ``tensorboard`` package is installed."""
        try:
            import torch.utils.tensorboard  # noqa: F401 - only whether it imports
        except ImportError:
            return False
        return True

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main_process:
            self.writer = self._writer_cls(self.log_dir, purge_step=trainer.global_step or None)

    def on_batch_end(self, trainer: Trainer, batch_idx: int, logs: Mapping[str, float]) -> None:
        if self.writer is not None:
            for key in ("loss", "grad_norm", "lr"):
                if key in logs:
                    self.writer.add_scalar(f"batch/{key}", logs[key], trainer.global_step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor`` is a key of the epoch logs (``val_map_at_r``, ``loss`` ...); ``mode`` is ``"max"`` or
    ``"min"``. The best value and the counter are checkpointed.
    """

    def __init__(self, monitor: str = "val_map_at_r", patience: int = 5, mode: str = "max", min_delta: float = 0.0):
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            trainer.log(f"early stopping at epoch {epoch + 1}: {self.monitor} has not improved for {self.wait} epochs")

    @property
    def state_key(self) -> str:
        return state_key(self, monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], int(state["wait"])


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


class ModelCheckpoint(Callback):
    """After every epoch write ``last.pt`` (the full training state), and ``best.pt`` when ``monitor`` improves.

    With ``every_n_steps`` > 0, ``last.pt`` is also written every that many batches, so a killed run
    loses at most that many steps (resume continues with the next batch of the epoch).
    Both are written atomically (temporary file + rename) and load with ``torch.load(weights_only=True)``.
    Runs after the other callbacks of the epoch, so their state (early stopping ...) is in the file.
    """

    def __init__(self, directory: str | os.PathLike[str], monitor: str = "val_map_at_r", mode: str = "max",
                 every_n_steps: int = 0) -> None:
        self.directory = Path(directory)
        self.monitor, self.mode = monitor, mode
        self.every_n_steps = every_n_steps
        self.best: float | None = None

    @property
    def state_key(self) -> str:
        return state_key(self, monitor=self.monitor, mode=self.mode)

    def on_batch_end(self, trainer: Trainer, batch_idx: int, logs: Mapping[str, float]) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.is_main_process:
            self.save(self.last_path, trainer.state_dict())

    @staticmethod
    def save(path: Path, state: dict[str, Any]) -> None:
        """Write one checkpoint atomically (a killed write leaves the previous file and a stale temp file)."""
        save_with(path, lambda f: torch.save(state, f))

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        value = logs.get(self.monitor)
        improved = value is not None and _improved(value, self.best, self.mode, 0.0)
        if improved:
            self.best = value
        if not trainer.is_main_process:
            return
        state = trainer.state_dict()
        if improved:  # best.pt first: a kill in between then replays this epoch and rewrites it identically
            self.save(self.best_path, state)
        self.save(self.last_path, state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class HealthMonitor(Callback):
    """Training-health checks (the "seed recipe"): norms, dead ReLUs, first-batch loss, NaN/inf.

    * logs ``grad_norm`` (global, before clipping), ``weight_norm`` and ``dead_relu`` (share of ReLU
      units that output 0 for every sample of the batch, measured with forward hooks every
      ``every`` batches) into the epoch logs;
    * compares the first batch's loss of each term (read from the step's logs) with its chance level
      for an untrained model (the ``chance`` of its row in :data:`~metriclearn.losses.registry.LOSSES`,
      via :func:`~metriclearn.losses.registry.expected_initial_loss`; kept in ``initial``) and warns
      when it is more than
      ``tolerance`` (relative) above it — over-confident wrong predictions before any training point to a
      bug in the labels, the input scale or the initialisation. Below chance is fine (a random encoder
      already groups easy classes, and a low temperature sharpens random distances) and only logged;
    * warns (``RuntimeWarning``) when the gradient norm is NaN/inf or above ``max_grad_norm``.

    A NaN/inf loss itself stops training in the trainer with a ``FloatingPointError``.
    """

    def __init__(self, every: int = 10, tolerance: float = 1.0, max_grad_norm: float = 1e3) -> None:
        self.every, self.tolerance, self.max_grad_norm = every, tolerance, max_grad_norm
        self.initial: dict[str, tuple[float, float | None]] = {}
        self._handles: list[Any] = []
        self._dead: list[float] = []
        self._epoch: dict[str, list[float]] = {}
        self._capture = False

    # -- dead ReLU units through forward hooks
    def on_fit_start(self, trainer: Trainer) -> None:
        for module in trainer.model.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                self._handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._capture and module.training and output.dim() >= 2 and output.shape[0] > 1:
            active = output.detach().flatten(2).amax(dim=-1) if output.dim() > 2 else output.detach()  # (B, C)
            self._dead.append(float((active.amax(dim=0) <= 0).float().mean()))

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch = {"grad_norm": [], "weight_norm": [], "dead_relu": []}
        self._capture = True

    def on_batch_end(self, trainer: Trainer, batch_idx: int, logs: Mapping[str, float]) -> None:
        if trainer.global_step == 1 and not self.initial:
            self._check_initial(trainer, logs)
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None:
            self._epoch["grad_norm"].append(grad_norm)
            if not math.isfinite(grad_norm):
                self._warn(trainer, f"gradient norm is {grad_norm} at step {trainer.global_step}")
            elif grad_norm > self.max_grad_norm:
                self._warn(trainer, f"gradient norm {grad_norm:.3g} exceeds {self.max_grad_norm:g} "
                                    f"at step {trainer.global_step}")
        if self._dead:
            self._epoch["dead_relu"].append(sum(self._dead) / len(self._dead))
            self._dead = []
        self._capture = (batch_idx + 1) % self.every == 0
        if batch_idx % self.every == 0:
            with torch.no_grad():
                norm = math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in trainer.parameters()))
            self._epoch["weight_norm"].append(norm)
            if not math.isfinite(norm):
                self._warn(trainer, f"weight norm is {norm} at step {trainer.global_step}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        for key, values in self._epoch.items():
            if values:
                logs[key] = sum(values) / len(values) if key != "weight_norm" else values[-1]

    def on_fit_end(self, trainer: Trainer) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_initial(self, trainer: Trainer, logs: Mapping[str, float]) -> None:
        """Compare each term's loss of the first step (in ``logs``) with its chance level."""
        from metriclearn.losses.registry import expected_initial_loss

        # pair data: a batch is pairs × texts per pair, each pair a "class" (Trainer.batch_layout)
        layout = getattr(trainer, "batch_layout", (trainer.batch_size, trainer.samples_per_class))
        batch_size = min(layout[0], trainer.num_samples or layout[0])
        for name in trainer.objective.names:
            if name not in logs:
                continue
            observed = float(logs[name])
            expected = expected_initial_loss(name, batch_size, layout[1], trainer.num_classes)
            if getattr(trainer.objective.terms[name], "same_side", True) is False:  # pairs, anchors vs documents
                width = max(layout[0] // max(trainer.batch_size, 1), 2)  # texts per pair
                pairs = batch_size // width  # an anchor meets pairs·(width − 1) documents, a positive `pairs` anchors
                expected = (math.log(pairs * (width - 1)) + math.log(pairs)) / 2 if pairs >= 2 else None
            self.initial[name] = (observed, expected)
            if expected is None or expected <= 0:
                continue
            message = f"first-batch {name} loss {observed:.4f}, chance level ≈ {expected:.4f}"
            if observed > (1 + self.tolerance) * expected:
                self._warn(trainer, message + " — far above chance for an untrained model: check the labels, "
                           "the input scale, the initialisation and the temperature")
            elif observed < expected:
                trainer.log(message + " (below chance, fine: the untrained encoder already groups some classes, "
                            "or a low temperature sharpens random distances)")
            else:
                trainer.log(message + " (ok)")

    def _warn(self, trainer: Trainer, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        trainer.log("warning: " + message)

    def state_dict(self) -> dict[str, Any]:
        return {"initial": {k: list(v) for k, v in self.initial.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = {k: (v[0], v[1]) for k, v in state.get("initial", {}).items()}


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda t, e, logs: ...)``."""

    def __init__(self, **hooks: Any) -> None:
        for name, fn in hooks.items():
            if not hasattr(Callback, name) or not name.startswith("on_"):
                raise ValueError(f"unknown callback hook {name!r}")
            setattr(self, name, fn)


__all__ = [
    "Callback",
    "CSVLogger",
    "EarlyStopping",
    "HealthMonitor",
    "LambdaCallback",
    "ModelCheckpoint",
    "TensorBoardLogger",
]
