"""Input validation shared by every public entry point.

Each check raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with a message that names the
argument and the value it saw, so the CLI can print it as one line.

Example
-------
>>> import numpy as np
>>> check_matrix(np.zeros((3, 2), dtype=np.float32), "queries").shape
(3, 2)
>>> check_positive_int(0, "k")
Traceback (most recent call last):
    ...
ValueError: k must be a positive integer, got 0
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_EXACT_FLOAT_INT = 2.0**53  # every integer up to this is exactly a float64
_NOT_LABELS = {"S": "bytes", "M": "dates", "m": "time spans", "V": "raw records"}  # dtype kinds


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``torch.Tensor``, without importing torch (no tensor exists before it is imported)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(value, torch_module.Tensor)


def describe(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for error messages (arrays show shape and dtype, not data)."""
    if isinstance(value, np.ndarray) or is_tensor(value):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_choice(value: Any, choices: Collection[Any], name: str) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {describe(value)}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a boolean (``True``/``False``, numpy's too), else a ``TypeError``: a string such as
    ``"maybe"`` or ``"false"`` is not quietly taken for ``True``.

    >>> check_bool("maybe", "freeze")
    Traceback (most recent call last):
        ...
    TypeError: freeze must be true or false, got 'maybe'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be true or false, got {describe(value)}")
    return bool(value)


MAX_SEED = 2**32 - 1  # numpy's seeds (and so every seed metriclearn passes on) are 32-bit


def check_seed(value: Any, name: str = "seed") -> int:
    """Return ``value`` if it is an integer in [0, 2**32 − 1], the range numpy's random generators take.

    >>> check_seed(2**32)
    Traceback (most recent call last):
        ...
    ValueError: seed must be an integer from 0 to 2**32 - 1 (4294967295), got 4294967296
    """
    value = check_positive_int(value, name, allow_zero=True)
    if value > MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**32 - 1 ({MAX_SEED}), got {value}")
    return value


def check_positive_int(value: Any, name: str, allow_zero: bool = False) -> int:
    """Return ``value`` as ``int`` if it is an integer > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {describe(value)}")
    low = 0 if allow_zero else 1
    if value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value}")
    return int(value)


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as ``float`` if it is a finite number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "a finite non-negative" if allow_zero else "a finite positive"
        raise ValueError(f"{name} must be {kind} number, got {value}")
    return value


def check_fraction(value: Any, name: str) -> float:
    """Return ``value`` as ``float`` if it lies in [0, 1]."""
    value = check_positive_float(value, name, allow_zero=True)
    if value > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def check_interval(value: Any, name: str, low: float = 0.0, high: float = 1.0, *, open_low: bool = False,
                   open_high: bool = False) -> float:
    """Return ``value`` as ``float`` if it is a real number in the interval from ``low`` to ``high``.

    ``open_low`` / ``open_high`` leave the end out: ``(0, 1]`` is ``open_low=True``. A non-number (a bool, a
    string) is a ``TypeError``, a number outside (or NaN) a ``ValueError``, both naming the interval.

    >>> check_interval(0.95, "target_precision", open_low=True)
    0.95
    >>> check_interval(1.0, "unseen_share", open_high=True)
    Traceback (most recent call last):
        ...
    ValueError: unseen_share must lie in [0, 1), got 1.0
    >>> check_interval(0, "alpha", open_low=True, open_high=True)
    Traceback (most recent call last):
        ...
    ValueError: alpha must lie strictly between 0 and 1, got 0
    """
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in {interval}, got {describe(value)}")
    number = float(value)
    below = number <= low if open_low else number < low
    above = number >= high if open_high else number > high
    if np.isnan(number) or below or above:
        where = f"strictly between {low:g} and {high:g}" if open_low and open_high else f"in {interval}"
        raise ValueError(f"{name} must lie {where}, got {value}")
    return number


def check_matrix(
    x: Any,
    name: str,
    dim: int | None = None,
    allow_empty: bool = False,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Validate a 2-D finite numeric array and return it as a C-contiguous ``dtype`` array.

    Raises ``ValueError`` for the wrong number of dimensions, a width other than ``dim``, no rows
    (unless ``allow_empty``), NaN/inf values and finite values beyond ``dtype``'s range (1e39 as float32);
    ``TypeError`` for non-numeric data.
    """
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):  # a cast to float would silently drop the imaginary parts
        raise TypeError(f"{name} must hold real numbers, got complex dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got {arr.ndim}-D with shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    source = arr
    with np.errstate(over="ignore"):  # a finite value too large for dtype is reported below, by name
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        bad_rows = (~np.isfinite(arr)).any(axis=1)
        if source.dtype != arr.dtype and np.isfinite(source[bad_rows]).all():  # finite, but too large for dtype
            largest = float(np.abs(source[bad_rows]).max())
            raise ValueError(
                f"{name} holds values up to {largest:.3g} in {int(bad_rows.sum())} of {arr.shape[0]} rows, beyond "
                f"{np.dtype(dtype).name}'s range (|x| <= {float(np.finfo(dtype).max):.3g}); divide by a common factor"
            )
        raise ValueError(f"{name} contains NaN or inf values in {int(bad_rows.sum())} of {arr.shape[0]} rows")
    return arr


def check_labels(y: Any, name: str, n: int | None = None) -> np.ndarray:
    """Validate a 1-D label vector of length ``n`` (if given) and return it as a numpy array.

    Labels may be integers or strings (bytes, datetimes and records are a ``TypeError`` saying to convert
    them). Floats are accepted when each is a whole number that a float64
    holds exactly (|v| <= 2**53): ``1.0`` becomes ``1`` losslessly, while ``1.5``, NaN or ``1e20`` (whose
    integer value a float cannot know) are refused, naming the first offending position. Complex and object arrays are a
    ``TypeError``.

    >>> check_labels(np.array([3.0, 1.0]), "y").tolist()
    [3, 1]
    >>> check_labels(np.array([1.0, 1e20]), "y")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: y must hold integer or string labels; position 1 holds the float 1e+20, which is not an integer ...
    """
    if is_tensor(y):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got {arr.ndim}-D with shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} samples")
    if np.iscomplexobj(arr) or arr.dtype == object:
        raise TypeError(f"{name} must hold integer or string labels, got dtype {arr.dtype}")
    if arr.dtype.kind in _NOT_LABELS:  # bytes, dates, durations, records: say how to make them labels
        raise TypeError(f"{name} must hold integer or string labels, got {_NOT_LABELS[arr.dtype.kind]} (dtype "
                        f"{arr.dtype}); convert them first, e.g. labels.astype(str)")
    if np.issubdtype(arr.dtype, np.floating):
        exact = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) <= _EXACT_FLOAT_INT)
        if not exact.all():
            at = int(np.flatnonzero(~exact)[0])
            raise ValueError(
                f"{name} must hold integer or string labels; position {at} holds the float {float(arr[at])!r}, "
                f"which is "
                "not an integer a float represents exactly (|label| <= 2**53)"
            )
        arr = arr.astype(np.int64)
    return arr


