"""Classifiers people already have, loaded from disk: a metriclearn run, a Hugging Face directory, TorchScript.

:func:`load_model` tells them apart by what the path holds:

- a **metriclearn run directory** (``model.pt`` + ``config.toml`` + ``classes.json``) trained with a
  classification head (``--loss softmax`` or ``complement``): the classifier is ``encoder → head``
  (``nn.Sequential`` with children ``encoder`` and ``head``), classes from ``classes.json``;
- a **Hugging Face model directory** (``config.json``, weights, tokenizer files): read with
  ``AutoModelForSequenceClassification`` and ``AutoTokenizer``, ``local_files_only=True`` (never a
  download) and ``trust_remote_code=False`` (a folder whose config asks for its own code is refused,
  :mod:`metriclearn._hf`); classes from ``config.id2label``; a directory whose classification head is not
  in the weights is refused (its head would be random);
- a **TorchScript file** (``torch.jit.save``): classes are the output columns 0 … K−1.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metriclearn._hf import SAFE_LOAD, check_model_folder


@dataclass
class LoadedModel:
    """A classifier and what is needed to feed it."""

    model: nn.Module
    kind: str  # "run", "huggingface" or "torchscript"
    classes: list[Any] | None  # output column names; None: 0 … K−1
    tokenizer: Any = None  # Hugging Face tokenizer (text models)
    text: bool = False  # inputs are texts (.jsonl data)
    input_shape: tuple[int, ...] = ()  # per-sample shape a run's encoder expects (() when unknown)


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load the classifier at ``path`` (see the module docstring); ``ValueError`` naming the path otherwise."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model {str(path)!r} does not exist")
    if path.is_dir():
        if (path / "model.pt").is_file() and (path / "config.toml").is_file():
            return _load_run(path)
        if (path / "config.json").is_file():
            return _load_huggingface(path)
        raise ValueError(
            f"model directory {str(path)!r} holds neither config.json (a Hugging Face model) nor model.pt and "
            "config.toml (a metriclearn run)"
        )
    return _load_torchscript(path)


def _load_run(path: Path) -> LoadedModel:
    from metriclearn.runs import load_run

    encoder, _, classes = load_run(path)
    payload = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    state = payload.get("head")
    if state is None:
        raise ValueError(
            f"run {str(path)!r} has no classification head; train it with --loss softmax or --loss complement "
            "to use it as a classifier"
        )
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    if head.out_features != len(classes):
        raise ValueError(f"run {str(path)!r}: the head has {head.out_features} outputs but classes.json "
                         f"{len(classes)} classes")
    model = nn.Sequential(OrderedDict(encoder=encoder, head=head)).eval()
    text = bool(getattr(encoder, "is_text", False))
    if text and hasattr(encoder, "cache_size"):
        encoder.cache_size = 0  # a cached text skips the transformer, whose blocks are candidate layers
    return LoadedModel(model, "run", list(classes), text=text, input_shape=tuple(getattr(encoder, "input_shape", ())))


def _load_huggingface(path: Path) -> LoadedModel:
    try:
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ValueError("a Hugging Face model needs transformers: pip install 'metriclearn[text]'") from None
    config = check_model_folder(path)  # refuses a folder that asks to run its own code, before any prompt
    logging = transformers.utils.logging
    verbosity, bar_was_on = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # our own message below replaces "Some weights ... newly initialized"
    logging.disable_progress_bar()  # no "Loading weights" bar on every load
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), **SAFE_LOAD, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), **SAFE_LOAD)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"Hugging Face model directory {str(path)!r} could not be loaded offline: {first}") from None
    except RuntimeError as exc:  # transformers: "You set `ignore_mismatched_sizes` to `False` ..."
        if "mismatched" not in str(exc):
            raise
        why = ("it has no id2label (nor num_labels), so transformers assumes 2 classes"
               if not (config.get("id2label") or config.get("num_labels")) else "its id2label names another number")
        raise ValueError(f"Hugging Face model directory {str(path)!r}: the classifier weights do not match "
                         f"config.json ({why}); give config.json an id2label with one name per output class") from None
    finally:
        logging.set_verbosity(verbosity)
        if bar_was_on:
            logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"Hugging Face model directory {str(path)!r} ({', '.join(config.get('architectures') or ['?'])}) has "
            f"no trained sequence-classification weights for {', '.join(missing[:4])}; save a fine-tuned "
            "classifier with save_pretrained"
        )
    return LoadedModel(model.eval(), "huggingface", [model.config.id2label[i] for i in sorted(model.config.id2label)],
                       tokenizer=tokenizer, text=True)


def _load_torchscript(path: Path) -> LoadedModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: TorchScript is still what we read
            model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model file {str(path)!r} is not a TorchScript file ({first})") from None
    return LoadedModel(model.eval(), "torchscript", None)
