"""Image transforms as batched tensor operations: training augmentation presets, resizing, normalisation.

Images arrive decoded as (N, C, S, S) float tensors in [0, 1] (:mod:`metriclearn.images.decode` already did the
evaluation transform: resize the shorter side + centre crop). On top, on whole batches and on any device:

- :func:`augmentation` (kornia; training only, the encoder applies it in ``train()`` mode):

  ========  ===================================================================================
  none      nothing
  light     RandomResizedCrop(scale 0.5–1, ratio 3/4–4/3) + horizontal flip (p 0.5)
  strong    RandomResizedCrop(scale 0.2–1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1; p 0.8) +
            RandomGrayscale(p 0.2) (colour images; grey ones get brightness/contrast jitter)
  ========  ===================================================================================

  the recipes of SimCLR (Chen et al. 2020) and of torchvision's training references, milder for ``light``.
- :func:`resize_batch`: bilinear resize with antialiasing to a backbone's input size.
- :class:`Normalize`: ``(x − mean) / std`` per channel, with the backbone's own mean and std.

Example
-------
>>> import torch
>>> augment = augmentation("light", size=16, channels=3)
>>> augment(torch.rand(4, 3, 16, 16)).shape
torch.Size([4, 3, 16, 16])
>>> Normalize([0.5], [0.25])(torch.full((1, 1, 2, 2), 0.75)).flatten().tolist()
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_positive_int

AUGMENTS = ("none", "light", "strong")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def augmentation(preset: str, size: int, channels: int) -> nn.Module:
    """The kornia pipeline of ``preset`` (see the module docstring) for (N, channels, size, size) batches."""
    check_choice(preset, AUGMENTS, "augment")
    size = check_positive_int(size, "image_size")
    if preset == "none":
        return nn.Identity()
    import kornia.augmentation as K

    scale = (0.5, 1.0) if preset == "light" else (0.2, 1.0)
    steps: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=scale, ratio=(3 / 4, 4 / 3)),
                              K.RandomHorizontalFlip()]
    if preset == "strong":
        if channels == 3:
            steps += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
        else:
            steps += [K.ColorJitter(0.4, 0.4, p=0.8)]
    return K.AugmentationSequential(*steps)  # type: ignore[arg-type]


def resize_batch(x: Tensor, size: int) -> Tensor:
    """(N, C, H, W) → (N, C, size, size), bilinear with antialiasing (a no-op at that size already)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def match_channels(x: Tensor, channels: int) -> Tensor:
    """Grey (N, 1, H, W) repeated to ``channels``, or RGB averaged to one channel, as a backbone needs."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"images have {x.shape[1]} channels but the backbone takes {channels}")


class Normalize(nn.Module):
    """``(x − mean) / std`` over the channel axis of (N, C, H, W); one value broadcasts to every channel."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