def check_probabilities(proba: Any, name: str, n: int | None = None, num_classes: int | None = None,
                        rows: str = "rows", columns: str = "classes") -> np.ndarray:
    """Validate an (n, K) matrix of class probabilities: finite, non-negative, rows summing to 1 (± 1e-3).

    ``n`` and ``num_classes`` are the expected shape; ``rows`` and ``columns`` say where they come from in
    the message (e.g. ``"rows of --features"``). Returns float64.

    >>> check_probabilities([[0.25, 0.75]], "probs", num_classes=2).tolist()
    [[0.25, 0.75]]
    >>> check_probabilities([[0.5, 0.6]], "probs file 'p.npy'")
    Traceback (most recent call last):
        ...
    ValueError: probs file 'p.npy' rows must be non-negative and sum to 1; row 0 sums to 1.1
    """
    p = check_matrix(proba, name, dtype=np.float64)
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows, but there are {n} {rows}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(f"{name} has {p.shape[1]} columns, but there are {num_classes} {columns}")
    sums = p.sum(axis=1)
    if (p < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
        negative = np.flatnonzero((p < 0).any(axis=1))
        worst = int(negative[0]) if len(negative) else int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"{name} rows must be non-negative and sum to 1; row {worst} sums to {sums[worst]:.6g}"
                         + (" and holds a negative value" if len(negative) else ""))
    return p


def check_embeddings_tensor(embeddings: Any, name: str = "embeddings") -> torch.Tensor:
    """Validate a (B, D) floating-point tensor (losses' boundary check; finiteness is not scanned)."""
    if not is_tensor(embeddings):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    return embeddings


def check_labels_tensor(labels: Any, batch_size: int, name: str = "labels") -> torch.Tensor:
    """Validate a (B,) integer label tensor that matches a batch of ``batch_size`` rows."""
    if not is_tensor(labels):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == sys.modules["torch"].bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    return labels
