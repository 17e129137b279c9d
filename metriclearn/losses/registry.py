"""The loss registry: every loss that ``--loss NAME`` / ``loss = [...]`` can name, and how a term is written.

One row of :data:`LOSSES` (a :class:`LossSpec`) tells the trainer, :class:`~metriclearn.training.TrainConfig`
and ``metriclearn train`` everything about a loss: its class, the constructor arguments the data fills in, the
tuned options used when it is built by name, its first-batch chance level and whether it sits on a
classification head. A term is ``NAME`` or ``NAME:WEIGHT`` (:func:`parse_loss_term`, the one parser of terms);
:data:`DEFAULT_LOSS` is the objective of ``metriclearn train`` with no ``--loss``. Building a loss from its row:
:func:`metriclearn.training.objectives.build_loss` (guide: docs/losses.md, "Adding a loss").

Example
-------
>>> parse_loss_term("Cache:.50"), LOSSES["neighborhood"].tuned["temperature"]
(('cache', 0.5), 0.15)
>>> [parse_loss_term(term) for term in DEFAULT_LOSS]
[('neighborhood', 1.0), ('uniformity', 0.05)]
>>> round(expected_initial_loss("softmax", 128, 8, 10), 4)  # log(10): uniform over 10 classes
2.3026
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from metriclearn import losses
from metriclearn._checks import check_choice, check_positive_float
from metriclearn._choices import COMBINES, DEFAULT_LOSS  # importable without torch, for the CLI's --help

__all__ = ["COMBINES", "DEFAULT_LOSS", "LOSSES", "LOSS_NAMES", "LossSpec", "chance_over_classes",
           "chance_over_neighbours", "expected_initial_loss", "parse_loss_term"]


def chance_over_classes(batch_size: int, samples_per_class: int, num_classes: int) -> float | None:
    """First-batch loss of a softmax over K classes with an untrained model: uniform, so ``log K``."""
    return math.log(num_classes) if num_classes >= 2 else None


def chance_over_neighbours(batch_size: int, samples_per_class: int, num_classes: int) -> float | None:
    """First-batch loss of a softmax over the B − 1 other batch members, M − 1 of them positives.

    With an untrained model every candidate looks alike, so p_i ≈ (M − 1)/(B − 1) and the loss ≈
    ``log((B − 1)/(M − 1))`` (an empty cache adds nothing on the first batch).
    """
    if samples_per_class < 2 or batch_size < 2:
        return None
    return math.log((batch_size - 1) / (samples_per_class - 1))


@dataclass(frozen=True)
class LossSpec:
    """One row of :data:`LOSSES`: everything the trainer, the config and the CLI need to know of a loss.

    Attributes
    ----------
    cls:
        The loss class; on a head (``head=True``) it takes logits (B, K) instead of embeddings.
    required:
        Constructor arguments the trainer fills in from the data: ``"dim"`` (embedding size) and/or
        ``"num_classes"``; they cannot be set in ``loss_options``.
    tuned:
        Options used when the loss is built by name (:func:`~metriclearn.training.objectives.build_loss`,
        ``--loss NAME``), over the class defaults — measured in BENCHMARKS.md. ``loss_options`` override them.
    chance:
        ``f(batch_size, samples_per_class, num_classes)`` → the expected first-batch loss of an
        untrained model (checked by :class:`~metriclearn.training.callbacks.HealthMonitor`), or ``None``.
    head:
        Whether the loss sits on a linear classification head over the embedding (shared by all such terms).
    """

    cls: Callable[..., nn.Module]
    required: tuple[str, ...] = ()
    tuned: Mapping[str, Any] = field(default_factory=dict)
    chance: Callable[[int, int, int], float | None] | None = None
    head: bool = False


# Tuned options (BENCHMARKS.md, MNIST-5000 + digits): cosine neighbourhood softmax at T = 0.15 on
# L2-normalised embeddings. SNN works on squared distances, 2(1 - cos) on unit vectors: T = 0.3 matches.
LOSSES: dict[str, LossSpec] = {
    "neighborhood": LossSpec(losses.NeighborhoodSoftmaxLoss, tuned={"temperature": 0.15, "distance": "cosine"},
                             chance=chance_over_neighbours),
    "snn": LossSpec(losses.SoftNearestNeighborLoss, tuned={"temperature": 0.3}, chance=chance_over_neighbours),
    "prototype": LossSpec(losses.PrototypeLoss, required=("num_classes", "dim"), chance=chance_over_classes),
    "cache": LossSpec(losses.CacheLoss, required=("dim",), chance=chance_over_neighbours),
    "softmax": LossSpec(nn.CrossEntropyLoss, chance=chance_over_classes, head=True),
    "complement": LossSpec(losses.ComplementEntropyLoss, required=("num_classes",), head=True),
    # label-free regulariser (Wang & Isola 2020); BENCHMARKS.md "Unseen classes" measured its weight, not t
    "uniformity": LossSpec(losses.UniformityLoss),
}
LOSS_NAMES = tuple(LOSSES)  # the built-in names (validation reads LOSSES itself; --help: _choices.BUILTIN_LOSSES)


def parse_loss_term(term: str | tuple[str, float] | list[Any]) -> tuple[str, float]:
    """The one parser of loss terms: ``"NAME"``, ``"NAME:WEIGHT"`` or ``(NAME, WEIGHT)`` → ``(name, weight)``.

    The name is lower-cased and checked against :data:`LOSSES` (read at call time: a row added later counts);
    the weight is a positive number (default 1). ``--loss``, ``TrainConfig.loss`` and ``build_objective`` all
    call it; anything else is a ``TypeError`` that shows the term.

    >>> parse_loss_term("cache:0.5")
    ('cache', 0.5)
    >>> parse_loss_term("neighborhood"), parse_loss_term(("Softmax", 2))
    (('neighborhood', 1.0), ('softmax', 2.0))
    """
    if isinstance(term, (tuple, list)) and len(term) == 2:
        name, weight = term
        return check_choice(str(name).strip().lower(), tuple(LOSSES), "loss name"), check_positive_float(
            weight, f"weight of loss {name!r}")
    if not isinstance(term, str):
        raise TypeError(f"a loss term must be 'NAME', 'NAME:WEIGHT' or (NAME, WEIGHT), got {term!r}")
    name, sep, weight_text = term.partition(":")
    name = name.strip().lower()
    check_choice(name, tuple(LOSSES), "loss name")
    if not sep:
        return name, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise ValueError(f"loss weight in {term!r} must be a number, got {weight_text!r}") from None
    return name, check_positive_float(weight, f"loss weight in {term!r}")


def expected_initial_loss(name: str, batch_size: int, samples_per_class: int, num_classes: int) -> float | None:
    """The loss a term named ``name`` should show on the first batch of an untrained model, when known.

    From the term's row in :data:`LOSSES` (``None`` for unknown names and losses without a chance level,
    e.g. ``complement``, whose value depends on its normalisation).

    >>> round(expected_initial_loss("neighborhood", 128, 8, 10), 4)  # log(127 / 7)
    2.8983
    >>> round(expected_initial_loss("softmax", 128, 8, 10), 4)  # log(10)
    2.3026
    """
    spec = LOSSES.get(name)
    if spec is None or spec.chance is None:
        return None
    return spec.chance(batch_size, samples_per_class, num_classes)
