"""Loading labelled data (npz / csv / jsonl / npy / built-in ``digits``), label encoding, splitting.

Formats (guide: docs/data-and-metrics.md):

- ``.npz`` with arrays ``X`` (n, ...) and ``y`` (n,); labels int or str; loaded with ``allow_pickle=False``.
- ``.csv`` with a header, a ``label`` column (another name: ``CsvColumns(label=...)``, ``--label-column``) and
  numeric feature columns (every other column, except an id and metadata columns named by :class:`CsvColumns`).
- ``.jsonl``: one JSON object per line with ``text`` (str) and ``label`` (int or str; ``group`` is another name
  for it: rows of one group are equivalent texts); blank lines skipped.
- pair ``.jsonl`` (sentence-transformers' columns): ``anchor`` and ``positive`` (and optionally ``negative``, on
  every line or none) per line. Loaded as :class:`LabeledData` with ``pairs``: ``X`` holds the P anchors, then
  the P positives (then the P negatives); ``y`` is the pair id (0..P-1) for an anchor and its positive, a class
  of its own (P + i) for a negative; ``pairs[i]`` holds the row indices of pair i's texts.
- ``.npy``: a matrix (embeddings, features, probabilities) via :func:`load_matrix`, a 1-D label vector via
  :func:`load_labels`, or raw model inputs (n, ...) without labels via ``load_data(path, require_labels=False)``
  (a ``.npy`` alone cannot be training data: it has no labels, use ``.npz``).
- a folder of class subfolders of PNG/JPEG/WebP images, a folder of images (unlabelled), or a ``.csv`` with a
  ``path`` column (and ``label``, optional ``split``/``is_query``/``is_gallery``): images, decoded by
  :mod:`metriclearn.images` into X (n, C, S, S) float32 in [0, 1] (``images=ImageOptions(...)``).
- ``"digits"``: scikit-learn's bundled digits set, X (1797, 64) float32 raw 0..16 pixel values, 10 classes.

Labels are optional where they are not needed: ``load_data(..., require_labels=False)`` also reads an ``.npz``
without ``y``, a ``.csv`` without a ``label`` column, a ``.jsonl`` without ``label`` fields and a raw ``.npy``, and
then gives ``y=None``. A file labels every row or none (a blank ``label`` cell is an error naming its line).

Labels are encoded as int64 codes into ``classes``, the sorted distinct label values (JSON-able python ints or
strs); passing ``classes=`` (e.g. a trained run's ``classes.json``) encodes with that mapping instead, and
``unseen="append"`` welcomes labels outside it: they become new classes after the known ones (sorted), so
``classes[:len(known)]`` are the known classes and codes ``>= len(known)`` mark rows of classes never seen.
Whole-number floats (``1.0``) become integers losslessly; other floats, complex numbers and out-of-range integers
are refused.

The batch sampler :class:`ClassBalancedSampler` lives in :mod:`metriclearn.sampler` and is re-exported here
(imported on first use: it needs torch, the rest of this module does not).

Example
-------
>>> data = load_data("digits")
>>> len(data), data.X.shape, data.num_classes, data.classes[:3]
(1797, (1797, 64), 10, [0, 1, 2])
>>> train, val = train_val_split(data, val_fraction=0.2, seed=0)
>>> len(train), len(val)
(1437, 360)
>>> encode_labels(["cat", "dog", "cat"])
(array([0, 1, 0]), ['cat', 'dog'])
>>> encode_labels(["emu", "cat", "ant"], classes=["cat", "dog"], unseen="append")
(array([3, 0, 2]), ['cat', 'dog', 'ant', 'emu'])
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from metriclearn._checks import (
    check_choice,
    check_fraction,
    check_labels,
    check_matrix,
    check_positive_int,
    describe,
)
from metriclearn._labels import label_value as _label_value
from metriclearn._lazy import lazy_exports

if TYPE_CHECKING:
    from metriclearn.images import ImageOptions
    from metriclearn.images.roles import Roles
    from metriclearn.sampler import ClassBalancedSampler

__all__ = [
    "ClassBalancedSampler",
    "LabeledData",
    "CsvColumns",
    "csv_extras",
    "encode_labels",
    "make_pairs",
    "load_data",
    "load_labels",
    "load_matrix",
    "stratified_subsample",
    "train_val_split",
]
# the sampler is a torch Sampler: imported on first use, so reading .npy files does not import torch
__getattr__, _ = lazy_exports(__name__, {"ClassBalancedSampler": "metriclearn.sampler"})

SUFFIXES = (".npz", ".csv", ".jsonl")
DIGITS = "digits"
UNSEEN = ("error", "append")  # what encode_labels / load_data do with labels outside a given ``classes``
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class LabeledData:
    """Features (or texts) with int64 label codes into ``classes``.

    Attributes
    ----------
    X : np.ndarray or list of str
        (n, ...) float32 features, or n texts (from ``.jsonl``).
    y : np.ndarray or None
        (n,) int64 codes; code ``i`` means ``classes[i]``. ``None`` for unlabelled data (only from
        ``load_data(..., require_labels=False)``).
    classes : list
        Original label values (python int or str), sorted (a given mapping first, see :func:`encode_labels`);
        empty for unlabelled data.
    source : str
        The path the data came from, or ``"digits"``.
    pairs : np.ndarray or None
        (P, 2 or 3) rows of each pair, for pair data (see :attr:`pair_ids`).
    roles : Roles or None
        An image CSV's ``split``/``is_query``/``is_gallery`` per row (:mod:`metriclearn.images.roles`).
    """

    X: np.ndarray | list[str]
    y: np.ndarray | None
    classes: list
    source: str
    pairs: np.ndarray | None = None
    roles: Roles | None = None

    def __post_init__(self) -> None:
        if self.y is not None and len(self.X) != len(self.y):
            raise ValueError(f"{self.source}: X has {len(self.X)} rows but y has {len(self.y)} labels")

    @property
    def is_pairs(self) -> bool:
        """Whether the rows are pairs (an ``anchor``/``positive`` file): see ``pairs``."""
        return self.pairs is not None

    @property
    def pair_ids(self) -> np.ndarray | None:
        """(n,) the pair each row belongs to (its anchor's, positive's and negative's rows share it); or ``None``."""
        if self.pairs is None:
            return None
        ids = np.empty(len(self.X), np.int64)
        ids[self.pairs] = np.arange(len(self.pairs))[:, None]
        return ids

    def subset_pairs(self, indices: Sequence[int] | np.ndarray, negatives: bool = True) -> LabeledData:
        """The pairs ``indices`` of pair data, renumbered in that order (``negatives=False`` drops the
        ``negative`` texts: evaluation scores anchors against positives only)."""
        if self.pairs is None:
            raise ValueError(f"{self.source} holds no pairs")
        picked = np.asarray(indices, dtype=np.int64).reshape(-1)
        texts = [[self.X[r] for r in self.pairs[picked, c]] for c in range(self.pairs.shape[1])]
        negative_texts = texts[2] if negatives and len(texts) > 2 else None
        return make_pairs(texts[0], texts[1], negative_texts, source=self.source)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def is_labeled(self) -> bool:
        """Whether the rows carry labels (``y`` is not ``None``)."""
        return self.y is not None

    def label_values(self) -> np.ndarray | None:
        """The labels as their original values (ints or strings), or ``None`` for unlabelled data."""
        if self.y is None:
            return None
        return np.asarray(self.classes)[self.y] if len(self.y) else np.asarray(self.classes)[:0]

    @property
    def num_classes(self) -> int:
        """Number of classes in the mapping (``len(classes)``), present in this data or not."""
        return len(self.classes)

    @property
    def is_text(self) -> bool:
        """Whether ``X`` holds texts rather than a feature array."""
        return isinstance(self.X, list)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledData:
        """The rows ``indices`` (same classes mapping and source; pair data loses its pairing: see
        :meth:`subset_pairs`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        X = [self.X[i] for i in idx] if isinstance(self.X, list) else self.X[idx]
        y = None if self.y is None else self.y[idx]
        roles = None if self.roles is None else self.roles.subset(idx)
        return LabeledData(X=X, y=y, classes=list(self.classes), source=self.source, roles=roles)


def make_pairs(anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str] | None = None,
               source: str = "pairs") -> LabeledData:
    """Pair data from parallel lists of texts (see the module docstring for the layout).

    >>> data = make_pairs(["a cat", "a car"], ["the cat sat", "the car drove"])
    >>> data.X, data.y.tolist(), data.pairs.tolist(), data.pair_ids.tolist()
    (['a cat', 'a car', 'the cat sat', 'the car drove'], [0, 1, 0, 1], [[0, 2], [1, 3]], [0, 1, 0, 1])
    """
    columns = [list(anchors), list(positives)] + ([list(negatives)] if negatives is not None else [])
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"{source}: anchors, positives and negatives must be equally many, got "
                         f"{[len(c) for c in columns]}")
    if n < 2:
        raise ValueError(f"{source}: needs at least 2 pairs (each anchor's negatives are the other pairs), got {n}")
    pairs = np.arange(n * len(columns), dtype=np.int64).reshape(len(columns), n).T  # (P, 2 or 3)
    y = np.concatenate([np.arange(n), np.arange(n)] + ([np.arange(n, 2 * n)] if negatives is not None else []))
    return LabeledData(X=[t for c in columns for t in c], y=y.astype(np.int64), classes=list(range(int(y.max()) + 1)),
                       source=source, pairs=pairs)


# --------------------------------------------------------------------------------------------- labels
def _python_values(values: np.ndarray | Sequence[Any]) -> list:
    """Numpy scalars -> plain python values (JSON-able)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def encode_labels(labels: Any, classes: Sequence | None = None, unseen: str = "error") -> tuple[np.ndarray, list]:
    """Map label values to int64 codes.

    Parameters
    ----------
    labels : array-like (n,)
        Integer or string labels (whole-number floats are accepted as integers).
    classes : sequence, optional
        A saved mapping (code ``i`` means ``classes[i]``). Without it the mapping is the sorted distinct
        labels.
    unseen : {"error", "append"}
        With ``classes``: refuse labels outside it (``"error"``, for what needs the known classes, e.g. a
        classification head), or append them as new classes after the known ones in sorted order
        (``"append"``, for embedding and retrieval, which work for any class).

    Returns
    -------
    codes : np.ndarray (n,) int64
    classes : list of python int / str
        ``classes`` itself, followed (with ``unseen="append"``) by the new classes.

    Raises
    ------
    ValueError
        If a label is not in ``classes`` and ``unseen="error"`` (the message names a few of them), or
        ``classes`` has duplicates.

    Example
    -------
    >>> encode_labels([3, 1, 3], classes=[1, 2, 3])
    (array([2, 0, 2]), [1, 2, 3])
    >>> encode_labels([3, 7], classes=[1, 2, 3], unseen="append")
    (array([2, 3]), [1, 2, 3, 7])
    """
    check_choice(unseen, UNSEEN, "unseen")
    arr = check_labels(labels, "labels")
    if classes is None:
        found, codes = np.unique(arr, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), _python_values(found)
    classes = _python_values(list(classes))
    mapping = {value: code for code, value in enumerate(classes)}
    if len(mapping) != len(classes):
        raise ValueError(f"classes contains duplicate values: {describe(classes)}")
    uniques, inverse = np.unique(arr, return_inverse=True)
    values = _python_values(uniques)
    unknown = [v for v in values if v not in mapping]
    if unknown and unseen == "error":
        shown = ", ".join(repr(v) for v in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"{len(unknown)} label value(s) are not in the {len(classes)} known classes: {shown} "
            f"(known: {describe(classes)})"
        )
    classes = classes + unknown  # np.unique sorted them
    mapping.update({value: len(mapping) + i for i, value in enumerate(unknown)})
    value_codes = np.array([mapping[v] for v in values], dtype=np.int64)
    return value_codes[inverse.reshape(-1)], classes


# --------------------------------------------------------------------------------------------- readers
def _read_npz(path: Path, require_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not zipfile.is_zipfile(path):  # np.load would otherwise try (and refuse) to unpickle it
        raise ValueError(f"{path} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = ("X", "y") if require_labels or "y" in npz.files else ("X",)
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(f"{path} has no array {' or '.join(missing)} (arrays found: {npz.files})")
            arrays = {}
            for key in keys:
                try:
                    arrays[key] = npz[key]
                except ValueError as err:  # object arrays need pickle, which we refuse
                    raise ValueError(
                        f"{path}: array {key} is an object array, which cannot be loaded safely "
                        "(allow_pickle=False); save it with a numeric or string dtype"
                    ) from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err
    y = arrays.get("y")
    if y is not None and y.dtype.kind == "u" and y.size and int(y.max()) > _INT64.max:
        at = int(np.argmax(y > _INT64.max))
        raise ValueError(f"{path}: y[{at}] = {int(y[at])} does not fit in a 64-bit signed integer; "
                         "labels are int64 values or strings")
    return _check_inputs(arrays["X"], path, "X"), y


def _read_raw_npy(path: Path) -> tuple[np.ndarray, None]:
    """Raw model inputs (n, ...) without labels."""
    return _check_inputs(_load_npy(path, "data"), path, "the array"), None


def _check_inputs(X: np.ndarray, path: Path, what: str) -> np.ndarray:
    if X.ndim < 2:
        raise ValueError(f"{path}: {what} must have shape (n, features...), got shape {X.shape}")
    if np.iscomplexobj(X):  # a cast to float32 would silently drop the imaginary parts
        raise ValueError(f"{path}: {what} must hold real numbers, got complex dtype {X.dtype}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{path}: {what} must be numeric, got dtype {X.dtype}")
    return X


@dataclass(frozen=True)
class CsvColumns:
    """The columns of a ``.csv`` that are not features: the label (``--label-column``), an id (``--id-column``:
    integer ids that go into an index) and metadata kept as text (``--keep-columns A,B``). Every other column
    is a numeric feature.

    >>> CsvColumns(label="species", keep=("name",)).special()
    ['species', 'name']
    """

    label: str = "label"
    id: str | None = None
    keep: tuple[str, ...] = ()

    def special(self) -> list[str]:
        """The non-feature column names, label first."""
        return [self.label, *([self.id] if self.id else []), *self.keep]


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, fields), ...])`` of a CSV file, blank lines dropped, row widths checked."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(line, r) for line, r in enumerate(csv.reader(f), start=1) if r]  # blank lines dropped
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [h.strip() for h in rows[0][1]]
    body = rows[1:]
    for line, row in body:
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
    return header, body


