"""The template every metriclearn loss follows: validate → compute → reduce → update.

``loss(embeddings (B, D), labels (B,), ids=None)``. A subclass implements :meth:`MetricLoss.compute`,
which returns one loss value per anchor and a mask of the anchors that count (e.g. those with at least
one positive). :meth:`MetricLoss.reduce` averages over the anchors that count; when none does (a batch
of singletons, say) the loss is a zero that is still connected to the graph, so ``backward()`` works
and gives zero gradients instead of NaN. ``ids`` (B,) are optional non-negative sample ids (dataset
indices; pytorch-metric-learning passes its ``indices_tuple`` the same way): they are validated here and
handed to ``compute`` only by losses that set ``uses_ids = True`` (``CacheLoss`` never lets an anchor
meet its own cached copy). A stateful loss records the batch in :meth:`MetricLoss.update`, after the loss.

Half-precision input (float16 / bfloat16) is computed in float32: the exponentials and log-sum-exps
of these losses lose too much in 8 or 11 bits of mantissa, and CPU kernels for them are slow anyway.

Example
-------
>>> import torch
>>> class MeanNorm(MetricLoss):
...     def compute(self, embeddings, labels, ids=None):
...         return embeddings.norm(dim=1), torch.ones_like(labels, dtype=torch.bool)
>>> MeanNorm()(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([0, 1]))
tensor(3.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_embeddings_tensor, check_labels_tensor

REDUCTIONS = ("mean", "sum", "none")


class MetricLoss(nn.Module, ABC):
    """Base class: ``loss(embeddings (B, D), labels (B,)) -> scalar``.

    Parameters
    ----------
    reduction:
        ``"mean"`` (default) averages over anchors that count, ``"sum"`` adds them, ``"none"`` returns
        the (B,) per-anchor values with zeros where an anchor does not count.
    num_classes:
        When set, labels must lie in ``[0, num_classes)``; otherwise they must be non-negative.
    """

    uses_ids: ClassVar[bool] = False  # True: compute(embeddings, labels, ids) receives the sample ids
    uses_sides: ClassVar[bool] = False  # True: compute(..., sides=) receives each row's side (pair data)

    def __init__(self, reduction: str = "mean", num_classes: int | None = None) -> None:
        super().__init__()
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.num_classes = num_classes

    def forward(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None,
                sides: Tensor | None = None) -> Tensor:
        """``sides`` (B,): pair data's side of each row (0 anchor, 1 positive or negative); losses that do not
        use them (``uses_sides``) ignore them."""
        embeddings, labels = self.validate(embeddings, labels)
        ids = self.validate_ids(ids, labels)
        # a loss whose compute takes (embeddings, labels) only keeps working
        args = (embeddings, labels, ids) if self.uses_ids else (embeddings, labels)
        extra = {"sides": self.validate_ids(sides, labels, name="sides")} if self.uses_sides else {}
        compute = cast(Callable[..., tuple[Tensor, Tensor]], self.compute)  # `sides=` only where uses_sides
        per_anchor, counts = compute(*args, **extra)  # (B,), (B,) bool
        loss = self.reduce(per_anchor, counts)
        self.update(embeddings, labels, ids)
        return loss

    def validate_ids(self, ids: Tensor | None, labels: Tensor, name: str = "ids") -> Tensor | None:
        """Check optional sample ids (or sides): (B,) non-negative integers on the labels' device."""
        if ids is None:
            return None
        ids = check_labels_tensor(ids, labels.shape[0], name=name)
        if ids.device != labels.device:
            raise ValueError(f"{name} are on {ids.device} but labels are on {labels.device}")
        if bool((ids < 0).any()):
            what = "sample ids" if name == "ids" else "numbers"
            raise ValueError(f"{name} must be non-negative {what}, got {int(ids.min())}")
        return ids.long()

    def update(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None) -> None:
        """Called after the loss of every batch with the validated inputs; stateful losses record it here."""

    def validate(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Check shapes, dtypes, devices and the label range; upcast half precision to float32."""
        embeddings = check_embeddings_tensor(embeddings)
        labels = check_labels_tensor(labels, embeddings.shape[0])
        if labels.device != embeddings.device:
            raise ValueError(f"labels are on {labels.device} but embeddings are on {embeddings.device}")
        if embeddings.shape[0] == 0:
            raise ValueError("embeddings is an empty batch (B=0)")
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise ValueError(f"labels must be non-negative class indices, got {low}")
        if self.num_classes is not None and high >= self.num_classes:
            raise ValueError(f"labels must be < num_classes={self.num_classes}, got {high}")
        return embeddings, labels.long()

    @abstractmethod
    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(per_anchor_loss (B,), counts (B,) bool)``.

        ``ids`` (B,) are the validated sample ids, passed only when the loss sets ``uses_ids = True`` (else
        ``None``); losses that do not need them ignore them.
        """

    def reduce(self, per_anchor: Tensor, counts: Tensor) -> Tensor:
        """Average (or add) the per-anchor losses over the anchors that count."""
        values = per_anchor.where(counts, per_anchor.new_zeros(()))  # (B,) zeros where not counted
        if self.reduction == "none":
            return values
        total = values.sum()
        if self.reduction == "sum":
            return total
        return total / counts.sum().clamp(min=1)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
