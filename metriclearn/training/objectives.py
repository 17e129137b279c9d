"""Training objectives: several losses combined by a weighted sum, alternating steps, or PCGrad.

An :class:`Objective` owns its loss terms (and the linear classification head that ``softmax`` and
``complement`` put on the embedding, shared by both), so its state — cache buffers, EMA centroids, the
head's weights — is saved and restored with it. The trainer asks it for the optimiser steps of one
batch (:meth:`Objective.groups`) and lets it turn the term losses into gradients (:meth:`Objective.backward`):

* ``"sum"``: one step on ``Σ_t w_t · L_t``.
* ``"alternate"``: one step per term, in the order given, each on the same batch with a fresh forward
  pass (the COT recipe: a cross-entropy step, then a complement-entropy step, same optimiser).
* ``"pcgrad"``: gradient surgery (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): each
  task gradient g_i is projected onto the normal plane of every other task gradient g_j it conflicts
  with (g_i·g_j < 0), g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j, visiting the other tasks in random order;
  the step uses Σ_i g_i.

Example
-------
>>> import torch
>>> g = pcgrad([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])])
>>> g.tolist()  # (1,0) -> (0.5, 0.5) and (-1,1) -> (0, 1)
[0.5, 1.5]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_positive_float
from metriclearn.losses._neighborhood_uniformity import can_fuse, neighborhood_and_uniformity
from metriclearn.losses.base import MetricLoss
from metriclearn.losses.neighborhood import NeighborhoodSoftmaxLoss
from metriclearn.losses.registry import (  # noqa: F401  (LossSpec, LOSS_NAMES, expected_initial_loss: re-exported)
    COMBINES,
    DEFAULT_LOSS,
    LOSS_NAMES,
    LOSSES,
    LossSpec,
    expected_initial_loss,
    parse_loss_term,
)
from metriclearn.losses.uniformity import UniformityLoss


class HeadLoss(nn.Module):
    """A loss on the logits of a linear head over the embedding: ``criterion(head(embeddings), labels)``."""

    def __init__(self, head: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.criterion = criterion

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        logits = self.head(embeddings.float())  # (B, K)
        return self.criterion(logits, labels)


class Objective(nn.Module):
    """Weighted loss terms and how they are turned into optimiser steps.

    Parameters
    ----------
    terms:
        ``{name: loss_module}``; each is called ``loss(embeddings (B, D), labels (B,)) -> scalar``.
    weights:
        ``{name: weight}`` (default 1 for each term).
    combine:
        ``"sum"``, ``"alternate"`` or ``"pcgrad"`` (see the module docstring).

    Example
    -------
    >>> import torch
    >>> obj = Objective({"a": lambda_loss(lambda e, y: e.sum()), "b": lambda_loss(lambda e, y: e.pow(2).sum())},
    ...                 weights={"b": 0.5})
    >>> e = torch.ones(2, 2, requires_grad=True)
    >>> {k: v.item() for k, v in obj.term_losses(e, torch.tensor([0, 1])).items()}
    {'a': 4.0, 'b': 4.0}
    >>> obj(e, torch.tensor([0, 1])).item()  # 4 + 0.5 * 4
    6.0
    """

    def __init__(
        self,
        terms: Mapping[str, nn.Module],
        weights: Mapping[str, float] | None = None,
        combine: str = "sum",
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("an Objective needs at least one loss term, got none")
        self.combine = check_choice(combine, COMBINES, "combine")
        self.terms = nn.ModuleDict(dict(terms))
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise ValueError(f"weights given for unknown terms {unknown}; terms are {list(self.terms)}")
        self.weights = {
            name: check_positive_float(weights.get(name, 1.0), f"weight of {name!r}") for name in self.terms
        }

    @property
    def names(self) -> list[str]:
        """Term names in order."""
        return list(self.terms)

    def groups(self) -> list[list[str]]:
        """The terms of each optimiser step of one batch: all at once, or one step per term."""
        if self.combine == "alternate":
            return [[name] for name in self.terms]
        return [self.names]

    def uses_surgery(self, names: Sequence[str]) -> bool:
        """Whether a step on these terms needs per-task gradients (PCGrad with at least two terms)."""
        return self.combine == "pcgrad" and len(names) >= 2

    def term_losses(
        self, embeddings: Tensor, labels: Tensor, names: Sequence[str] | None = None, ids: Tensor | None = None,
        sides: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted loss of each term in ``names`` (default: all).

        ``ids`` (B,) sample ids and ``sides`` (B,) (pair data: 0 anchor, 1 positive or negative) go to every
        :class:`~metriclearn.losses.MetricLoss` term (``CacheLoss`` uses the ids, ``NeighborhoodSoftmaxLoss(
        same_side=False)`` the sides); other modules are called ``term(embeddings, labels)``.
        """
        names = list(names or self.names)
        pair = self.fused
        both = None
        if pair is not None and pair[0] in names and pair[1] in names:  # one Gram matrix for the two terms
            # `fused` picked the two by their exact types
            neighborhood = cast(NeighborhoodSoftmaxLoss, self.terms[pair[0]])
            uniformity = cast(UniformityLoss, self.terms[pair[1]])
            values = neighborhood_and_uniformity(neighborhood, uniformity, embeddings, labels)
            both = dict(zip(pair, values, strict=True))
        out = {}
        for name in names:
            term = self.terms[name]
            if both is not None and name in both:
                out[name] = both[name]
            else:
                out[name] = (term(embeddings, labels, ids, sides=sides) if isinstance(term, MetricLoss)
                             else term(embeddings, labels))
        return out

    @property
    def fused(self) -> tuple[str, str] | None:
        """The names of a cosine neighbourhood-softmax term and a uniformity term that
        :meth:`term_losses` computes together from one Gram matrix
        (:mod:`metriclearn.losses._neighborhood_uniformity`: the default objective), or ``None``."""
        kinds = [n for n, t in self.terms.items() if type(t) is NeighborhoodSoftmaxLoss]
        spread = [n for n, t in self.terms.items() if type(t) is UniformityLoss]
        for name in kinds:
            if spread and can_fuse(self.terms[name], self.terms[spread[0]]):
                return name, spread[0]
        return None

    def total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``Σ w_t · L_t`` over the given term losses."""
        # sum() starts from the int 0; with at least one term (an Objective has one) the result is a Tensor
        return sum(self.weights[name] * value for name, value in losses.items())  # type: ignore[return-value]

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The weighted sum of every term (what ``"sum"`` minimises; used for reporting in all modes)."""
        return self.total(self.term_losses(embeddings, labels))

    def backward(
        self,
        losses: Mapping[str, Tensor],
        params: Sequence[Tensor],
        scale: float | Tensor = 1.0,
        generator: torch.Generator | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Accumulate the step's gradient into ``p.grad`` for ``params``.

        ``scale`` multiplies every loss first (AMP's loss scale); PCGrad is invariant to it. ``reduce``
        is applied to each flat task gradient before the surgery (the trainer averages them over
        processes, as DDP would: the projections need the global task gradients).
        """
        if not self.uses_surgery(list(losses)):
            (self.total(losses) * scale).backward()
            return
        flat = []
        for name, value in losses.items():
            grads = torch.autograd.grad(
                self.weights[name] * value * scale, params, retain_graph=True, allow_unused=True
            )
            vector = torch.cat([_flat(g, p) for g, p in zip(grads, params, strict=True)])  # (P,)
            flat.append(reduce(vector) if reduce is not None else vector)
        combined = pcgrad(flat, generator=generator)
        offset = 0
        for p in params:
            n = p.numel()
            g = combined[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
            offset += n

    def prepare(self, embeddings: Tensor, labels: Tensor) -> None:
        """Initialise terms from real model outputs (``PrototypeLoss.init_centroids``) before training."""
        for term in self.terms.values():
            init = getattr(term, "init_centroids", None)
            if callable(init) and getattr(term, "centroids", None) is not None:  # not PrototypeLoss(mode="batch")
                init(embeddings, labels)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, weights={self.weights}"


def _flat(grad: Tensor | None, param: Tensor) -> Tensor:
    return (torch.zeros_like(param) if grad is None else grad).reshape(-1)


def pcgrad(grads: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """Combine flat task gradients with PCGrad (Yu et al. 2020, Algorithm 1) and return their sum.

    Σ_i g_i^PC of :func:`pcgrad_projections`. Non-conflicting gradients are left as they are, so the
    result equals the plain sum then.
    """
    return pcgrad_projections(grads, generator).sum(dim=0)  # (P,)


def pcgrad_projections(grads: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """The projected task gradients g_i^PC (T, P) of PCGrad (Yu et al. 2020, Algorithm 1).

    For each task i, in a random order over the other tasks j: if g_i^PC · g_j < 0, set
    g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j (g_j is the original gradient).

    >>> pcgrad_projections([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])]).tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    if not grads:
        raise ValueError("pcgrad needs at least one gradient, got none")
    stacked = torch.stack([g.reshape(-1) for g in grads])  # (T, P)
    norms_sq = (stacked * stacked).sum(dim=1)  # (T,)
    out = stacked.clone()
    num = stacked.shape[0]
    for i in range(num):
        order = torch.randperm(num, generator=generator).tolist()
        for j in order:
            if j == i or norms_sq[j] == 0:
                continue
            dot = torch.dot(out[i], stacked[j])
            if dot < 0:
                out[i] = out[i] - (dot / norms_sq[j]) * stacked[j]
    return out  # (T, P)


