"""``ClassBalancedSampler``: batches of K classes × M samples that still visit every sample once per epoch.

pytorch-metric-learning's ``MPerClassSampler`` draws M samples per class with replacement-like cycling and a
fixed epoch length, so some samples are never seen in an epoch and others repeat (its issue #684). This
sampler instead partitions each epoch exactly:

1. every class's indices are shuffled (``numpy`` generator seeded with ``(seed, epoch)``);
2. a batch is filled by taking M indices from each of K distinct classes, choosing the classes with the
   most remaining groups of M first (ties broken at random), so large classes are spread over the epoch;
3. the tail: a class with fewer than M indices left gives what it has and the batch is topped up from the
   next class; when fewer than K classes have indices left, a batch takes further groups from classes it
   already holds. So every batch has exactly ``batch_size`` indices except possibly the last one of the
   epoch, which holds the remainder — nothing is dropped and nothing repeats;
4. the full batches are shuffled (the short one, if any, stays last).

With classes of similar size nearly every batch is K × M; with a strongly dominant class the end of the
epoch necessarily holds batches of that class alone (the only way to visit all of it exactly once).

Length buckets (``lengths=``, e.g. the token counts of texts for a fine-tuned transformer, whose cost grows
with the longest text of a batch): before step 4, within each window of ``BUCKET_WINDOW`` consecutive
batches, the samples of each class are pooled, sorted by length and dealt back into the class's groups (each
keeps its size), the shortest to the first batch that holds the class. Every batch keeps its classes and their counts
and every sample is still visited once; only which same-class samples share a batch changes, and since the
batches differ every epoch so do the windows (Hugging Face's ``group_by_length`` sorts "megabatches" of 50
batches the same way).

Example
-------
>>> sampler = ClassBalancedSampler([0, 0, 1, 1, 2, 2, 0, 1], batch_size=4, samples_per_class=2, seed=0)
>>> len(sampler)
2
>>> batches = list(sampler)
>>> sorted(i for batch in batches for i in batch)
[0, 1, 2, 3, 4, 5, 6, 7]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from metriclearn._checks import check_labels, check_positive_int

__all__ = ["ClassBalancedSampler"]


class ClassBalancedSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler (``DataLoader(dataset, batch_sampler=sampler)``) of K classes × M samples.

    Parameters
    ----------
    labels : array-like (n,)
        Class label of every sample (ints or strings).
    batch_size : int
        K · M indices per batch; must be a multiple of ``samples_per_class`` with K ≥ 2.
    samples_per_class : int
        M, the number of samples each class contributes to a batch.
    seed : int
        Together with the epoch, fixes every batch: the same (seed, epoch) always gives the same batches.
    lengths : array-like (n,), optional
        The cost of each sample (a text's token count): batches of similar lengths (see "Length buckets").
    as_tensors : bool
        Yield each batch as an int64 tensor (a view of the batch's index array, no per-index Python objects:
        what a loop that indexes device tensors in place wants) instead of a list of ints (what
        ``DataLoader(batch_sampler=...)`` wants).

    Notes
    -----
    Iterating yields ``len(sampler) = ceil(n / batch_size)`` lists of indices and then advances to the next
    epoch. :meth:`set_epoch` chooses the epoch explicitly (as with ``DistributedSampler``).
    :meth:`state_dict` records the epoch and the number of batches already handed out in it, so
    :meth:`load_state_dict` on a fresh sampler continues with the very next batch. With a multi-worker
    ``DataLoader`` batches are handed out ahead of use (prefetch); save the number your loop actually
    consumed instead: ``state["position"] = steps_done_this_epoch``.
    """

    BUCKET_WINDOW = 50

    def __init__(self, labels: Any, batch_size: int, samples_per_class: int = 4, seed: int = 0,
                 lengths: Any = None, as_tensors: bool = False) -> None:
        labels = check_labels(labels, "labels")
        if len(labels) == 0:
            raise ValueError("labels is empty: the sampler needs at least one sample")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.samples_per_class = check_positive_int(samples_per_class, "samples_per_class")
        self.seed = check_positive_int(seed, "seed", allow_zero=True)
        if self.batch_size % self.samples_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of samples_per_class "
                f"({self.samples_per_class})"
            )
        self.classes_per_batch = self.batch_size // self.samples_per_class
        if self.classes_per_batch < 2:
            raise ValueError(
                f"batch_size ({self.batch_size}) / samples_per_class ({self.samples_per_class}) gives "
                f"{self.classes_per_batch} class per batch; need at least 2 (batch_size >= 2 * samples_per_class)"
            )
        _, codes = np.unique(labels, return_inverse=True)
        codes = codes.reshape(-1)
        order = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes)
        if len(sizes) < 2:
            raise ValueError(f"labels hold a single class ({labels[0].item()!r}); need at least 2")
        self._by_class = np.split(order, np.cumsum(sizes)[:-1])  # C arrays of sample indices
        self._sizes = sizes
        self._digest = hashlib.sha1(np.ascontiguousarray(codes, dtype=np.int64).tobytes()).hexdigest()
        self.num_samples = len(codes)
        self._lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(-1)
        if self._lengths is not None and len(self._lengths) != self.num_samples:
            raise ValueError(f"lengths has {len(self._lengths)} entries but labels has {self.num_samples}")
        self.as_tensors = bool(as_tensors)
        self.epoch = 0
        self.position = 0
        self._restored = False

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size  # ceil

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch (kept mid-epoch right after :meth:`load_state_dict`)."""
        epoch = check_positive_int(epoch, "epoch", allow_zero=True)
        if not (self._restored and epoch == self.epoch):
            self.position = 0
        self.epoch = epoch
        self._restored = False

    def __iter__(self) -> Iterator[Any]:
        self._restored = False
        batches = self.batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield torch.from_numpy(batch) if self.as_tensors else batch.tolist()
        self.epoch += 1
        self.position = 0

    def batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` (index arrays), without moving the sampler's position."""
        rng = np.random.default_rng([self.seed, check_positive_int(epoch, "epoch", allow_zero=True)])
        queues = [rng.permutation(idx) for idx in self._by_class]
        taken = np.zeros(len(queues), dtype=np.int64)
        remaining = self._sizes.copy()
        m, left = self.samples_per_class, self.num_samples
        batches: list[np.ndarray] = []
        batch_parts: list[list[tuple[int, np.ndarray]]] = []
        while left > 0:
            parts: list[np.ndarray] = []
            labelled: list[tuple[int, np.ndarray]] = []
            space = min(self.batch_size, left)
            while space > 0:  # one pass = one take from each class, most remaining groups first
                groups = -(-remaining // m)
                key = groups + rng.random(len(groups))  # random tie-break; empty classes sort last
                for c in np.argsort(-key)[: int((groups > 0).sum())]:
                    take = int(min(m, remaining[c], space))
                    parts.append(queues[c][taken[c] : taken[c] + take])
                    labelled.append((int(c), parts[-1]))
                    taken[c] += take
                    remaining[c] -= take
                    space -= take
                    if space == 0:
                        break
            batch = np.concatenate(parts)
            left -= len(batch)
            batches.append(batch)
            batch_parts.append(labelled)
        if self._lengths is not None:
            batches = self._bucket(batch_parts)
        full = len(batches) - (len(batches[-1]) < self.batch_size)
        order = np.concatenate([rng.permutation(full), np.arange(full, len(batches))])
        return [batches[i] for i in order]

    def _bucket(self, batch_parts: list[list[tuple[int, np.ndarray]]]) -> list[np.ndarray]:
        """Exchange same-class full groups between the batches of each window: shortest to the first batches."""
        lengths = self._lengths
        assert lengths is not None  # bucketing is on only with lengths
        for start in range(0, len(batch_parts), self.BUCKET_WINDOW):
            window = batch_parts[start : start + self.BUCKET_WINDOW]
            slots: dict[int, list[tuple[int, int]]] = {}  # class -> the (batch, part) places of its groups
            for b, parts in enumerate(window):
                for p, (c, _) in enumerate(parts):
                    slots.setdefault(c, []).append((b, p))
            for c, places in slots.items():  # the class's samples of the window, shortest first, dealt back
                pooled = np.concatenate([window[b][p][1] for b, p in places])
                pooled = pooled[np.argsort(lengths[pooled], kind="stable")]
                at = 0
                for b, p in places:  # in batch order; every group keeps its size
                    size = len(window[b][p][1])
                    window[b][p] = (c, pooled[at : at + size])
                    at += size
        return [np.concatenate([group for _, group in parts]) for parts in batch_parts]

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position within it, and the settings a resumed sampler must share."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "samples_per_class": self.samples_per_class,
            "num_samples": self.num_samples,
            "labels_sha1": self._digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the next batch is the one after the last handed out."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "samples_per_class", "num_samples", "labels_sha1"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has {key}={mine[key]!r}")
        epoch = check_positive_int(state.get("epoch"), "state['epoch']", allow_zero=True)
        position = check_positive_int(state.get("position"), "state['position']", allow_zero=True)
        if position > len(self):
            raise ValueError(f"state['position'] is {position} but an epoch has only {len(self)} batches")
        if position == len(self):  # the epoch was complete
            epoch, position = epoch + 1, 0
        self.epoch, self.position, self._restored = epoch, position, True
