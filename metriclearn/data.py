"""Loading labelled data (npz / csv / jsonl / npy / built-in ``digits``), label encoding, splitting.

Formats (see DESIGN.md):

- ``.npz`` with arrays ``X`` (n, ...) and ``y`` (n,); labels int or str; loaded with ``allow_pickle=False``.
- ``.csv`` with a header, a ``label`` column and numeric feature columns (every other column).
- ``.jsonl``: one JSON object per line with ``text`` (str) and ``label`` (int or str); blank lines skipped.
- ``.npy``: a matrix (embeddings, features, probabilities) via :func:`load_matrix`, or a 1-D label vector via
  :func:`load_labels` (a ``.npy`` alone cannot be training data: it has no labels, use ``.npz``).
- ``"digits"``: scikit-learn's bundled digits set, X (1797, 64) float32 raw 0..16 pixel values, 10 classes.

Labels are encoded as int64 codes into ``classes``, the sorted distinct label values (JSON-able python ints or
strs); passing ``classes=`` (e.g. a trained run's ``classes.json``) encodes with that mapping instead.

The batch sampler :class:`ClassBalancedSampler` lives in :mod:`metriclearn.sampler` and is re-exported here.

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
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from metriclearn._checks import check_fraction, check_labels, check_matrix, check_positive_int, describe
from metriclearn.sampler import ClassBalancedSampler

__all__ = [
    "ClassBalancedSampler",
    "LabeledData",
    "encode_labels",
    "load_data",
    "load_labels",
    "load_matrix",
    "stratified_subsample",
    "train_val_split",
]

SUFFIXES = (".npz", ".csv", ".jsonl")
DIGITS = "digits"


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class LabeledData:
    """Features (or texts) with int64 label codes into ``classes``.

    Attributes
    ----------
    X : np.ndarray or list of str
        (n, ...) float32 features, or n texts (from ``.jsonl``).
    y : np.ndarray
        (n,) int64 codes; code ``i`` means ``classes[i]``.
    classes : list
        Original label values (python int or str), sorted.
    source : str
        The path the data came from, or ``"digits"``.
    """

    X: np.ndarray | list[str]
    y: np.ndarray
    classes: list
    source: str

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise ValueError(f"{self.source}: X has {len(self.X)} rows but y has {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        """Number of classes in the mapping (``len(classes)``), present in this data or not."""
        return len(self.classes)

    @property
    def is_text(self) -> bool:
        """Whether ``X`` holds texts rather than a feature array."""
        return isinstance(self.X, list)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledData:
        """The rows ``indices`` (same classes mapping and source)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        X = [self.X[i] for i in idx] if isinstance(self.X, list) else self.X[idx]
        return LabeledData(X=X, y=self.y[idx], classes=list(self.classes), source=self.source)