class _LambdaLoss(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.fn(embeddings, labels)


def lambda_loss(fn: Any) -> nn.Module:
    """Wrap a function ``fn(embeddings, labels) -> scalar`` as a loss module (handy for custom terms)."""
    return _LambdaLoss(fn)


# ---------------------------------------------------------------------------- building from names
def _construct(cls: Callable[..., nn.Module], name: str, required: dict[str, Any], options: Mapping[str, Any]
               ) -> nn.Module:
    """``cls(**required, **options)`` after checking every option is a parameter of ``cls``."""
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k not in params and not accepts_any)
    if unknown:
        allowed = sorted(k for k in params if k not in required and k not in ("self", "args", "kwargs"))
        raise ValueError(f"loss_options.{name}: unknown option(s) {unknown}; {cls.__name__} accepts {allowed}")
    clash = sorted(set(options) & set(required))
    if clash:
        raise ValueError(f"loss_options.{name}: {clash} are set by the trainer and cannot be configured")
    return cls(**required, **options)


def build_loss(
    name: str,
    embedding_dim: int,
    num_classes: int,
    options: Mapping[str, Any] | None = None,
    head: nn.Module | None = None,
) -> nn.Module:
    """One loss term by its name in :data:`LOSSES`, with its tuned options under ``options``.

    ``options`` are the loss's own keyword arguments (temperature, size, ...); ``head`` is the linear
    classification head the head losses (``softmax``, ``complement``) share (made here when not given).
    """
    check_choice(name, tuple(LOSSES), "loss name")  # read at call time: a row added later counts
    spec = LOSSES[name]
    given = {"dim": embedding_dim, "num_classes": num_classes}
    criterion = _construct(spec.cls, name, {k: given[k] for k in spec.required}, {**spec.tuned, **(options or {})})
    if not spec.head:
        return criterion
    return HeadLoss(head if head is not None else nn.Linear(embedding_dim, num_classes), criterion)


