"""Prototype (class-centroid) cross-entropy: each embedding is classified by its distance to class centroids.

For an embedding ``x_i`` with label ``y_i``, centroids ``c_1..c_K`` and temperature ``T``:

    l_i = −log( exp(−||x_i − c_{y_i}||² / T) / Σ_{k available} exp(−||x_i − c_k||² / T) )

The three modes differ in where the centroids come from:

``"learned"``
    ``c`` is an ``nn.Parameter`` (K, D) trained with the model — the "cross-entropy centroid loss",
    i.e. a softmax classifier whose logits are negative squared distances.
``"ema"``
    ``c`` is a buffer (no gradient flows into it). In training mode, for every class ``k`` present in
    the batch, with batch class mean ``m_k`` (of the detached embeddings):

    1. a class seen for the first time starts at ``c_k = m_k`` (before the loss is computed, so its
       anchors have a target);
    2. the loss is computed against the centroids as they are;
    3. then ``c_k ← μ c_k + (1 − μ) m_k`` (``μ = momentum``), and, when ``repulsion = ρ > 0``,
       ``c_k ← c_k + ρ (c_k − Σ_{l≠k} w_kl c_l)`` with ``w_kl = softmax_{l≠k}(−||c_k − c_l||² / T)`` over
       the classes seen so far, computed on the centroids after the momentum step, all at once. This
       is a gradient-ascent step of size ρ/2 on the soft-minimum squared distance
       ``−T log Σ_{l≠k} exp(−||c_k − c_l||² / T)`` from ``c_k`` to the other centroids.

    Classes absent from the batch do not move. Classes never seen are left out of the softmax (and
    anchors of such a class, possible only in eval mode, do not count). In eval mode nothing moves.
``"batch"``
    Prototypical Networks: the prototypes are the class means of the current batch (gradients flow
    through them) and classes absent from the batch are left out. With ``leave_one_out=True``
    (default) an anchor's own prototype is the mean of the *other* members of its class,
    ``(n_c μ_c − x_i) / (n_c − 1)``, whose squared distance to ``x_i`` is exactly
    ``(n_c / (n_c − 1))² ||x_i − μ_c||²``; so an anchor never pulls towards itself, and the only member
    of its class has no target and does not count (it still is a negative for the others). With
    ``leave_one_out=False`` the prototype includes the anchor, as in Snell et al.'s episodes (where
    queries and support sets are disjoint) applied naively to one batch.

References: J. Snell, K. Swersky, R. Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS
2017; H.-M. Yang et al., "Robust Classification with Convolutional Prototype Learning", CVPR 2018
(distance-based cross-entropy to learned prototypes).

Example
-------
>>> import torch
>>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
>>> y = torch.tensor([0, 0, 1, 1])
>>> loss = PrototypeLoss(num_classes=2, dim=2, mode="learned")
>>> loss.init_centroids(x, y).tolist()  # start the centroids at the class means
[True, True]
>>> loss.centroids.detach()
tensor([[0.0000, 0.5000],
        [2.0000, 0.5000]])
>>> round(loss(x, y).item(), 4)  # log(1 + exp(0.25 − 4.25))
0.0181
>>> round(PrototypeLoss(2, 2, mode="batch")(x, y).item(), 4)  # own prototype = the other member
0.038
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_fraction, check_positive_float, check_positive_int
from metriclearn.losses._pairwise import squared_distances
from metriclearn.losses.base import MetricLoss

MODES = ("learned", "ema", "batch")


class PrototypeLoss(MetricLoss):
    """Cross-entropy over −squared distance / T to class centroids (learned, EMA or batch means).

    Parameters
    ----------
    num_classes:
        K ≥ 2; labels must lie in ``[0, K)``.
    dim:
        D, the embedding width (checked on every call).
    mode:
        ``"learned"`` (parameters), ``"ema"`` (momentum buffers) or ``"batch"`` (batch class means).
    momentum:
        μ in [0, 1] for ``"ema"``: the share of the old centroid kept at each step.
    repulsion:
        ρ ≥ 0 for ``"ema"``: step size of the push away from the other centroids (0 = off).
    temperature:
        T > 0 dividing the squared distances.
    leave_one_out:
        ``"batch"`` only: leave the anchor out of its own class prototype (see the module docstring).
    reduction:
        ``"mean"`` (default), ``"sum"`` or ``"none"``, see :class:`~metriclearn.losses.base.MetricLoss`.

    Attributes
    ----------
    centroids:
        (K, D) parameter (``"learned"``, initialised N(0, 1/D) so rows have norm ≈ 1) or buffer
        (``"ema"``, zeros until a class is seen); ``None`` in ``"batch"`` mode. Saved in the state dict.
    initialized:
        ``"ema"`` only: (K,) bool buffer, which classes have a centroid yet. Saved in the state dict.
    """

    initialized: Tensor  # (K,) bool buffer of mode "ema"

    def __init__(
        self,
        num_classes: int,
        dim: int,
        mode: str = "learned",
        momentum: float = 0.9,
        repulsion: float = 0.0,
        temperature: float = 1.0,
        leave_one_out: bool = True,
        reduction: str = "mean",
    ) -> None:
        num_classes = check_positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        super().__init__(reduction=reduction, num_classes=num_classes)
        self.dim = check_positive_int(dim, "dim")
        self.mode = check_choice(mode, MODES, "mode")
        self.momentum = check_fraction(momentum, "momentum")
        self.repulsion = check_positive_float(repulsion, "repulsion", allow_zero=True)
        self.temperature = check_positive_float(temperature, "temperature")
        self.leave_one_out = bool(leave_one_out)
        if self.repulsion > 0 and mode != "ema":
            raise ValueError(f"repulsion applies only to mode='ema', got repulsion={self.repulsion} with mode={mode!r}")
        self.centroids: Tensor | None
        if mode == "learned":
            self.centroids = nn.Parameter(torch.randn(num_classes, self.dim) / self.dim**0.5)
        elif mode == "ema":
            self.register_buffer("centroids", torch.zeros(num_classes, self.dim))
            self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))
        else:
            self.centroids = None

    # ------------------------------------------------------------------ public helpers
    def validate(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        embeddings, labels = super().validate(embeddings, labels)
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} "
                             f"but PrototypeLoss was built with dim={self.dim}")
        if self.centroids is not None and self.centroids.device != embeddings.device:
            raise ValueError(
                f"embeddings are on {embeddings.device} but the centroids are on {self.centroids.device}; "
                "move the loss with .to(device)"
            )
        return embeddings, labels

    @torch.no_grad()
    def init_centroids(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Set each class centroid to the mean of that class in ``embeddings`` (e.g. a forward pass).

        Representative initialisation from real model outputs: the loss then starts from the classifier
        the current embedding already implies instead of from random points. Classes absent from
        ``labels`` keep their centroid (random for ``"learned"``, unseen for ``"ema"``) with a warning.
        Returns the (K,) bool mask of the classes that were set. Not available in ``"batch"`` mode.
        """
        if self.centroids is None:
            raise ValueError("init_centroids needs stored centroids; "
                             "mode='batch' builds its prototypes from each batch")
        embeddings, labels = self.validate(embeddings, labels)
        if not torch.isfinite(embeddings).all():
            bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
            raise ValueError(f"embeddings contain NaN or inf values in {bad} of {embeddings.shape[0]} rows")
        means, present = self._class_means(embeddings, labels)
        self.centroids[present] = means[present].to(self.centroids.dtype)
        if self.mode == "ema":
            self.initialized |= present
        if not bool(present.all()):
            missing = (~present).nonzero().flatten().tolist()
            warnings.warn(f"init_centroids: no samples of classes {missing}; their centroids were left as they were",
                          stacklevel=2)
        return present

    # ------------------------------------------------------------------ the loss
    def compute(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.mode == "batch":
            return self._batch_prototypes(embeddings, labels)
        if self.mode == "learned":
            return self._cross_entropy(embeddings, labels, self._stored().to(embeddings.dtype), None)
        if not self.training:
            return self._cross_entropy(embeddings, labels, self._stored().to(embeddings.dtype), self.initialized)
        with torch.no_grad():
            means, present = self._class_means(embeddings.detach(), labels)  # (K, D), (K,)
            means = means.to(self._stored().dtype)
            self._initialise_new(means, present)
        centroids = self._stored().to(embeddings.dtype, copy=True)  # (K, D) snapshot: updated in place below
        result = self._cross_entropy(embeddings, labels, centroids, self.initialized.clone())
        self._ema_step(means, present)
        return result

    def _cross_entropy(
        self, x: Tensor, labels: Tensor, centroids: Tensor, available: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Softmax cross-entropy over −||x − c_k||² / T, restricted to ``available`` classes."""
        logits = squared_distances(x, centroids, scale=-1.0 / self.temperature)  # (B, K)
        counts = torch.ones_like(labels, dtype=torch.bool)  # (B,)
        if available is not None:
            if not bool(available.any()):  # eval mode before any class was seen
                return x.sum(dim=1) * 0.0, ~counts
            logits = logits.masked_fill(~available, float("-inf"))  # (B, K)
            counts = available[labels]  # (B,)
        target = logits.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
        target = target.where(counts, 0.0)  # no −inf for anchors of unseen classes (not counted)
        return logits.logsumexp(dim=1) - target, counts

    def _batch_prototypes(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Prototypical Networks over the classes present in the batch (optionally leave-one-out)."""
        _, inverse = torch.unique(labels, return_inverse=True)  # (B,) index into present classes
        onehot = F.one_hot(inverse).to(x.dtype)  # (B, C)
        sizes = onehot.sum(dim=0)  # (C,)
        prototypes = (onehot.T @ x) / sizes.unsqueeze(1)  # (C, D)
        logits = squared_distances(x, prototypes, scale=-1.0 / self.temperature)  # (B, C)
        own = inverse.unsqueeze(1)  # (B, 1)
        counts = torch.ones_like(labels, dtype=torch.bool)  # (B,)
        if self.leave_one_out:
            n = sizes[inverse]  # (B,) size of the anchor's class
            counts = n > 1
            scale = torch.where(counts, n / (n - 1).clamp(min=1), 1.0).square()  # (B,)
            logits = logits.scatter(1, own, logits.gather(1, own) * scale.unsqueeze(1))  # (B, C)
        return logits.logsumexp(dim=1) - logits.gather(1, own).squeeze(1), counts

    # ------------------------------------------------------------------ EMA bookkeeping
    def _class_means(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-class means (K, D) of ``x`` (zeros for absent classes) and the (K,) presence mask."""
        k = self._stored().shape[0]
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, labels, x)  # (K, D)
        sizes = torch.bincount(labels, minlength=k)  # (K,)
        return sums / sizes.clamp(min=1).unsqueeze(1).to(x.dtype), sizes > 0

    @torch.no_grad()
    def _initialise_new(self, means: Tensor, present: Tensor) -> None:
        """A class seen for the first time starts at its batch mean."""
        fresh = present & ~self.initialized  # (K,)
        if bool(fresh.any()):
            self._stored()[fresh] = means[fresh]
            self.initialized |= fresh

    @torch.no_grad()
    def _ema_step(self, means: Tensor, present: Tensor) -> None:
        """Momentum step toward the batch means, then the repulsion step (classes in the batch only)."""
        centroids = self._stored()
        blended = centroids * self.momentum + means * (1 - self.momentum)
        moved = torch.where(present.unsqueeze(1), blended, centroids)
        if self.repulsion > 0 and int(self.initialized.sum()) >= 2:
            seen = self.initialized.nonzero().flatten()  # (S,)
            pts = moved[seen]  # (S, D)
            logits = squared_distances(pts, pts, scale=-1.0 / self.temperature)  # (S, S)
            logits.fill_diagonal_(float("-inf"))
            weights = logits.softmax(dim=1)  # (S, S)
            push = (pts - weights @ pts) * self.repulsion  # (S, D)
            moved[seen] += push * present[seen].unsqueeze(1).to(push.dtype)  # only present classes move
        centroids.copy_(moved)

    def _stored(self) -> Tensor:
        """The stored (K, D) centroids of modes ``"learned"`` and ``"ema"``."""
        if self.centroids is None:
            raise RuntimeError("mode='batch' stores no centroids")
        return self.centroids

    def extra_repr(self) -> str:
        text = f"num_classes={self.num_classes}, dim={self.dim}, mode={self.mode!r}, temperature={self.temperature:g}"
        if self.mode == "ema":
            text += f", momentum={self.momentum:g}, repulsion={self.repulsion:g}"
        if self.mode == "batch":
            text += f", leave_one_out={self.leave_one_out}"
        return f"{text}, {super().extra_repr()}"
