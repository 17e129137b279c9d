"""A class label read from text (a CSV cell, a folder name): an exact int or a name.

>>> label_value("7", "row 2"), label_value("1.0", "row 3"), label_value("cat", "row 4")
(7, 1, 'cat')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_INT64 = np.iinfo(np.int64)


def label_value(value: Any, where: str) -> int | str:
    """A label read from text: an int (also from an integral float such as ``1.0``) or a string.

    A number that is not an exact int64 integer (``1.5``, ``nan``, ``1e20``) is refused: silently keeping it
    as text, or rounding it, would corrupt the classes.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"{where}: the label is blank; give every row a label (or none, for unlabelled data)")
        try:
            integer = int(text)
        except ValueError:
            integer = None
        if integer is not None:
            return integral(integer, where, text)
        try:
            number = float(text)
        except ValueError:
            return text
    else:
        number, text = value, repr(value)
        if isinstance(value, int):
            return integral(value, where, text)
    if not (math.isfinite(number) and number == round(number) and abs(number) <= 2**53):
        raise ValueError(f"{where}: label {text} is a number but not an integer that can be represented exactly; "
                         "labels are integers or names")
    return int(number)


def integral(value: int, where: str, text: str) -> int:
    """``value`` if it fits in an int64, else an error naming ``where`` and the ``text`` read."""
    if not _INT64.min <= value <= _INT64.max:
        raise ValueError(f"{where}: label {text} does not fit in a 64-bit integer")
    return value
