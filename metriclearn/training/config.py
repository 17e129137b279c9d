"""Training configuration: one dataclass, read from and written to TOML.

Every ``metriclearn train`` flag has a key of the same name here (dashes become underscores, ``--loss``
is the list ``loss``); ``--config FILE.toml`` supplies any of them and flags given on the command line
override the file. Loss-specific knobs live in sub-tables of ``loss_options``::

    loss = ["neighborhood", "cache:0.5"]
    epochs = 20

    [loss_options.neighborhood]
    temperature = 0.05

    [loss_options.cache]
    size = 1024

Unknown keys are an error that names them, so a typo never silently falls back to a default.

Example
-------
>>> cfg = TrainConfig.from_dict({"loss": ["neighborhood", "cache:0.5"], "epochs": 3})
>>> cfg.epochs, cfg.loss
(3, ['neighborhood', 'cache:0.5'])
>>> TrainConfig.from_dict({"epoch": 3})  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: unknown config key 'epoch' (known keys: amp, augment, ...)
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from metriclearn._atomic import write_text
from metriclearn._checks import check_choice, check_fraction, check_positive_float, check_positive_int, check_seed
from metriclearn._choices import COMBINES, DEFAULT_LOSS
from metriclearn._device import DEVICES
from metriclearn.training.optim import OPTIMIZERS, SCHEDULERS
from metriclearn.training.splits import VAL_SPLITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MONITORS = ("map_at_r", "precision_at_1", "r_precision", "knn_accuracy", "loss")


@dataclass
class TrainConfig:
    """Everything a training run needs; its field defaults are THE defaults (tuned, see BENCHMARKS.md).

    ``Trainer``'s keyword defaults, ``Trainer.fit(epochs=...)`` and the ``metriclearn train --help`` texts
    read them from here, so a run built in Python with no options equals ``metriclearn train``.

    Parameters
    ----------
    data:
        ``"digits"`` or a path (.npz / .csv / .jsonl) read by :func:`metriclearn.data.load_data`.
    label_column:
        The label column of a ``.csv`` ``data`` (every other column is a numeric feature).
    loss:
        Loss terms as ``NAME`` or ``NAME:WEIGHT``; names from ``neighborhood, snn, prototype, cache,
        softmax, complement``.
    combine:
        How several terms are combined: ``"sum"`` (weighted sum, one step per batch), ``"alternate"``
        (one optimiser step per term on the same batch, in order: the COT recipe) or ``"pcgrad"``.
    loss_options:
        Per-loss keyword arguments, e.g. ``{"neighborhood": {"temperature": 0.1}}``; merged over
        the tuned options of :data:`~metriclearn.losses.registry.LOSSES` (the tuned temperatures), so
        the resolved config shows every value used.
    encoder, embedding_dim, normalize:
        Passed to :func:`metriclearn.encoders.build_encoder`.
    encoder_options:
        Extra keyword arguments of the encoder (TOML only), e.g. for ``encoder = "sentence"`` the table
        ``[encoder_options]`` with ``chunk_size = 32``.
    finetune, unfreeze, encoder_lr, pooling, max_length, gradient_checkpointing:
        Sentence encoders only (:class:`~metriclearn.sentence.SentenceEncoder`): fine-tune the transformer
        (default: frozen, only the head trains), only its top ``unfreeze`` blocks (0: all), at the learning
        rate ``encoder_lr`` (the head and the losses use ``lr``); ``"mean"`` or ``"cls"`` pooling; truncate
        texts to ``max_length`` tokens (0: the model's own limit); recompute activations in the backward
        pass (``gradient_checkpointing``: less memory, more time).
    augment, image_size, workers, skip_bad_images:
        Image data (a folder or a ``.csv`` with a ``path`` column; docs/images.md): the training augmentation
        preset (``none``, ``light``, ``strong``), the side images are decoded at (0: the backbone's input size,
        else the first image's shorter side, at most 224), decoding processes, and whether unreadable images
        are skipped (and listed) rather than an error. ``finetune``/``unfreeze``/``encoder_lr`` apply to vision
        backbones (``hf-vision:DIR``, ``torchvision:...``, ``timm:...``) as to sentence encoders.
    samples_per_class:
        M of the class-balanced batches (K = batch_size // M classes per batch).
    scheduler:
        ``"onecycle"`` and ``"cosine"`` step once per batch; ``"plateau"`` steps once per epoch on the
        validation metric (or the training loss without a validation split).
    grad_clip:
        Maximum global gradient norm; 0 turns clipping off.
    compile:
        ``torch.compile`` the encoder's training forward (and so its backward). Off by default: on CPU it
        lost on both the first epoch (compilation included) and a 15-epoch MNIST run (BENCHMARKS.md).
    patience:
        Early stopping after this many epochs without improvement of ``monitor``; 0 turns it off. The default,
        8, lost no validation MAP@R against training every epoch on 9 small-data runs (digits, breast cancer,
        wine; 3 seeds; 40 epochs) while saving a third of the epochs (BENCHMARKS.md, "Early stopping").
    restore_best:
        With a validation split, ``model.pt`` (and the final metrics) hold the weights of the epoch with the
        best validation ``monitor`` (``checkpoints/best.pt``), not the last epoch's; a last epoch worse than
        the best by more than noise is warned about either way.
    checkpoint_every:
        Also checkpoint every this many batches (0: at the end of each epoch only).
    threads:
        CPU threads for torch (0: torch's default). Small models train fastest on 1 thread, above all on
        a busy machine where spinning OpenMP threads fight over cores.
    val_fraction:
        Share of the data held out for validation metrics; 0 trains on everything.
    val_split:
        ``"samples"``: a stratified share of every class's samples; ``"classes"``: that share of whole
        classes, never seen in training, so early stopping, ``best.pt`` and the plateau schedule select
        on new classes (:mod:`metriclearn.training.splits`).
    """

    data: str = "digits"
    label_column: str = "label"
    loss: list[str] = field(default_factory=lambda: list(DEFAULT_LOSS))
    combine: str = "sum"
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoder: str = "mlp"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    finetune: bool = False
    unfreeze: int = 0
    encoder_lr: float = 2e-5
    pooling: str = "mean"
    max_length: int = 0
    gradient_checkpointing: bool = False
    augment: str = "none"
    image_size: int = 0
    workers: int = 0
    skip_bad_images: bool = False
    embedding_dim: int = 64
    normalize: bool = True
    epochs: int = 20
    batch_size: int = 128
    samples_per_class: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "onecycle"
    grad_clip: float = 10.0
    amp: bool = True
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    val_fraction: float = 0.2
    val_split: str = "samples"
    patience: int = 8
    restore_best: bool = True
    checkpoint_every: int = 0
    monitor: str = "map_at_r"
    report: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def _pair_data(self) -> bool:
        """Whether ``data`` is a pair ``.jsonl`` (its first record has an ``anchor``); unreadable: not known, False
        (loading the data reports it)."""
        from metriclearn.data import is_pair_file

        path = Path(str(self.data))
        try:
            return path.suffix == ".jsonl" and path.is_file() and is_pair_file(path)
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    def validate(self) -> TrainConfig:
        """Check every field; raises ``ValueError``/``TypeError`` naming the key and the value."""
        if not isinstance(self.data, (str, os.PathLike)) or not str(self.data):
            raise ValueError(f"data must be 'digits' or a file path, got {self.data!r}")
        self.data = str(self.data)
        if not isinstance(self.label_column, str) or not self.label_column.strip():
            raise ValueError(f"label_column must be a column name, got {self.label_column!r}")
        if isinstance(self.loss, str):
            self.loss = [self.loss]
        if not isinstance(self.loss, (list, tuple)) or not self.loss:
            raise ValueError(f"loss must be a non-empty list of NAME[:WEIGHT], got {self.loss!r}")
        # torch: when a config is made, not for --help
        from metriclearn.losses.registry import LOSSES, parse_loss_term
        from metriclearn.training.objectives import build_loss

        # canonical spelling ("Cache:.50" -> "cache:0.5", "snn:1" -> "snn"), so equal settings compare equal
        self.loss = [name if weight == 1 else f"{name}:{weight!r}"
                     for name, weight in (parse_loss_term(str(term)) for term in self.loss)]
        check_choice(self.combine, COMBINES, "combine")
        if not isinstance(self.loss_options, dict):
            raise TypeError(f"loss_options must be a table of tables, got {self.loss_options!r}")

        for name, options in self.loss_options.items():
            check_choice(name, tuple(LOSSES), "loss_options key")
            if not isinstance(options, dict):
                raise TypeError(f"loss_options.{name} must be a table, got {options!r}")
        tuned = {name: dict(spec.tuned) for name, spec in LOSSES.items() if spec.tuned}
        given = [name for name, options in self.loss_options.items() if options]
        self.loss_options = {
            name: {**tuned.get(name, {}), **self.loss_options.get(name, {})}
            for name in [*tuned, *(k for k in self.loss_options if k not in tuned)]
        }
        for name in given:  # the loss checks its own options: now, so that from_toml can name the file
            try:
                build_loss(name, check_positive_int(self.embedding_dim, "embedding_dim"), 2, self.loss_options[name])
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"loss_options.{name}: {exc}") from None
        check_encoder_spec(self.encoder)
        if not isinstance(self.encoder_options, dict):
            raise TypeError(f"encoder_options must be a table, got {self.encoder_options!r}")
        self._validate_text_options()
        check_positive_int(self.embedding_dim, "embedding_dim")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.samples_per_class, "samples_per_class")
        if self._pair_data():  # batch_size counts whole pairs; samples_per_class does not apply
            if self.batch_size < 2:
                raise ValueError(f"batch_size ({self.batch_size}) must hold at least 2 pairs: each anchor's "
                                 "negatives are the other pairs")
        elif self.batch_size % self.samples_per_class or self.batch_size < 2 * self.samples_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of samples_per_class ({self.samples_per_class}) "
                f"holding at least 2 classes"
            )
        self.lr = check_positive_float(self.lr, "lr")
        self.weight_decay = check_positive_float(self.weight_decay, "weight_decay", allow_zero=True)
        self.grad_clip = check_positive_float(self.grad_clip, "grad_clip", allow_zero=True)
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        check_choice(self.scheduler, SCHEDULERS, "scheduler")
        check_choice(self.device, DEVICES, "device")
        check_choice(self.monitor, MONITORS, "monitor")
        check_choice(self.val_split, VAL_SPLITS, "val_split")
        check_seed(self.seed, "seed")
        check_positive_int(self.patience, "patience", allow_zero=True)
        check_positive_int(self.threads, "threads", allow_zero=True)
        check_positive_int(self.checkpoint_every, "checkpoint_every", allow_zero=True)
        self.val_fraction = check_fraction(self.val_fraction, "val_fraction")
        if self.val_fraction >= 1:
            raise ValueError(f"val_fraction must be below 1, got {self.val_fraction}")
        from metriclearn.images.transforms import AUGMENTS

        check_choice(self.augment, AUGMENTS, "augment")
        check_positive_int(self.image_size, "image_size", allow_zero=True)
        check_positive_int(self.workers, "workers", allow_zero=True)
        if self.augment != "none" and (self.is_text_encoder or self.encoder.strip().lower().startswith("mlp")):
            raise ValueError(f"augment={self.augment!r} applies to images (--encoder cnn or a vision backbone), "
                             f"got encoder {self.encoder!r}")
        for name in ("normalize", "amp", "compile", "report", "restore_best", "finetune", "gradient_checkpointing",
                     "skip_bad_images"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        return self

    def _validate_text_options(self) -> None:
        from metriclearn.sentence import POOLINGS

        check_positive_int(self.unfreeze, "unfreeze", allow_zero=True)
        check_positive_int(self.max_length, "max_length", allow_zero=True)
        self.encoder_lr = check_positive_float(self.encoder_lr, "encoder_lr")
        check_choice(self.pooling, POOLINGS, "pooling")
        given = [name for name in ("finetune", "unfreeze", "pooling", "max_length", "gradient_checkpointing")
                 if getattr(self, name) != _TEXT_DEFAULTS[name]
                 and not (self.is_vision_encoder and name in ("finetune", "unfreeze"))]
        if given and not self.is_text_encoder:
            raise ValueError(f"{', '.join(given)} apply to sentence encoders only (--encoder sentence[:DIR]), "
                             f"got encoder {self.encoder!r}")
        for name in ("unfreeze", "gradient_checkpointing"):
            if getattr(self, name) and not self.finetune:
                raise ValueError(f"{name}={getattr(self, name)!r} needs finetune = true (--finetune): a frozen "
                                 f"transformer has nothing to {'unfreeze' if name == 'unfreeze' else 'checkpoint'}")
        clash = [k for k in ("freeze", "unfreeze", "pooling", "max_length", "gradient_checkpointing")
                 if k in self.encoder_options and (k != "freeze" or self.finetune)
                 and (k == "freeze" or getattr(self, k) != _TEXT_DEFAULTS[k])]
        if clash:
            raise ValueError(f"encoder_options {clash[0]!r} and the setting of the same name (--finetune, "
                             f"--{clash[0].replace('_', '-')}) are both given; use one")

    @property
    def is_text_encoder(self) -> bool:
        """Whether ``encoder`` is a sentence (text) encoder spec."""
        return isinstance(self.encoder, str) and self.encoder.strip().lower().partition(":")[0] == "sentence"

    @property
    def is_vision_encoder(self) -> bool:
        """Whether ``encoder`` names a pretrained vision backbone (``hf-vision:``, ``torchvision:``, ``timm:``)."""
        from metriclearn.images.backbones import is_vision_spec

        return is_vision_spec(self.encoder)

    def encoder_kwargs(self) -> dict[str, Any]:
        """The encoder's keyword arguments: ``encoder_options`` plus the text settings that differ from their
        defaults (``finetune`` → ``freeze=False``), as ``model.pt`` records them.

        >>> TrainConfig(encoder="sentence", finetune=True, unfreeze=2).encoder_kwargs()
        {'freeze': False, 'unfreeze': 2}
        """
        options = dict(self.encoder_options)
        if self.finetune:
            options["freeze"] = False
        for name in ("unfreeze", "pooling", "max_length", "gradient_checkpointing"):
            if getattr(self, name) != _TEXT_DEFAULTS[name]:
                options[name] = getattr(self, name)
        if self.augment != "none":
            options["augment"] = self.augment
        return options

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def keys(cls) -> list[str]:
        """The valid top-level keys, sorted."""
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a mapping; unknown keys raise ``ValueError`` naming them."""
        known = set(cls.keys())
        unknown = sorted(set(values) - known)
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            plural = "s" if len(unknown) > 1 else ""
            raise ValueError(f"unknown config key{plural} {names} (known keys: {', '.join(cls.keys())})")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a TOML file; syntax errors and unknown keys name the file."""
        values = read_toml(path)
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (deep copy)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as TOML text (round-trips through :meth:`from_dict`)."""
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the resolved config as TOML."""
        write_text(path, self.to_toml())

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def terms(self) -> list[tuple[str, float]]:
        """``loss`` parsed into ``(name, weight)`` pairs (:func:`~metriclearn.losses.registry.parse_loss_term`)."""
        from metriclearn.losses.registry import parse_loss_term

        return [parse_loss_term(term) for term in self.loss]


_TEXT_DEFAULTS: dict[str, Any] = {"finetune": False, "unfreeze": 0, "pooling": "mean", "max_length": 0,
                                  "gradient_checkpointing": False}


def check_encoder_spec(spec: Any) -> str:
    """Check the syntax of an encoder spec (``mlp``, ``mlp:512,256``, ``cnn:32,64``, ``sentence[:PATH]``).

    >>> check_encoder_spec("mlp:32")
    'mlp:32'
    >>> check_encoder_spec("bogus")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: encoder must be one of 'mlp', ...; got 'bogus'
    """
    from metriclearn.encoders import SPEC_FORMS

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"encoder must be one of {SPEC_FORMS}; got {spec!r}")
    name, sep, args = spec.strip().partition(":")
    sizes_ok = not sep or all(part.strip().isdigit() and int(part) > 0 for part in args.split(","))
    if name.lower() in ("sentence", "hf-vision", "torchvision", "timm"):
        sizes_ok = not sep or bool(args.strip())
        sizes_ok = sizes_ok and (name.lower() == "sentence" or bool(sep))
    if name.lower() not in ("mlp", "cnn", "sentence", "hf-vision", "torchvision", "timm") or not sizes_ok:
        raise ValueError(f"encoder must be one of {SPEC_FORMS}; got {spec!r}")
    return spec


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keys a TOML file sets, as written (no defaults filled in); syntax errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 TOML file ({exc})") from exc


def __getattr__(name: str) -> Any:
    """``parse_loss_term`` moved to :mod:`metriclearn.losses.registry` (which imports torch): the old import path
    keeps working, imported on first use so that ``train --help`` stays torch-free."""
    if name == "parse_loss_term":
        from metriclearn.losses.registry import parse_loss_term

        return parse_loss_term
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
