"""Decoding one image file with Pillow into the evaluation geometry: resize the shorter side, centre crop.

``decode_image(path, size, channels)`` returns a ``(channels, size, size)`` uint8 array:

1. open and fully decode the file (PNG, JPEG, WebP; Pillow refuses truncated files, as
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off);
2. convert to ``"L"`` (1 channel) or ``"RGB"`` (3; an alpha channel is composited on black, a palette expanded);
3. resize so the shorter side is ``size`` (bilinear with Pillow's antialiasing filter when shrinking), then
   crop the centre ``size × size`` square: the evaluation transform of torchvision's ImageNet recipes
   (``Resize(s)`` + ``CenterCrop(s)``), here with no extra margin (training crops come from
   :mod:`metriclearn.images.transforms`, on the decoded batch).

A file that cannot be read raises :class:`BadImage` whose message names the file and the reason.

Example
-------
>>> import tempfile, pathlib, numpy as np
>>> from PIL import Image
>>> path = pathlib.Path(tempfile.mkdtemp()) / "wide.png"
>>> Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
>>> decode_image(path, size=8, channels=3).shape
(3, 8, 8)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODES = {1: "L", 3: "RGB"}


class BadImage(ValueError):
    """A missing, corrupt or truncated image file (the message names it and why)."""


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """``(channels, size, size)`` uint8 pixels of the image at ``path`` (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = _to_mode(image, MODES[channels])
    except FileNotFoundError:
        raise BadImage(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise BadImage(f"{path}: not a readable image (corrupt, or not PNG/JPEG/WebP)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "truncated" if "truncated" in str(exc) else str(exc).strip() or type(exc).__name__
        raise BadImage(f"{path}: damaged image ({reason})") from None
    return _resize_center_crop(image, size)


def image_side(path: Path) -> int:
    """The shorter side in pixels of the image at ``path`` (reads only its header); :class:`BadImage` if it
    cannot."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return min(image.size)
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{path}: not a readable image ({str(exc).strip() or type(exc).__name__})") from None


def _to_mode(image: object, mode: str) -> object:
    from PIL import Image

    assert isinstance(image, Image.Image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode in ("I", "I;16", "F"):  # 16-bit / float greys: scale into 8 bits by the image's range
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        image = Image.fromarray(np.uint8(np.round(255 * (pixels - low) / max(high - low, 1e-12))))
    return image if image.mode == mode else image.convert(mode)


def _resize_center_crop(image: object, size: int) -> np.ndarray:
    from PIL import Image

    assert isinstance(image, Image.Image)
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
    return np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
