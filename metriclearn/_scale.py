"""Scale-safe numerics: unit rows, one common rescale, and the range an L2 / inner-product index accepts.

float32 holds magnitudes from about 1.4e-45 (denormal) to 3.4e38, but a squared norm ``Σ x_i²`` overflows to
inf once the entries pass about 1e19 and underflows to 0 below about 1e-23. So:

- :func:`unit_rows` divides each row by its largest ``|x_i|`` before taking the norm (the entries are then in
  [−1, 1] with one at ±1, so the norm lies in [1, √d]): rows of any finite float32 magnitude, denormals
  included, get the same unit vector as the row rescaled to 1. All-zero rows stay zero (their cosine
  similarity with everything is 0).
- :func:`rescaled` multiplies a whole matrix by one power of two (exact, so it changes no ranking and no
  ratio of distances) when its largest entry lies outside [2**-20, 2**20]: what silhouette, k-means, t-SNE
  and UMAP then see is the same data at scale ≈ 1.
- :func:`check_norm_range`: squared L2 distances and inner products are computed in float32 by faiss, so
  ``"l2"`` and ``"ip"`` take rows of L2 norm up to :data:`MAX_NORM` = 1e18 (``‖q‖² + ‖x‖²`` ≤ 2e36 stays
  finite); beyond it is a ``ValueError`` suggesting ``"cosine"`` or a rescale.

Example
-------
>>> import numpy as np
>>> unit_rows(np.array([[3e20, 4e20], [3e-30, 4e-30], [0, 0]], dtype=np.float32)).astype(float).round(6).tolist()
[[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]]
>>> rescaled(np.array([[2.0**70, 0.0]], dtype=np.float32)).tolist()
[[0.5, 0.0]]
>>> check_norm_range(np.array([[1e19, 0]], dtype=np.float32), "x", "l2")  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: x has rows of L2 norm up to 1e+19, but metric 'l2' takes norms up to 1e+18 (its squared distances ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_NORM = 1e18
_SAFE_BAND = (2.0**-20, 2.0**20)  # largest |entry| inside it: no rescale


def _row_peaks(x: np.ndarray) -> np.ndarray:
    """The largest ``|x_i|`` of each row, shape (n, 1); 1 for all-zero rows (so dividing leaves them zero)."""
    peak = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.ones((len(x), 1), x.dtype)
    return np.where(peak > 0, peak, 1).astype(x.dtype, copy=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n, d) scaled to unit L2 norm as float32, for any finite magnitude; zero rows stay zero.

    ``u = y / ‖y‖`` with ``y = x / max_i |x_i|`` (no square can overflow or underflow).
    """
    x = np.asarray(x, dtype=np.float32)
    scaled = x / _row_peaks(x)  # (n, d), entries in [-1, 1]
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)  # (n, 1), in [1, √d] or 0
    return (scaled / np.where(norms > 0, norms, 1)).astype(np.float32, copy=False)


def unit_rows_tensor(x: torch.Tensor) -> torch.Tensor:
    """:func:`unit_rows` for a (n, d) tensor, on its device."""
    import torch  # here: the CLI imports this module (via indexes.exact) for --help, without torch

    peak = x.abs().amax(dim=1, keepdim=True)  # (n, 1)
    scaled = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.nn.functional.normalize(scaled, dim=1)  # norms are 0 or >= 1: the eps never matters


def rescaled(x: np.ndarray) -> np.ndarray:
    """``x`` times the power of two that brings its largest ``|entry|`` into [0.5, 1), if it lies outside
    [2**-20, 2**20] (else ``x`` itself): exact, and every ratio of distances is unchanged."""
    peak = float(np.abs(x).max(initial=0.0))
    if peak == 0 or _SAFE_BAND[0] <= peak <= _SAFE_BAND[1]:
        return x
    exponent = np.frexp(peak)[1]  # peak = m · 2**exponent with m in [0.5, 1)
    return np.ldexp(np.asarray(x, dtype=np.float64), -exponent).astype(x.dtype, copy=False)


def check_norm_range(x: np.ndarray, name: str, metric: str) -> np.ndarray:
    """Return ``x`` if ``metric`` is ``"cosine"`` or every row's L2 norm is at most :data:`MAX_NORM`."""
    if metric == "cosine" or x.size == 0:
        return x
    peak = np.abs(x).max(axis=1)  # (n,)
    if float(peak.max()) * np.sqrt(x.shape[1]) <= MAX_NORM:  # the cheap bound: ‖x‖ ≤ √d · max|x_i|
        return x
    norms = peak.astype(np.float64) * np.linalg.norm(x / _row_peaks(x), axis=1)  # (n,)
    largest = float(norms.max())
    if largest > MAX_NORM:
        raise ValueError(
            f"{name} has rows of L2 norm up to {largest:.3g}, but metric {metric!r} takes norms up to {MAX_NORM:.0e} "
            "(its squared distances are float32); divide the vectors by a common factor, or use metric 'cosine'"
        )
    return x