@overload
def _column(header: list[str], name: str, path: Path, option: str, required: Literal[True] = True) -> int: ...
@overload
def _column(header: list[str], name: str, path: Path, option: str, required: bool) -> int | None: ...
def _column(header: list[str], name: str, path: Path, option: str, required: bool = True) -> int | None:
    """The index of column ``name`` (exactly one), or ``None`` when absent and not ``required``."""
    found = [i for i, h in enumerate(header) if h == name]
    if len(found) > 1:
        where = " and ".join(str(i + 1) for i in found)
        raise ValueError(f"{path} has {len(found)} {name!r} columns (columns {where}); keep exactly one")
    if not found and required:
        raise ValueError(f"{path} has no {name!r} column (columns: {header}); {option}")
    return found[0] if found else None


def csv_extras(path: str | os.PathLike[str], columns: CsvColumns) -> tuple[np.ndarray | None, list[dict] | None]:
    """``(ids, metadata)`` of a CSV: the ``columns.id`` column as int64 ids (``None`` without one) and one dict
    ``{name: text}`` per row of the ``columns.keep`` columns (``None`` without any); errors name the column."""
    path = Path(path)
    header, body = _csv_rows(path)
    ids = None
    if columns.id:
        at = _column(header, columns.id, path, "see --id-column")
        values = []
        for line, row in body:
            text = row[at].strip()
            try:
                values.append(int(text))
            except ValueError:
                raise ValueError(f"{path}, line {line}: id column {columns.id!r} holds {text!r}; ids must be "
                                 "integers") from None
        ids = np.array(values, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"{path}: id column {columns.id!r} repeats ids; each row needs its own")
    metadata = None
    if columns.keep:
        where = {name: _column(header, name, path, "see --keep-columns") for name in columns.keep}
        metadata = [{name: row[at] for name, at in where.items()} for _, row in body]
    return ids, metadata


