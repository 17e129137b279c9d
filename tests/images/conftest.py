"""Small real image data sets and tiny vision backbones, made offline for the image tests.

``write_images`` writes uneven classes of 16×16 colour pictures (PNG, JPEG and WebP mixed) whose class is its
colour (plus noise), so a model can learn them in a few steps; the tiny Hugging Face ResNet and ViT are built
from configs and saved with ``save_pretrained``: the real ``hf-vision:DIR`` code path in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COUNTS = {"red": 9, "green": 7, "blue": 6, "7": 5}  # uneven; the folder "7" beside names: every label a string
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220), "7": (200, 200, 40)}
FORMATS = (".png", ".jpg", ".webp")


def write_images(root: Path, counts: dict[str, int] = COUNTS, side: int = 16, seed: int = 0,
                 subfolders: bool = True) -> list[Path]:
    """Class subfolders (or, ``subfolders=False``, all at the top) of noisy single-colour pictures; returns
    the files in folder order."""
    rng = np.random.default_rng(seed)
    files = []
    for label, n in counts.items():
        folder = root / label if subfolders else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(np.array(COLOURS.get(label, (120, 120, 120))) + rng.normal(0, 25, (side, side + 4, 3)), 0, 255)
            path = folder / f"{label}_{i:02d}{FORMATS[i % len(FORMATS)]}"
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
            files.append(path)
    return files


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """27 pictures in 4 uneven classes (9, 7, 6, 5), PNG/JPEG/WebP, 16×20 pixels."""
    write_images(tmp_path / "pictures")
    return tmp_path / "pictures"


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-stage Hugging Face ResNet (hidden 8, 16), saved with save_pretrained."""
    pytest.importorskip("transformers")
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_resnet")
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-block ViT on 16×16 inputs (patch 8, hidden 16), with a preprocessor_config.json
    that names its own mean and std."""
    pytest.importorskip("transformers")
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vit")
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 16, "width": 16}}))
    return path