def build_objective(
    terms: Iterable[tuple[str, float] | str] | None,
    embedding_dim: int,
    num_classes: int,
    combine: str = "sum",
    loss_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Objective:
    """The :class:`Objective` for ``[(name, weight), ...]`` as parsed from ``--loss NAME[:WEIGHT]``.

    A term may also be given as a bare string, ``"neighborhood"`` (weight 1) or ``"cache:0.5"``.

    ``terms=None`` is the default objective of ``metriclearn train`` (:data:`~metriclearn.losses.registry.DEFAULT_LOSS`,
    ``TrainConfig().loss``), so
    ``build_objective(None, 64, 10)`` with a default ``Trainer`` trains the same run as the CLI with no
    options. Head losses (``softmax``, ``complement``) share one ``nn.Linear(embedding_dim, num_classes)``.

    >>> build_objective(None, 64, 10).terms["neighborhood"]
    NeighborhoodSoftmaxLoss(temperature=0.15, distance='cosine', reduction='mean')
    >>> build_objective(["neighborhood", "cache:0.5"], 64, 10).weights
    {'neighborhood': 1.0, 'cache': 0.5}
    """
    if terms is None:
        terms = DEFAULT_LOSS
    if isinstance(terms, str):  # one term: "neighborhood" would otherwise be read letter by letter
        terms = [terms]
    parsed = [parse_loss_term(term) for term in terms]
    names = [name for name, _ in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"loss {duplicates} given more than once; give each loss once with a weight")
    if combine == "alternate" and len(parsed) < 2:
        raise ValueError(f"combine='alternate' needs at least two losses, got {names}")
    loss_options = loss_options or {}
    head = nn.Linear(embedding_dim, num_classes) if any(LOSSES[n].head for n in names if n in LOSSES) else None
    modules = {
        name: build_loss(name, embedding_dim, num_classes, loss_options.get(name), head=head) for name in names
    }
    return Objective(modules, dict(parsed), combine=combine)