def _read_csv(path: Path, require_labels: bool,
              columns: CsvColumns = CsvColumns()) -> tuple[np.ndarray, np.ndarray | None]:
    header, body = _csv_rows(path)
    named = columns.label != CsvColumns.label  # a label column named by the user must be there
    label_at = _column(header, columns.label, path, "--label-column NAME names the label column",
                       required=require_labels or named)
    label_cols = [] if label_at is None else [label_at]
    skipped = {_column(header, name, path, "see --id-column / --keep-columns") for name in columns.special()[1:]}
    width = len(header)
    feature_cols = [i for i in range(width) if i not in label_cols and i not in skipped]
    if not feature_cols:
        raise ValueError(f"{path} has no feature columns besides {', '.join(repr(n) for n in columns.special())}")
    if not body:
        return np.zeros((0, len(feature_cols)), np.float32), None if not label_cols else np.zeros(0, np.int64)
    cells = np.array([row for _, row in body], dtype=str)  # (n, width)
    try:
        X = np.char.strip(cells[:, feature_cols]).astype(np.float64)
    except ValueError:
        for col in feature_cols:  # find the column to blame
            for (line, _), value in zip(body, np.char.strip(cells[:, col]).tolist(), strict=True):
                try:
                    float(value)
                except ValueError:
                    raise ValueError(
                        f"{path}: feature column {header[col]!r} is not numeric (line {line} holds {value!r}); "
                        f"every column other than the label ({columns.label!r}) is a feature: name it with "
                        f"--label-column, --id-column or --keep-columns, or remove it"
                    ) from None
        raise
    if not label_cols:
        return X, None
    labels = [_label_value(row[label_cols[0]], f"{path}, line {line}") for line, row in body]
    y = np.array(labels) if all(isinstance(v, int) for v in labels) else np.array([str(v) for v in labels])
    return X, y


