"""Which image files a data source names: a folder of class subfolders, a flat folder, or a ``.csv``.

Layouts
-------
- ``DIR/<class>/<image>``: torchvision's ``ImageFolder`` layout; the label is the subfolder's name (``"7"`` is
  the integer 7, as in a ``.csv``). Subfolders are sorted, files in each sorted by name.
- ``DIR/<image>`` with no class subfolders: unlabelled images (embedding, indexing, reports).
- ``FILE.csv`` with columns ``path`` and ``label`` (another name: ``label_column``) and optionally ``split``
  (``train`` / ``validation``), ``is_query`` and ``is_gallery`` (``0``/``1``, ``true``/``false``):
  open-metric-learning's columns (what ``train`` and ``evaluate`` do with them: :mod:`metriclearn.images.roles`).
  ``path`` is relative to the CSV's folder (or absolute). Without a label
  column the images are unlabelled.

Image files are those ending in :data:`IMAGE_SUFFIXES` (case-insensitive); hidden files are passed over.

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("cat/a.png", "cat/b.png", "dog/c.jpg"):
...     (root / name).parent.mkdir(exist_ok=True)
...     _ = (root / name).write_bytes(b"")
>>> [(item.path.name, item.label) for item in list_folder(root)]
[('a.png', 'cat'), ('b.png', 'cat'), ('c.jpg', 'dog')]
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CSV_COLUMNS = ("path", "label", "split", "is_query", "is_gallery")
SPLITS = ("train", "validation")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


@dataclass(frozen=True)
class ImageItem:
    """One image a data source names: its file, its raw label (``None``: unlabelled) and where it was named
    (``"row 3 of FILE.csv"``, or the folder), for error messages. ``split``/``is_query``/``is_gallery``: the
    CSV's optional columns (``None`` when absent)."""

    path: Path
    label: int | str | None
    where: str
    split: str | None = None
    is_query: bool | None = None
    is_gallery: bool | None = None


def is_image_file(path: Path) -> bool:
    """A visible file with an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_folder(folder: Path) -> list[ImageItem]:
    """The images of ``folder``: labelled by class subfolder, or unlabelled when it has none.

    Raises ``ValueError`` naming the folder when it holds no image at all, or images both at its top and in
    class subfolders (which label would the top ones have?).
    """
    from metriclearn._labels import label_value as _label_value

    top = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [ImageItem(f, _label_value(d.name, f"class folder {d}"), str(folder))
             for d in classes for f in sorted(d.rglob("*")) if f.is_file() and is_image_file(f)]
    if items and top:
        raise ValueError(f"image folder {str(folder)!r} has images both in class subfolders and at its top "
                         f"(e.g. {top[0].name}); put every image in its class's folder, or use no subfolders")
    if not items and not top:
        raise ValueError(f"image folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}) at its top or "
                         "in class subfolders")
    return items or [ImageItem(f, None, str(folder)) for f in top]


def is_image_csv(path: Path) -> bool:
    """Whether a ``.csv``'s header has a ``path`` column (an image list, not numeric features)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return False
    return "path" in [h.strip() for h in header]


def list_csv(path: Path, label_column: str = "label") -> list[ImageItem]:
    """The images a CSV names (see the module docstring); ``ValueError`` naming the row for a blank path or
    label, or a ``split``/``is_query``/``is_gallery`` value outside its choices."""
    from metriclearn._labels import label_value as _label_value

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    items = []
    for row_no, row in enumerate(rows, start=2):  # the header is line 1
        where = f"row {row_no} of {path}"
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row["path"]:
            raise ValueError(f"{where}: the path is blank")
        file = Path(row["path"]).expanduser()
        file = file if file.is_absolute() else path.parent / file
        label = _label_value(row[label_column], where) if label_column in row else None
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        items.append(ImageItem(file, label, where, split, _flag(row, "is_query", where),
                               _flag(row, "is_gallery", where)))
    if not items:
        raise ValueError(f"{path} names no image (only a header)")
    return items


def _flag(row: dict[str, str], column: str, where: str) -> bool | None:
    value = row.get(column, "").lower()
    if not value:
        return None
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{where}: {column} must be 0/1 or true/false, got {row[column]!r}")
    return value in _TRUE
