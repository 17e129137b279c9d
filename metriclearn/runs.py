"""The run directory: what ``metriclearn train`` writes and every inference command reads.

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

This module writes ``model.pt`` (:func:`save_model`) and loads a finished run (:func:`load_run` →
:class:`TrainedRun`, whose :meth:`~TrainedRun.embed` gives :class:`RunEmbeddings`); it does not import the
trainer, so ``index query``, ``classify`` and ``embed`` start without it. Training a run:
:func:`metriclearn.training.run.train_run` (guide: docs/training.md).

Everything loads with ``torch.load(weights_only=True)``; every file is written atomically.

Example
-------
>>> import tempfile
>>> from metriclearn.encoders import build_encoder
>>> from metriclearn.training import TrainConfig
>>> run_dir = Path(tempfile.mkdtemp())
>>> config = TrainConfig(encoder="mlp:8", embedding_dim=4)
>>> save_model(run_dir / "model.pt", build_encoder("mlp:8", (64,), 4), config, (64,))
>>> config.save(run_dir / "config.toml"); _ = (run_dir / "classes.json").write_text(json.dumps(list(range(10))))
>>> run = load_run(run_dir)  # untrained weights: the layout, not a useful model
>>> run.embed("digits", device="cpu").embeddings.shape
(1797, 4)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from metriclearn import _distributed as distributed
from metriclearn._atomic import save_with
from metriclearn._checks import check_positive_int, describe
from metriclearn._device import resolve_device
from metriclearn._embedding import embed_array
from metriclearn.fingerprint import model_fingerprint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ModelSettings(Protocol):
    """What :func:`save_model` reads of a configuration (a :class:`~metriclearn.training.TrainConfig` has it)."""

    encoder: str
    embedding_dim: int
    normalize: bool

    def encoder_kwargs(self) -> dict[str, Any]: ...


MODEL_FORMAT_VERSION = 1


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: ModelSettings,
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

    def image_options(self, workers: int = 0, skip_bad: bool = False) -> Any:
        """How image data is decoded for this run: at the size and channels it was trained on
        (:class:`metriclearn.images.ImageOptions`; for a run on other data, the automatic options)."""
        from metriclearn.images import ImageOptions

        shape = tuple(getattr(self.model, "input_shape", ()))
        if len(shape) == 3 and shape[0] in (1, 3):
            return ImageOptions(size=int(shape[-1]), channels=int(shape[0]), workers=workers, skip_bad=skip_bad)
        return ImageOptions(workers=workers, skip_bad=skip_bad)

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
            loaded = load_data(data, classes=self.classes, require_labels=require_labels, unseen=unseen,
                               images=self.image_options())
            X, codes, source = loaded.X, loaded.y, loaded.source
            classes = loaded.classes if codes is not None else list(self.classes)
        if require_labels and codes is None:
            raise ValueError(f"{source} has no labels, but they are needed here")
        text_model, text_data = bool(getattr(self.model, "is_text", False)), not isinstance(X, np.ndarray)
        if text_model != text_data:
            raise ValueError(f"{source}: the data holds {'texts' if text_data else 'numeric features'} but the model "
                             f"in {self.path} embeds {'texts (.jsonl)' if text_model else 'numeric features'}")
        # load_run sets input_shape on every model it returns; nn.Module types an unknown attribute as Tensor | Module
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
    model.input_shape = tuple(payload["input_shape"])  # type: ignore[assignment]  # an attribute of our own on the model
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
