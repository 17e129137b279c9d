"""Images as data: folders and CSV lists of PNG/JPEG/WebP files, decoded into the arrays every command takes.

``metriclearn.data.load_data`` reads a folder, or a ``.csv`` with a ``path`` column, through
:func:`read_images`: the files are listed (:mod:`~metriclearn.images.listing`), decoded with Pillow to
``(C, S, S)`` pixels (:mod:`~metriclearn.images.decode`: resize the shorter side to S, centre crop) by a
``DataLoader`` with worker processes and a disk cache (:mod:`~metriclearn.images.loader`), and scaled to
float32 in [0, 1]: ``X`` is (n, C, S, S). Training augmentation and a backbone's resize and normalisation act on
batches of those tensors (:mod:`~metriclearn.images.transforms`, :mod:`metriclearn.vision`). Guide:
docs/images.md.

Example
-------
>>> import tempfile, pathlib, numpy as np
>>> from PIL import Image
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for i, name in enumerate(["cat/1.png", "cat/2.png", "dog/3.png"]):
...     (root / name).parent.mkdir(exist_ok=True)
...     Image.fromarray(np.uint8([[[50 * i, 0, 255]] * 9] * 12)).save(root / name)
>>> X, labels = read_images(root, options=ImageOptions(size=8, cache=False))
>>> X.shape, X.dtype, labels.tolist()
((3, 3, 8, 8), dtype('float32'), ['cat', 'cat', 'dog'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metriclearn.images.listing import IMAGE_SUFFIXES, ImageItem, is_image_csv, list_csv, list_folder
from metriclearn.images.roles import Roles

__all__ = ["IMAGE_SUFFIXES", "DEFAULT_MAX_SIDE", "ImageOptions", "is_image_source", "read_images", "read_image_rows"]

DEFAULT_MAX_SIDE = 224  # an automatic size never exceeds this (ImageNet's input size)


@dataclass(frozen=True)
class ImageOptions:
    """How images are decoded.

    size:
        S, the side of the decoded square; ``None``: the shorter side of the first image, at most
        :data:`DEFAULT_MAX_SIDE` (a run records its size, and every ``--model`` command decodes at it).
    channels:
        1 (grey) or 3 (RGB); ``None``: 1 when every image is grey, else 3.
    workers:
        Decoding processes (0: this process).
    skip_bad:
        Leave out (and list, in a warning) images that cannot be read instead of stopping at the first.
    cache:
        Keep the decoded pixels on disk (:mod:`metriclearn.images.loader`).
    """

    size: int | None = None
    channels: int | None = None
    workers: int = 0
    skip_bad: bool = False
    cache: bool = True


def is_image_source(path: Path) -> bool:
    """A folder, or a ``.csv`` whose header has a ``path`` column."""
    return path.is_dir() or (path.suffix.lower() == ".csv" and path.is_file() and is_image_csv(path))


def read_images(source: Path, label_column: str = "label", require_labels: bool = False,
                options: ImageOptions = ImageOptions()) -> tuple[np.ndarray, np.ndarray | None]:
    """``(X (n, C, S, S) float32 in [0, 1], raw labels (n,) or None)`` of an image folder or CSV.

    Raises ``ValueError`` naming the source for: no image, labels needed but absent (a folder without class
    subfolders, a CSV without ``label_column``), a bad image (naming the file and its CSV row) unless
    ``options.skip_bad``.
    """
    X, labels, _ = read_image_rows(source, label_column, require_labels, options)
    return X, labels


def read_image_rows(source: Path, label_column: str = "label", require_labels: bool = False,
                    options: ImageOptions = ImageOptions()) -> tuple[np.ndarray, np.ndarray | None, Roles | None]:
    """:func:`read_images` and the rows' roles (a CSV's ``split``/``is_query``/``is_gallery``:
    :class:`~metriclearn.images.roles.Roles`, ``None`` for a folder or a CSV without them), of the images kept."""
    from metriclearn.images.decode import image_side
    from metriclearn.images.loader import decode_all

    source = Path(source)
    items = list_folder(source) if source.is_dir() else list_csv(source, label_column)
    roles = Roles.from_items(items)  # checked before the (long) decoding
    labelled = items[0].label is not None
    if require_labels and not labelled:
        missing = "no class subfolders" if source.is_dir() else f"no {label_column!r} column"
        raise ValueError(f"{source} has no labels ({missing}), but they are needed here")
    size = options.size
    if size is None:
        size = min(_first_side(items, image_side, options.skip_bad), DEFAULT_MAX_SIDE)
    decoded = decode_all(items, size, options.channels, options.workers, options.skip_bad, options.cache)
    X = decoded.pixels.astype(np.float32) / 255.0
    roles = None if roles is None else roles.subset(decoded.kept)
    if not labelled:
        return X, None, roles
    labels = [items[i].label for i in decoded.kept]
    if len({type(v) for v in labels}) > 1:  # class folders "7" and "cat": all names as text
        labels = [str(v) for v in labels]
    return X, np.array(labels), roles


def _first_side(items: list[ImageItem], image_side: object, skip_bad: bool) -> int:
    """The shorter side of the first readable image (the first image, unless bad ones are skipped)."""
    from metriclearn.images.decode import BadImage

    for item in items:
        try:
            return image_side(item.path)  # type: ignore[operator]
        except BadImage as exc:
            if not skip_bad:
                raise ValueError(f"{exc} ({item.where})") from None
    raise ValueError(f"none of the {len(items)} images could be read")
