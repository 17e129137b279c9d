"""Decoding a list of images in parallel (a ``DataLoader`` with worker processes), with a disk cache.

:func:`decode_all` decodes every :class:`~metriclearn.images.listing.ImageItem` with
:func:`~metriclearn.images.decode.decode_image` into one ``(n, C, S, S)`` uint8 array, ``workers`` processes
at a time (torch's ``DataLoader``; 0: in this process), with a progress bar. The result is the same for any
number of workers (each image is decoded on its own; order is kept).

Bad files (missing, corrupt, truncated): by default the first one is a ``ValueError`` naming the file and
where it was listed (the CSV row); with ``skip_bad=True`` they are left out and listed in ``skipped``.

Decoded images are kept on disk (``cache=True``): ``ROOT/images/<key>.npy``, where ROOT is the feature cache's
(``$METRICLEARN_CACHE``, ``off`` turns it off; :func:`metriclearn.feature_cache.cache_root`) and the key a
SHA-256 of the size, the channels and every file's path, size and modification time; so ``train``, ``embed``,
``index build`` ... on one folder decode it once. Only a complete set (nothing skipped) is cached; a file
that cannot be read back counts as absent.

Example
-------
>>> import tempfile, pathlib, numpy as np
>>> from PIL import Image
>>> from metriclearn.images.listing import list_folder
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for i, name in enumerate(["a/1.png", "a/2.png", "b/3.png"]):
...     (root / name).parent.mkdir(exist_ok=True)
...     Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(root / name)
>>> decoded = decode_all(list_folder(root), size=4, channels=None, cache=False)
>>> decoded.pixels.shape, decoded.skipped
((3, 1, 4, 4), [])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from metriclearn._checks import check_positive_int
from metriclearn.images.decode import BadImage, decode_image
from metriclearn.images.listing import ImageItem

CACHE_VERSION = 1
BATCH = 32  # images per worker task
SHOWN = 10  # skipped files listed by name in the warning


@dataclass(frozen=True, eq=False)
class DecodedImages:
    """``pixels`` (n, C, S, S) uint8 of the images that decoded, ``kept`` their indices into the item list,
    ``skipped`` the ``(item, reason)`` of those that did not (only with ``skip_bad``)."""

    pixels: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[ImageItem, str]]


class _Decode(Dataset[tuple[int, "np.ndarray | None", "str | None"]]):
    """The map-style dataset: item i → (i, pixels or None, error or None). Errors are returned, not raised,
    so one bad file does not stop the workers and every bad file can be listed."""

    def __init__(self, items: Sequence[ImageItem], size: int, channels: int) -> None:
        self.items, self.size, self.channels = items, size, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, decode_image(self.items[i].path, self.size, self.channels), None
        except BadImage as exc:
            return i, None, str(exc)


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def decode_all(items: Sequence[ImageItem], size: int, channels: int | None, workers: int = 0,
               skip_bad: bool = False, cache: bool = True) -> DecodedImages:
    """Decode ``items`` at ``size`` × ``size`` with ``channels`` (1 or 3; ``None``: 1 when every image is grey,
    else 3). See the module docstring."""
    from metriclearn._progress import progress

    size = check_positive_int(size, "image_size")
    workers = check_positive_int(workers, "workers", allow_zero=True)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (auto), got {channels!r}")
    path = _cache_file(items, size, channels) if cache else None
    cached = _read_cache(path, len(items))
    if cached is not None:
        return DecodedImages(cached, np.arange(len(items)), [])
    loader: DataLoader[Any] = DataLoader(_Decode(items, size, channels or 3), batch_size=BATCH,
                                         num_workers=workers, collate_fn=_collate)
    pixels: list[np.ndarray | None] = [None] * len(items)
    errors: dict[int, str] = {}
    for batch in progress(loader, desc="decoding images", unit="batch", total=len(loader)):
        for i, image, error in batch:
            if error is not None:
                if not skip_bad:
                    where = items[i].where
                    raise ValueError(f"{error} ({where}); fix or remove it, or pass --skip-bad-images"
                                     if where.startswith("row ") else f"{error}; fix or remove it, or pass "
                                     "--skip-bad-images")
                errors[i] = error
            pixels[i] = image
    kept = np.array([i for i in range(len(items)) if i not in errors], dtype=np.int64)
    skipped = [(items[i], errors[i]) for i in sorted(errors)]
    if not len(kept):
        raise ValueError(f"none of the {len(items)} images could be read; the first: {skipped[0][1]}")
    stacked = np.stack([pixels[i] for i in kept])
    if channels is None and (stacked[:, 0:1] == stacked).all():  # every image grey: keep one channel
        stacked = np.ascontiguousarray(stacked[:, :1])
    if skipped:
        shown = "; ".join(reason for _, reason in skipped[:SHOWN]) + ("; ..." if len(skipped) > SHOWN else "")
        warnings.warn(f"skipped {len(skipped)} of {len(items)} images that cannot be read: {shown}", stacklevel=2)
    elif path is not None:
        _write_cache(path, stacked)
    return DecodedImages(stacked, kept, skipped)


def _cache_file(items: Sequence[ImageItem], size: int, channels: int | None) -> Path | None:
    from metriclearn.feature_cache import cache_root

    root = cache_root()
    if root is None:
        return None
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={size} channels={channels}".encode())
    for item in items:
        try:
            stat = os.stat(item.path)
            digest.update(f"\n{os.path.abspath(item.path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        except OSError:
            return None  # a missing file: decode, and report it
    return root / "images" / f"{digest.hexdigest()}.npy"


def _read_cache(path: Path | None, n: int) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        pixels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = pixels.dtype == np.uint8 and pixels.ndim == 4 and len(pixels) == n and pixels.shape[1] in (1, 3)
    return pixels if ok else None


def _write_cache(path: Path, pixels: np.ndarray) -> None:
    from metriclearn._atomic import save_npy

    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        os.makedirs(path.parent, exist_ok=True)
        save_npy(path, pixels)
