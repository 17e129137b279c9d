"""Cache loss: the neighbourhood softmax over the batch plus a memory of past batches (XBM-style)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metriclearn._checks import check_bool, check_choice, check_positive_float, check_positive_int
from metriclearn.losses._recenter import is_unit, recenter_gradient
from metriclearn.losses._softmax_kernel import NeighborhoodSoftmaxFunction, label_codes, matching_slots
from metriclearn.losses.base import MetricLoss
from metriclearn.losses.neighborhood import DISTANCES


def _all_finite(x: Tensor) -> bool:
    """True when ``x`` has no NaN or inf (min and max propagate NaN; one pass, ~8× ``isfinite().all()``)."""
    low, high = torch.aminmax(x.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


class CacheLoss(MetricLoss):
    r"""Neighbourhood softmax of each anchor over the current batch AND a cache of earlier embeddings.

    The cache is a circular buffer of ``size`` detached embeddings with their labels (and, when
    given, sample ids). With the batch :math:`x_1..x_B` and the cached :math:`c_1..c_M`, anchor
    :math:`i` is scored against :math:`\mathcal{N}_i = \{x_j : j \ne i\} \cup \{c_m : m \notin E_i\}`:

    .. math::

        \ell_i = -\log \frac{\sum_{z \in \mathcal{N}_i,\; y(z) = y_i} \exp(-d(x_i, z) / T)}
                           {\sum_{z \in \mathcal{N}_i} \exp(-d(x_i, z) / T)},

    averaged over the anchors with at least one positive in :math:`\mathcal{N}_i` — the form of
    :class:`~metriclearn.losses.NeighborhoodSoftmaxLoss`, to which it reduces while the cache is
    empty or warming up. Gradients flow only through the batch; the cache is a constant.

    An anchor is never its own neighbour:

    * in the batch, its own row is excluded (the diagonal);
    * through the cache, because the batch is written to the cache only *after* it has been scored,
      so the copy an anchor enqueues is first seen by the next batch; and
    * when the same sample comes back later (next epoch, while its old copy is still cached), pass
      ``ids`` (e.g. dataset indices): every cache slot holding the anchor's id is excluded
      (:math:`E_i`). Without ids a returning sample may meet its stale copy, as in pml's
      ``CrossBatchMemory``, which in addition scores each anchor against its *current* copy.

    The cache is updated — the batch written over the oldest slots and the step counter advanced —
    only in training mode with gradients enabled; under ``.eval()`` or ``torch.no_grad()`` (e.g. a
    validation loss) the batch is scored against the cache without changing it. For the first
    ``warmup_steps`` updating steps the cache is filled but not scored against (early embeddings
    drift fast and would be stale neighbours). The embeddings, labels, ids, write pointer, fill count
    and step counter are registered buffers, so ``state_dict()`` / ``load_state_dict()`` resume a
    run exactly. Under ``distance="cosine"`` the cache holds the unit-normalised embeddings.

    The cached neighbours are constants, so their push on the batch has no reaction: summed over the
    batch it is a net force that moves every embedding one common way, and the embeddings bunch up
    (on pairs, where the cache holds no positive of the batch, fine-tuned MiniLM ended with a mean
    cosine of 0.9 between unrelated texts; BENCHMARKS.md, text fine-tuning (b2)). With ``recenter``
    (the default) the gradient that reaches the embeddings while the cache is scored loses its common
    part over the batch (:func:`~metriclearn.losses._recenter.recenter_gradient`: its mean; for unit
    rows, the common vector left after an encoder's normalisation): no net force, as in a batch
    without cache. The loss value is unchanged; ``recenter=False`` gives the plain gradient.

    Parameters
    ----------
    dim:
        Embedding dimension D.
    size:
        Number of cache slots; the oldest are overwritten. A batch larger than ``size`` writes its
        last ``size`` rows.
    temperature:
        T > 0. The default 0.15 (the neighbourhood loss's tuned value, BENCHMARKS.md) suits the cosine
        distance of unit vectors: with thousands of neighbours a temperature of 1 leaves the softmax
        almost flat.
    warmup_steps:
        Updating steps before the cache is scored against.
    distance:
        ``"cosine"`` (default) or ``"sqeuclidean"``.
    recenter:
        Remove the common part of the embeddings' gradient over the batch while the cache is scored
        (see above).
    reduction:
        ``"mean"``, ``"sum"`` or ``"none"``.

    References
    ----------
    X. Wang, H. Zhang, W. Huang, M. R. Scott. "Cross-Batch Memory for Embedding Learning". CVPR 2020.
    J. Goldberger et al. "Neighbourhood Components Analysis". NeurIPS 2004 (the per-anchor form).

    Examples
    --------
    >>> import torch
    >>> loss = CacheLoss(dim=2, size=4)
    >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], requires_grad=True)
    >>> first = loss(x, torch.tensor([0, 0, 1]))  # empty cache: anchor 2 has no positive yet
    >>> int(loss.filled), int(loss.pointer), int(loss.step)
    (3, 3, 1)
    >>> second = loss(x, torch.tensor([0, 0, 1]))  # now x_2 meets the cached copy of x_2's batch
    >>> second.backward(); int(loss.filled), int(loss.pointer)
    (4, 2)
    """

    def __init__(
        self,
        dim: int,
        size: int = 4096,
        temperature: float = 0.15,
        warmup_steps: int = 0,
        distance: str = "cosine",
        recenter: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        self.dim = check_positive_int(dim, "dim")
        self.size = check_positive_int(size, "size")
        self.temperature = check_positive_float(temperature, "temperature")
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", allow_zero=True)
        self.distance = check_choice(distance, DISTANCES, "distance")
        self.recenter = bool(check_bool(recenter, "recenter"))
        self.register_buffer("cache_embeddings", torch.zeros(self.size, self.dim))
        self.register_buffer("cache_labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("cache_ids", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    uses_ids = True
    cache_embeddings: Tensor  # (size, D) buffers
    cache_labels: Tensor  # (size,)
    cache_ids: Tensor  # (size,)
    pointer: Tensor  # () counters
    filled: Tensor
    step: Tensor

    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-anchor losses against the batch and the cache (slots holding an anchor's id excluded)."""
        filled = self.scored_slots()
        if self.recenter and filled and embeddings.requires_grad:
            # the constant cache may not move the batch as a whole (unit rows: an encoder normalised them)
            embeddings = recenter_gradient(embeddings, unit=is_unit(embeddings))
        return self._score(self._prepare(embeddings), labels, ids, filled)

    def scored_slots(self) -> int:
        """How many cached embeddings the next batch is scored against (0 while warming up)."""
        return int(self.filled) if int(self.step) >= self.warmup_steps else 0

    def update(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None) -> None:
        """In training mode with gradients enabled: write the batch over the oldest slots."""
        if self.training and torch.is_grad_enabled():
            self._enqueue(self._prepare(embeddings.detach()), labels, ids)

    def validate(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        embeddings, labels = super().validate(embeddings, labels)
        if embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]} but CacheLoss was built with dim={self.dim}"
            )
        if self.cache_embeddings.device != embeddings.device:
            raise ValueError(
                f"embeddings are on {embeddings.device} but the CacheLoss buffers are on "
                f"{self.cache_embeddings.device}; move the loss with .to(device)"
            )
        if self.training and torch.is_grad_enabled() and not _all_finite(embeddings):
            raise ValueError("embeddings contain NaN or inf values; CacheLoss will not write them into its cache")
        return embeddings, labels

    def reset(self) -> None:
        """Empty the cache and restart the step counter."""
        self.cache_embeddings.zero_()
        self.cache_labels.fill_(-1)
        self.cache_ids.fill_(-1)
        for counter in (self.pointer, self.filled, self.step):
            counter.zero_()

    def _prepare(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings, dim=1) if self.distance == "cosine" else embeddings

    def _score(self, x: Tensor, labels: Tensor, ids: Tensor | None, filled: int) -> tuple[Tensor, Tensor]:
        refs = self.cache_embeddings[:filled].to(x.dtype)  # (M, D)
        ref_labels = self.cache_labels[:filled]  # (M,)
        codes, counts = label_codes(labels, ref_labels, x.dtype)  # (B + M,), (B,)
        exclude = None
        if ids is not None and filled:
            pairs = matching_slots(ids, self.cache_ids[:filled])  # (2, K) the anchors' own earlier copies
            if pairs.shape[1]:
                same = labels[pairs[0]] == ref_labels[pairs[1]]  # (K,)
                counts = counts - torch.bincount(pairs[0, same], minlength=labels.shape[0])
                exclude = pairs
        counted = counts > 0  # (B,)
        per_anchor = NeighborhoodSoftmaxFunction.apply(
            x, refs, codes, counted, exclude, 1.0 / self.temperature, self.distance == "sqeuclidean"
        )  # (B,)
        return per_anchor, counted

    @torch.no_grad()
    def _enqueue(self, x: Tensor, labels: Tensor, ids: Tensor | None) -> None:
        k = min(x.shape[0], self.size)
        x, labels = x[-k:], labels[-k:]  # (k, D), (k,)
        ids = labels.new_full((k,), -1) if ids is None else ids[-k:]  # (k,)
        start = int(self.pointer)
        head = min(k, self.size - start)  # rows before the wrap-around
        for buffer, values in ((self.cache_embeddings, x), (self.cache_labels, labels), (self.cache_ids, ids)):
            buffer[start : start + head] = values[:head]
            if head < k:  # wrap around
                buffer[: k - head] = values[head:]
        self.pointer.fill_((start + k) % self.size)
        self.filled.fill_(min(int(self.filled) + k, self.size))
        self.step.add_(1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, size={self.size}, temperature={self.temperature}, distance={self.distance!r}, "
            f"warmup_steps={self.warmup_steps}, recenter={self.recenter}, {super().extra_repr()}"
        )