PAIR_COLUMNS = ("anchor", "positive", "negative")


def _jsonl_records(path: Path) -> Any:
    """``(line number, where, record)`` of every non-blank line of a ``.jsonl`` file (invalid JSON names its line)."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                yield line_no, where, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None


def is_pair_file(path: Path) -> bool:
    """Whether the ``.jsonl`` at ``path`` holds pairs: its first record has an ``anchor`` (the rest is checked on
    loading)."""
    first = next(iter(_jsonl_records(path)), (None, None, None))[2]
    return isinstance(first, dict) and "anchor" in first


def _read_pairs(path: Path) -> LabeledData:
    """A pair ``.jsonl``: ``anchor``, ``positive`` and optionally ``negative`` (every line or none)."""
    columns: list[list[str]] = [[], [], []]
    negatives_from: str | None = None
    for _, where, record in _jsonl_records(path):
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with 'anchor' and 'positive', got {describe(record)}")
        missing = [c for c in PAIR_COLUMNS[:2] if c not in record]
        if missing:
            raise ValueError(f"{where}: no {missing[0]!r}; a pair file has 'anchor' and 'positive' (and optionally "
                             f"'negative') on every line")
        if negatives_from is None:
            negatives_from = where if "negative" in record else ""
        elif bool(negatives_from) != ("negative" in record):
            raise ValueError(f"{where}: {'no' if negatives_from else 'a'} 'negative', unlike the first line; give "
                             f"every line a 'negative' or none")
        for column, name in zip(columns, PAIR_COLUMNS[: 3 if negatives_from else 2], strict=False):
            text = record[name]
            if not isinstance(text, str):
                raise ValueError(f"{where}: {name!r} must be a string, got {describe(text)}")
            if not text.strip():
                raise ValueError(f"{where}: {name!r} is empty")
            column.append(text)
    return make_pairs(columns[0], columns[1], columns[2] if negatives_from else None, source=str(path))


def _read_jsonl(path: Path, require_labels: bool) -> tuple[list[str], np.ndarray | None]:
    texts: list[str] = []
    labels: list[int | str] = []
    first_unlabelled: int | None = None
    for line_no, where, record in _jsonl_records(path):
        if isinstance(record, dict) and "label" not in record and "group" in record:
            record["label"] = record["group"]  # text + group: rows of one group are equivalent
        wanted = "'text' and 'label'" if require_labels else "'text'"
        if not isinstance(record, dict) or "text" not in record or (require_labels and "label" not in record):
            raise ValueError(f"{where}: expected an object with {wanted}, got {describe(record)}")
        text = record["text"]
        if not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string, got {describe(text)}")
        if not text.strip():
            raise ValueError(f"{where}: 'text' is empty")
        texts.append(text)
        if "label" not in record:
            first_unlabelled = first_unlabelled or line_no
            if labels:
                raise ValueError(f"{where}: no 'label', but earlier lines have one; label every line or none")
            continue
        if first_unlabelled is not None:
            raise ValueError(f"{where}: has a 'label', but line {first_unlabelled} has none; "
                             "label every line or none")
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, (int, float, str)):
            raise ValueError(f"{where}: 'label' must be an integer or a string, got {describe(label)}")
        if isinstance(label, str) and not label.strip():  # like a blank csv cell
            raise ValueError(f"{where}: the label is blank; give every row a label (or none, for unlabelled data)")
        label = _label_value(label, where) if not isinstance(label, str) else label
        if labels and isinstance(label, str) != isinstance(labels[0], str):
            raise ValueError(f"{where}: label {label!r} mixes strings and integers with earlier lines")
        labels.append(label)
    if first_unlabelled is not None:
        return texts, None
    return texts, np.array(labels) if labels else np.zeros(0, np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def _existing_file(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"data path {str(path)!r} is not a file ({_file_kind(path)})")
    return path


def load_data(
    source: str | os.PathLike[str],
    classes: Sequence | None = None,
    *,
    require_labels: bool = True,
    unseen: str = "error",
    columns: CsvColumns | None = None,
    images: ImageOptions | None = None,
) -> LabeledData:
    """Load a data set from ``source`` (a path or ``"digits"``).

    Parameters
    ----------
    source : str or Path
        ``"digits"`` (built in), or a ``.npz`` / ``.csv`` / ``.jsonl`` file (see the module docstring); with
        ``require_labels=False`` also a ``.npy`` of raw inputs.
    classes : sequence, optional
        Encode the labels with this mapping (e.g. a trained run's ``classes.json``). Without it the classes
        are the sorted distinct labels, and at least 2 are required.
    require_labels : bool
        ``False``: a file without labels is fine and gives ``y=None`` (embedding, indexing, reports).
    unseen : {"error", "append"}
        With ``classes``: a label outside it is a ``ValueError`` naming it, or (``"append"``) a new class
        after the known ones (see :func:`encode_labels`).
    columns : CsvColumns, optional
        For a ``.csv``: the label column's name (default ``label``) and the id / metadata columns that are not
        features (:func:`csv_extras` reads them). Given for another kind of file, it is a ``ValueError``
        unless it is the default.
    images : ImageOptions, optional
        How a folder of images, or a ``.csv`` with a ``path`` column, is decoded (size, channels, workers,
        bad files, cache; :class:`metriclearn.images.ImageOptions`): ``X`` is then (n, C, S, S) float32 in
        [0, 1] (guide: docs/images.md).

    Raises
    ------
    ValueError
        Naming the file, for: a missing file, an unknown extension, a missing ``X``/``y`` array or ``label``
        column (when required), two ``label`` columns, a blank label, a non-numeric feature column, a label
        that is a non-integral or inexact number, mismatched lengths, NaN/inf features (with the row count),
        complex features, an empty file, object arrays in an ``.npz``, fewer than 2 classes, unknown labels.
    TypeError
        If ``source`` is not a path or a string.

    Example
    -------
    >>> load_data("digits", classes=list(range(12))).num_classes
    12
    >>> seen = load_data("digits", classes=[0, 1, 2, 3], unseen="append")
    >>> seen.classes[4:], int((seen.y >= 4).sum())  # digits 4..9 are new classes, appended
    ([4, 5, 6, 7, 8, 9], 1077)
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a file path or {DIGITS!r}, got {describe(source)}")
    check_choice(unseen, UNSEEN, "unseen")
    source_name = str(source)
    X: np.ndarray | list[str]
    y: np.ndarray | None
    if source_name == DIGITS:
        X, y = _digits()
    elif _is_images(Path(source)):
        from metriclearn.images import ImageOptions, read_image_rows

        label = (columns or CsvColumns()).label
        X, y, roles = read_image_rows(Path(source), label, require_labels, images or ImageOptions())
        return dataclasses.replace(_assemble(X, y, classes, source_name, unseen), roles=roles)
    else:
        path = _existing_file(source)
        suffix = path.suffix.lower()
        if suffix == ".npy" and require_labels:
            raise ValueError(
                f"{path}: a .npy file holds no labels; save features and labels together as .npz (X, y)"
            )
        if suffix not in (*SUFFIXES, ".npy"):
            raise ValueError(
                f"{path}: unknown data file extension {suffix!r}; expected one of {', '.join(SUFFIXES)} "
                + ("or 'digits'" if require_labels else "or .npy (raw inputs, unlabelled), or 'digits'")
            )
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty")
        if columns not in (None, CsvColumns()) and suffix != ".csv":
            raise ValueError(f"{path}: --label-column, --id-column and --keep-columns apply to .csv files only")
        try:
            if suffix == ".jsonl" and is_pair_file(path):
                return _read_pairs(path)
            if suffix == ".npy":
                X, y = _read_raw_npy(path)
            elif suffix == ".csv":
                X, y = _read_csv(path, require_labels, columns or CsvColumns())
            elif suffix == ".npz":
                X, y = _read_npz(path, require_labels)
            else:
                X, y = _read_jsonl(path, require_labels)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    return _assemble(X, y, classes, source_name, unseen)


def _is_images(path: Path) -> bool:
    """A folder, or a ``.csv`` with a ``path`` column: images (:mod:`metriclearn.images`)."""
    from metriclearn.images import is_image_source

    return is_image_source(path)


def _assemble(
    X: np.ndarray | list[str], y: np.ndarray | None, classes: Sequence | None, source: str, unseen: str
) -> LabeledData:
    """Validate raw (X, labels) from ``source`` and encode the labels."""
    if y is not None and y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-D (n,), got shape {y.shape}")
    if y is not None and len(X) != len(y):
        raise ValueError(f"{source}: X has {len(X)} rows but y has {len(y)} labels")
    if len(X) == 0:
        raise ValueError(f"{source} is empty: it holds no samples")
    if isinstance(X, np.ndarray):
        X = X.astype(np.float32)
        flat = X.reshape(len(X), -1)
        bad_rows = int((~np.isfinite(flat)).any(axis=1).sum())
        if bad_rows:
            raise ValueError(f"{source}: X contains NaN or inf values in {bad_rows} of {len(X)} rows")
    if y is None:
        return LabeledData(X=X, y=None, classes=[], source=source)
    try:
        codes, mapping = encode_labels(check_labels(y, "y"), classes, unseen)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    present = len(np.unique(codes))
    if len(mapping) < 2 or (classes is None and present < 2):
        raise ValueError(f"{source}: needs at least 2 classes, found {len(mapping)}: {describe(mapping)}")
    return LabeledData(X=X, y=codes, classes=mapping, source=source)


def load_matrix(path: str | Path, name: str | None = None) -> np.ndarray:
    """Load a 2-D finite float32 matrix from a ``.npy`` file (embeddings, features, probabilities).

    ``name`` says what the file holds (e.g. ``"embeddings"``) for error messages.

    Raises
    ------
    ValueError
        Naming the file: missing, not ``.npy``, unreadable, object array, not 2-D, empty, NaN/inf rows.
    TypeError
        For a non-numeric array.
    """
    arr = _load_npy(path, name or "matrix")
    return check_matrix(arr, f"{name or 'matrix'} file {str(path)!r}")


def load_labels(path: str | Path, n: int | None = None) -> np.ndarray:
    """Load a 1-D label vector (ints or strings, not yet encoded) from a ``.npy`` file.

    ``n``: the number of samples the labels must match. Encode with :func:`encode_labels`.
    """
    arr = _load_npy(path, "labels")
    if arr.size == 0:
        raise ValueError(f"labels file {str(path)!r} is empty")
    return check_labels(arr, f"labels file {str(path)!r}", n=n)


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} file {str(p)!r} does not exist")
    if not p.is_file():  # a folder, a device (a link to /dev/zero would be read for ever), a pipe
        raise ValueError(f"{what} file {str(p)!r} is not a file ({_file_kind(p)}); give a .npy file")
    if p.suffix.lower() != ".npy":
        raise ValueError(f"{what} file {str(p)!r} must be a .npy file, got extension {p.suffix!r}")
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # np.load would otherwise try (and refuse) to unpickle it
            raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file (no NumPy header)")
        _check_npy_size(f, p, what)
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{what} file {str(p)!r} holds an object array, which cannot be loaded safely") from None
        raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file: {err}") from None


