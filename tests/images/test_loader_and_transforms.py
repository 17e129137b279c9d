"""The decoding loader (workers, disk cache) and the batched transforms (augmentation presets, normalisation)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metriclearn.encoders import build_encoder
from metriclearn.images.listing import list_folder
from metriclearn.images.loader import decode_all
from metriclearn.images.transforms import augmentation

pytest.importorskip("kornia")


def test_two_workers_decode_the_same_pixels_in_the_same_order(image_folder: Path) -> None:
    items = list_folder(image_folder)
    alone = decode_all(items, size=12, channels=None, workers=0, cache=False)
    pooled = decode_all(items, size=12, channels=None, workers=2, cache=False)
    np.testing.assert_array_equal(alone.pixels, pooled.pixels)
    assert alone.pixels.shape == (27, 3, 12, 12) and alone.pixels.dtype == np.uint8


def test_the_disk_cache_is_read_back_and_follows_the_files(image_folder: Path) -> None:
    root = Path(os.environ["METRICLEARN_CACHE"])
    items = list_folder(image_folder)
    first = decode_all(items, size=12, channels=None)
    [cached] = list((root / "images").glob("*.npy"))
    np.save(cached, np.zeros_like(first.pixels))  # a marked cache: a second decode that reads it returns zeros
    assert not decode_all(items, size=12, channels=None).pixels.any()
    assert decode_all(items, size=10, channels=None).pixels.any()  # another size: another entry
    stat = items[0].path.stat()
    os.utime(items[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a file changed: decoded again
    np.testing.assert_array_equal(decode_all(items, size=12, channels=None).pixels, first.pixels)
    cached.write_bytes(b"damaged")  # an unreadable entry counts as absent
    assert decode_all(items, size=12, channels=None).pixels.any()


def test_cache_off(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICLEARN_CACHE", "off")
    decode_all(list_folder(image_folder), size=8, channels=None)
    assert not any(Path(os.environ.get("XDG_CACHE_HOME", "/nonexistent")).glob("metriclearn/images/*"))


@pytest.mark.parametrize("preset, channels", [("light", 3), ("strong", 3), ("strong", 1)])
def test_augmentation_changes_a_batch_reproducibly(preset: str, channels: int) -> None:
    x = torch.rand(8, channels, 16, 16)
    augment = augmentation(preset, 16, channels)
    torch.manual_seed(1)
    a = augment(x)
    torch.manual_seed(1)
    b = augment(x)
    assert a.shape == x.shape and torch.equal(a, b)  # the global torch RNG: seeded runs and resumes repeat
    assert (a - x).abs().mean() > 0.01
    assert 0 <= float(a.min()) and float(a.max()) <= 1 + 1e-6
    assert torch.equal(augmentation("none", 16, channels)(x), x)


def test_cnn_augments_in_training_only() -> None:
    model = build_encoder("cnn:4", (1, 12, 12), embedding_dim=3, augment="light")
    x = torch.rand(6, 1, 12, 12)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()  # the same batch statistics without augmentation, and with it
        assert not torch.allclose(model(x), model.body(model.standardize(x)), atol=1e-4)
    with pytest.raises(ValueError, match=r"augment='light' needs images"):
        build_encoder("cnn", (64,), augment="light")
    with pytest.raises(ValueError, match="augment must be one of 'none', 'light', 'strong'; got 'heavy'"):
        build_encoder("cnn", (1, 8, 8), augment="heavy")