# --------------------------------------------------------------------------------------------- labels
def _python_values(values: np.ndarray | Sequence[Any]) -> list:
    """Numpy scalars -> plain python values (JSON-able)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def encode_labels(labels: Any, classes: Sequence | None = None) -> tuple[np.ndarray, list]:
    """Map label values to int64 codes.

    Parameters
    ----------
    labels : array-like (n,)
        Integer or string labels (whole-number floats are accepted as integers).
    classes : sequence, optional
        A saved mapping (code ``i`` means ``classes[i]``). Without it the mapping is the sorted distinct
        labels.

    Returns
    -------
    codes : np.ndarray (n,) int64
    classes : list of python int / str

    Raises
    ------
    ValueError
        If a label is not in ``classes`` (the message names a few of them) or ``classes`` has duplicates.

    Example
    -------
    >>> encode_labels([3, 1, 3], classes=[1, 2, 3])
    (array([2, 0, 2]), [1, 2, 3])
    """
    arr = check_labels(labels, "labels")
    if classes is None:
        values, codes = np.unique(arr, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), _python_values(values)
    classes = _python_values(list(classes))
    mapping = {value: code for code, value in enumerate(classes)}
    if len(mapping) != len(classes):
        raise ValueError(f"classes contains duplicate values: {describe(classes)}")
    values, inverse = np.unique(arr, return_inverse=True)
    value_codes = np.array([mapping.get(v, -1) for v in _python_values(values)], dtype=np.int64)
    unknown = [v for v, c in zip(_python_values(values), value_codes) if c < 0]
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"{len(unknown)} label value(s) are not in the {len(classes)} known classes: {shown} "
            f"(known: {describe(classes)})"
        )
    return value_codes[inverse.reshape(-1)], classes


# --------------------------------------------------------------------------------------------- readers
def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would otherwise try (and refuse) to unpickle it
        raise ValueError(f"{path} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("X", "y") if k not in npz.files]
            if missing:
                raise ValueError(f"{path} has no array {' or '.join(missing)} (arrays found: {npz.files})")
            arrays = {}
            for key in ("X", "y"):
                try:
                    arrays[key] = npz[key]
                except ValueError as err:  # object arrays need pickle, which we refuse
                    raise ValueError(
                        f"{path}: array {key} is an object array, which cannot be loaded safely "
                        "(allow_pickle=False); save it with a numeric or string dtype"
                    ) from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err
    X, y = arrays["X"], arrays["y"]
    if X.ndim < 2:
        raise ValueError(f"{path}: X must have shape (n, features...), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{path}: X must be numeric, got dtype {X.dtype}")
    return X, y


def _csv_label(value: str) -> int | str:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        return value


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise ValueError(f"{path} has no 'label' column (columns: {header})")
    body = rows[1:]
    width = len(header)
    for line, row in enumerate(body, start=2):
        if len(row) != width:
            raise ValueError(f"{path}, line {line}: {len(row)} fields, but the header has {width}")
    label_col = header.index("label")
    feature_cols = [i for i in range(width) if i != label_col]
    if not feature_cols:
        raise ValueError(f"{path} has no feature columns besides 'label'")
    if not body:
        return np.zeros((0, len(feature_cols)), np.float32), np.zeros(0, np.int64)
    cells = np.array(body, dtype=str)  # (n, width)
    try:
        X = np.char.strip(cells[:, feature_cols]).astype(np.float64)
    except ValueError:
        for col in feature_cols:  # find the column to blame
            column = np.char.strip(cells[:, col]).tolist()
            for line, value in enumerate(column, start=2):
                try:
                    float(value)
                except ValueError:
                    raise ValueError(
                        f"{path}: column {header[col]!r} is not numeric (line {line} holds {value!r}); "
                        "every column other than 'label' must be a number"
                    ) from None
        raise
    labels = [_csv_label(v) for v in cells[:, label_col]]
    y = np.array(labels) if all(isinstance(v, int) for v in labels) else np.array([str(v) for v in labels])
    return X, y


def _read_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    labels: list[int | str] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record or "label" not in record:
                raise ValueError(f"{where}: expected an object with 'text' and 'label', got {describe(record)}")
            text, label = record["text"], record["label"]
            if not isinstance(text, str):
                raise ValueError(f"{where}: 'text' must be a string, got {describe(text)}")
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise ValueError(f"{where}: 'label' must be an integer or a string, got {describe(label)}")
            if labels and isinstance(label, str) != isinstance(labels[0], str):
                raise ValueError(f"{where}: label {label!r} mixes strings and integers with earlier lines")
            texts.append(text)
            labels.append(label)
    return texts, np.array(labels) if labels else np.zeros(0, np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def _existing_file(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"data path {str(path)!r} is not a file")
    return path


def load_data(source: str | Path, classes: Sequence | None = None) -> LabeledData:
    """Load a labelled data set from ``source`` (a path or ``"digits"``).

    Parameters
    ----------
    source : str or Path
        ``"digits"`` (built in), or a ``.npz`` / ``.csv`` / ``.jsonl`` file (see the module docstring).
    classes : sequence, optional
        Encode the labels with this mapping (e.g. a trained run's ``classes.json``); a label outside it is
        a ``ValueError``. Without it the classes are the sorted distinct labels, and at least 2 are required.

    Raises
    ------
    ValueError
        Naming the file, for: a missing file, an unknown extension, a missing ``X``/``y`` array or ``label``
        column, a non-numeric feature column, mismatched lengths, NaN/inf features (with the row count), an
        empty file, object arrays in an ``.npz``, fewer than 2 classes, unknown labels.

    Example
    -------
    >>> load_data("digits", classes=list(range(12))).num_classes
    12
    """
    source_name = str(source)
    if source_name == DIGITS:
        X, y = _digits()
    else:
        path = _existing_file(source)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            raise ValueError(
                f"{path}: a .npy file holds no labels; save features and labels together as .npz (X, y)"
            )
        if suffix not in SUFFIXES:
            raise ValueError(
                f"{path}: unknown data file extension {suffix!r}; expected one of {', '.join(SUFFIXES)} "
                "or 'digits'"
            )
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty")
        reader = {".npz": _read_npz, ".csv": _read_csv, ".jsonl": _read_jsonl}[suffix]
        try:
            X, y = reader(path)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    return _assemble(X, y, classes, source_name)


def _assemble(X: np.ndarray | list[str], y: np.ndarray, classes: Sequence | None, source: str) -> LabeledData:
    """Validate raw (X, labels) from ``source`` and encode the labels."""
    if y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-D (n,), got shape {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{source}: X has {len(X)} rows but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{source} is empty: it holds no samples")
    if isinstance(X, np.ndarray):
        X = X.astype(np.float32)
        flat = X.reshape(len(X), -1)
        bad_rows = int((~np.isfinite(flat)).any(axis=1).sum())
        if bad_rows:
            raise ValueError(f"{source}: X contains NaN or inf values in {bad_rows} of {len(X)} rows")
    try:
        codes, mapping = encode_labels(y, classes)
    except ValueError as err:
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
    if not p.is_file():
        raise ValueError(f"{what} file {str(p)!r} does not exist")
    if p.suffix.lower() != ".npy":
        raise ValueError(f"{what} file {str(p)!r} must be a .npy file, got extension {p.suffix!r}")
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # np.load would otherwise try (and refuse) to unpickle it
            raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file (no NumPy header)")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{what} file {str(p)!r} holds an object array, which cannot be loaded safely") from None
        raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{what} file {str(p)!r} is not a readable .npy file: {err}") from None


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
    _, counts = np.unique(data.y, return_counts=True)
    singles = np.isin(data.y, np.unique(data.y)[counts == 1])
    splittable = np.flatnonzero(~singles)
    n_val = int(np.ceil(val_fraction * len(splittable)))
    if n_val == 0:
        return data.subset(np.arange(n)), data.subset(np.zeros(0, np.int64))
    y = data.y[splittable]
    n_classes = len(np.unique(y))
    stratify = y if min(n_val, len(splittable) - n_val) >= n_classes else None
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