def _file_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words (``"a link to a device /dev/zero"``)."""
    target = path.resolve()
    kind = "a folder" if target.is_dir() else "a device" if target.is_char_device() or target.is_block_device() \
        else "a pipe" if target.is_fifo() else "a socket" if target.is_socket() else "not a file"
    return f"a link to {kind} {target}" if path.is_symlink() else kind


def _check_npy_size(f: Any, path: Path, what: str) -> None:
    """Refuse a ``.npy`` whose header declares more data than the file holds (a fake or truncated header would
    make numpy try to allocate it all: "Unable to allocate 233. TiB"), naming the file. ``f`` is past the magic."""
    from numpy.lib import format as npy

    try:
        f.seek(0)
        version = npy.read_magic(f)
        readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
        if version not in readers:
            return  # a newer format: np.load checks it
        shape, _, dtype = readers[version](f)
    except ValueError as err:
        raise ValueError(f"{what} file {str(path)!r} is not a readable .npy file: {err}") from None
    if dtype.hasobject:
        return  # refused below, when np.load asks for pickle
    declared = math.prod(shape) * dtype.itemsize
    present = path.stat().st_size - f.tell()
    if declared > present:
        raise ValueError(f"{what} file {str(path)!r} is damaged or truncated: its header declares shape {shape} of "
                         f"{dtype} ({declared:,} bytes) but the file holds {present:,} bytes of data")


# --------------------------------------------------------------------------------------------- splitting
def train_val_split(
    data: LabeledData, val_fraction: float = 0.2, seed: int = 0
) -> tuple[LabeledData, LabeledData]:
    """Seeded stratified split into (train, val); each keeps the original row order.

    Stratification uses scikit-learn's ``train_test_split(stratify=y)``. Classes with a single sample cannot
    be stratified: those samples always go to ``train`` (they could not be evaluated by retrieval anyway),
    and the other samples are split with ``val_fraction`` of them in ``val``. If even that cannot be
    stratified (``val`` or ``train`` would get fewer rows than there are classes), the split falls back to a
    plain seeded shuffle split. ``val_fraction=0`` gives an empty ``val``.

    Example
    -------
    >>> import numpy as np
    >>> data = LabeledData(np.zeros((7, 2), np.float32), np.array([0, 0, 0, 1, 1, 1, 2]), [0, 1, 2], "toy")
    >>> train, val = train_val_split(data, val_fraction=0.3, seed=0)
    >>> sorted(val.y.tolist()), train.y.tolist().count(2)  # the single class-2 sample stays in train
    ([0, 1], 1)
    """
    check_fraction(val_fraction, "val_fraction")
    if val_fraction >= 1:
        raise ValueError(f"val_fraction must be below 1 (train would be empty), got {val_fraction}")
    n = len(data)
    if data.y is None:
        raise ValueError(f"train_val_split stratifies by label, but {data.source} has no labels")
    _, counts = np.unique(data.y, return_counts=True)
    singles = np.isin(data.y, np.unique(data.y)[counts == 1])
    splittable = np.flatnonzero(~singles)
    n_val = int(np.ceil(val_fraction * len(splittable)))
    if n_val == 0:
        return data.subset(np.arange(n)), data.subset(np.zeros(0, np.int64))
    y = data.y[splittable]
    n_classes = len(np.unique(y))
    stratify = y if min(n_val, len(splittable) - n_val) >= n_classes else None
    from sklearn.model_selection import train_test_split  # here: scikit-learn costs seconds of start-up

    train_idx, val_idx = train_test_split(splittable, test_size=n_val, random_state=seed, stratify=stratify)
    train_idx = np.sort(np.concatenate([train_idx, np.flatnonzero(singles)]))
    return data.subset(train_idx), data.subset(np.sort(val_idx))


def stratified_subsample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` rows, each class keeping its share of the rows.

    Class c with n_c of n rows gets ⌊max_points · n_c / n⌋ rows plus one for the classes with the largest
    remainders (Hamilton's method), and at least one row whenever ``max_points`` >= the number of
    classes; the rows of each class are drawn uniformly with ``seed``.

    Example
    -------
    >>> y = np.array([0] * 90 + [1] * 9 + [2])
    >>> np.bincount(y[stratified_subsample(y, 10)]).tolist()
    [8, 1, 1]
    >>> len(stratified_subsample(y, 500))
    100
    """
    labels = check_labels(labels, "labels")
    max_points = check_positive_int(max_points, "max_points")
    n = len(labels)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    share = max_points * counts / n
    quota = np.floor(share).astype(np.int64)
    if max_points >= len(classes):
        quota = np.maximum(quota, 1)
    left = max_points - int(quota.sum())
    if left > 0:  # hand the remaining rows to the largest remainders
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        quota[order[:left]] += 1
    elif left < 0:  # the at-least-one rule overshot: take back from the biggest quotas
        for c in np.argsort(-quota, kind="stable")[:-left]:
            quota[c] -= 1
    quota = np.minimum(quota, counts)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(inverse == c), size=q, replace=False) for c, q in enumerate(quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
