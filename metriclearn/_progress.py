"""tqdm progress bars that stay quiet when output is not a terminal or the user asked for quiet.

Example
-------
>>> set_quiet(True)
>>> sum(progress(range(3), desc="adding"))
3
>>> set_quiet(False)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tqdm.auto import tqdm

T = TypeVar("T")
_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn every metriclearn progress bar off (``True``) or back to automatic (``False``)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    """Whether progress bars are forced off: by :func:`set_quiet`, or on a torchrun rank other than 0 (``RANK``),
    so that several processes draw one bar, rank 0's."""
    return _QUIET or os.environ.get("RANK", "0") != "0"


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, off with :func:`set_quiet` and (``disable=None``) when not a TTY."""
    from tqdm.auto import tqdm  # here: importing tqdm.auto costs CLI start-up time before any bar is shown

    kwargs.setdefault("disable", True if is_quiet() else None)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
