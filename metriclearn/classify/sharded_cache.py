"""The cache classifier's exact softmax over a sharded index: per-shard sums, one collective, exact result.

Orhan's cache probability over all N slots is

    p(y | x) = Σ_{i: y_i = y} exp(θ·cos(x, k_i)) / Σ_i exp(θ·cos(x, k_i)).

Both sums split over any partition of the slots into shards s. Each shard computes, for every query, its
running maximum m_s (a shift, as in :func:`~metriclearn.classify.cache.cache_probabilities`) and its
per-class sums C_s[y] = Σ_{i ∈ s, y_i = y} exp(θ·cos(x, k_i) − m_s) (Σexp is their total). With
M = max_s m_s the global per-class sums are C[y] = Σ_s C_s[y]·exp(m_s − M) and p(y|x) = C[y] / Σ_y C[y]:
the single-process probabilities, up to float round-off. Under torch.distributed every rank reduces its
own shards so, then one all-gather of the (Q, 1 + K) rows ``[m_s, C_s]`` lets every rank combine them.

Example
-------
>>> import numpy as np
>>> from metriclearn.classify import CacheClassifier
>>> from metriclearn.indexes.sharded import ShardedIndex
>>> rng = np.random.default_rng(0)
>>> X, y = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, 30)
>>> sharded = ShardedIndex.build(X, labels=y, num_shards=3, device="cpu")
>>> classes, p = sharded_cache_proba(sharded, X[:5], theta=20.0)
>>> single = CacheClassifier(theta=20.0, device="cpu").fit(X, y).predict_proba(X[:5])
>>> classes.tolist(), bool(np.abs(p - single).max() < 1e-6)
([0, 1, 2], True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metriclearn import _distributed as distributed
from metriclearn._checks import check_matrix, check_positive_float, check_positive_int
from metriclearn._device import resolve_device
from metriclearn._scale import unit_rows_tensor
from metriclearn.classify._validation import index_labels
from metriclearn.classify.cache import _LOG2E, _cache_block_sums
from metriclearn.classify.defaults import DEFAULT_THETA

NO_CALIBRATION = ("a calibration of the cache classifier needs an unsharded index (build it without --shards, "
                  "or calibrate --method knn)")


def shard_sums(
    queries: torch.Tensor, keys: torch.Tensor, key_codes: torch.Tensor, num_classes: int, theta: float,
    query_block: int = 512, key_block: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard's ``(shift (Q,), sums (Q, K))``, float64: ``sums[q, y]·exp(shift[q]) = Σ_{i: y_i = y} exp(θ·q·k_i)``.

    ``queries`` and ``keys`` are L2-normalised float32 rows; ``shift`` is in natural-log units.
    """
    shifts, sums = [], []
    for q0 in range(0, queries.shape[0], query_block):
        acc, shift = _cache_block_sums(queries[q0 : q0 + query_block], keys, key_codes, num_classes, theta, key_block)
        shifts.append(shift.double() / _LOG2E)  # base 2 → base e
        sums.append(acc.T)  # (b, K)
    return torch.cat(shifts), torch.cat(sums)


def combine(shifts: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard ``shifts (S, Q)`` and ``sums (S, Q, K)`` into one ``(shift (Q,), sums (Q, K))``.

    A shard without keys has shift −inf and zero sums and drops out.
    """
    top = shifts.max(dim=0).values  # (Q,)
    scale = torch.exp(shifts - top.clamp(min=torch.finfo(torch.float64).min))  # (S, Q), 0 for empty shards
    return top, (sums * scale.unsqueeze(2)).sum(dim=0)


def sharded_cache_proba(
    index: Any, queries: Any, theta: float, device: str = "auto", query_block: int = 512, key_block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cache probabilities over every slot of a :class:`~metriclearn.indexes.sharded.ShardedIndex`.

    Returns ``(classes (K,), proba (Q, K) float64)``; classes are the index's sorted distinct labels (as
    ``CacheClassifier.classes_``). Keys are the shards' stored vectors, normalised again (so any metric works).
    Collective when the index's shards are spread over the ranks: rank 0's queries are used, every rank
    gets the result.
    """
    theta = check_positive_float(theta, "theta")
    check_positive_int(query_block, "query_block")
    check_positive_int(key_block, "key_block")
    classes = np.unique(index_labels(index))
    x = check_matrix(queries, "queries", dim=index.dim)
    if index.collective:
        x = distributed.broadcast_array(x)
    dev = resolve_device(device)
    q = unit_rows_tensor(torch.from_numpy(x).to(dev))  # (Q, d)
    shifts = [torch.full((len(x),), -torch.inf, dtype=torch.float64, device=dev)]
    sums = [torch.zeros(len(x), len(classes), dtype=torch.float64, device=dev)]
    for r, shard in enumerate(index.shards):
        if shard is None or len(shard) == 0:
            continue
        keys = unit_rows_tensor(torch.from_numpy(shard.vectors()).to(dev))  # (N_s, d)
        codes = torch.from_numpy(np.searchsorted(classes, index.shard_labels(r))).to(dev)  # (N_s,)
        shift, total = shard_sums(q, keys, codes, len(classes), theta, query_block, key_block)
        shifts.append(shift)
        sums.append(total)
    shift, total = combine(torch.stack(shifts), torch.stack(sums))
    if index.collective:  # one all-gather of [shift, per-class sums] per rank
        rows = torch.cat([shift.unsqueeze(1), total], dim=1).cpu().numpy()  # (Q, 1 + K)
        parts = torch.from_numpy(np.stack(distributed.all_gather_array(rows)))  # (W, Q, 1 + K)
        shift, total = combine(parts[:, :, 0], parts[:, :, 1:])
    return classes, (total / total.sum(dim=1, keepdim=True)).cpu().numpy()


class ShardedCache:
    """The exact cache classifier over a sharded index: :class:`~metriclearn.classify.from_index.IndexClassifier`.

    ``classes_`` are the index's sorted distinct labels; :meth:`predict_proba` is :func:`sharded_cache_proba`
    (collective under torch.distributed). Calibration needs every key in one place (its acceptance score
    reads each query's nearest keys and rebuilds the cache without each class), so :meth:`calibrate`,
    :meth:`restore_calibration` and what needs a calibration refuse in one line.
    """

    def __init__(self, index: Any, theta: float = DEFAULT_THETA, device: str = "auto") -> None:
        self.index, self.theta, self.device = index, check_positive_float(theta, "theta"), device
        self.classes_ = np.unique(index_labels(index))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p_cache(y|x)`` (n, K) float64 over every slot of every shard."""
        return sharded_cache_proba(self.index, X, self.theta, device=self.device)[1]

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def calibrate(self, X_cal: Any, y_cal: Any, alpha: float = 0.1, target_precision: float | None = None,
                  **options: Any) -> ShardedCache:
        raise ValueError(NO_CALIBRATION)

    def restore_calibration(self, state: dict[str, Any]) -> ShardedCache:
        raise ValueError(NO_CALIBRATION)

    def predict_sets(self, X: Any, proba: np.ndarray | None = None) -> np.ndarray:
        raise ValueError(NO_CALIBRATION)

    def predict_with_rejection(self, X: Any, proba: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError(NO_CALIBRATION)
