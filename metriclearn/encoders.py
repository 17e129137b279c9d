"""Encoders that map features to embeddings: ``Standardize``, ``MLP``, ``ConvNet`` and ``build_encoder(spec)``.

Every encoder that :func:`build_encoder` returns is an :class:`Encoder`: a :class:`Standardize` layer
(``model.standardize``, identity until the trainer calls ``.fit`` on the training split; its mean/std
are buffers, so they travel in the state dict; ``"mlp"`` uses ``scope="auto"``, ``"cnn"`` ``"global"``)
followed by the body (``model.body``). A model is rebuilt from ``(spec, input_shape, embedding_dim, normalize)``
and then ``load_state_dict``.

Spec grammar
------------
``"mlp"``            MLP with one hidden layer of 256 units (784-256-64 on MNIST)
``"mlp:512,256"``    MLP with the given hidden sizes
``"cnn"``            ConvNet with channels (32, 64); the image shape is inferred from the feature count
                     when ``input_shape`` is flat: 64 -> 1×8×8, 784 -> 1×28×28 (a square count)
``"cnn:16,32,64"``   ConvNet with the given channels per stage
``"sentence"``       :class:`~metriclearn.sentence.SentenceEncoder` on the packaged all-MiniLM-L6-v2 (the
                     ``text`` extra); ``input_shape`` is ignored (inputs are lists of str), ``**options``
                     go to ``SentenceEncoder`` (``freeze``, ``max_length``, ``chunk_size``, ``cache_size``,
                     ``unfreeze``, ``pooling``, ``gradient_checkpointing``)
``"sentence:PATH"``  the same on a local sentence-transformers / Hugging Face model folder
``"hf-vision:DIR"``  :class:`~metriclearn.vision.VisionEncoder` on a local Hugging Face vision model folder
                     (also ``"torchvision:NAME[:WEIGHTS.pth]"``, ``"timm:NAME[:WEIGHTS]"``); inputs are image
                     batches (N, C, S, S), ``**options``: ``freeze``, ``unfreeze``, ``augment``, ``channels_last``

``"cnn"`` on images (``input_shape`` (C, H, W)) also takes the option ``augment`` (``none``, ``light``,
``strong``: :mod:`metriclearn.images.transforms`, applied to training batches only).

Example
-------
>>> import torch
>>> model = build_encoder("mlp:32", input_shape=(64,), embedding_dim=8)
>>> model.standardize.fit(torch.rand(100, 64) * 16)
Standardize(num_features=64, scope='auto')
>>> model(torch.rand(5, 64)).shape
torch.Size([5, 8])
>>> build_encoder("cnn", (64,)).body.in_shape
(1, 8, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_choice, check_matrix, check_positive_float, check_positive_int, describe
from metriclearn.images.backbones import is_vision_spec
from metriclearn.sentence import SentenceEncoder

__all__ = ["MLP", "ConvNet", "Encoder", "SentenceEncoder", "Standardize", "build_encoder"]

SPEC_FORMS = ("'mlp', 'mlp:H1,H2,...', 'cnn', 'cnn:C1,C2,...', 'sentence[:PATH]', 'hf-vision:DIR', "
              "'torchvision:NAME[:WEIGHTS.pth]' or 'timm:NAME[:WEIGHTS]'")
DEFAULT_HIDDEN = (256,)
SCOPES = ("auto", "feature", "global")
DEFAULT_CHANNELS = (32, 64)


def _check_width(x: Tensor, expected: int, who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} input must be a torch.Tensor, got {type(x).__name__}")
    width = math.prod(x.shape[1:]) if x.dim() >= 2 else -1
    if width != expected:
        raise ValueError(f"{who} expects input of shape (N, {expected}), got {tuple(x.shape)}")


class Standardize(nn.Module):
    """``(x − mean) / std`` with ``mean``/``std`` buffers: identity at init, set by :meth:`fit`.

    Parameters
    ----------
    num_features:
        F, the flattened input width; input of shape (N, F) or (N, ...) with F values per row.
    scope:
        ``"feature"``: one mean/std per feature (tabular data whose columns have different units);
        ``"global"``: one mean/std shared by all features (images: keeps the relative intensity of
        pixels, and rare non-zero border pixels are not blown up; on MNIST with an MLP this gives a
        clearly better MAP@R than per-pixel scaling); ``"auto"`` (default) picks ``"global"`` when
        the features share a scale (largest per-feature std at most ``AUTO_SPREAD`` = 10 times the
        median of the non-zero ones, as for pixels or measurements in one unit) and ``"feature"``
        otherwise. The choice made is kept in ``fitted_scope``.
    min_std:
        With per-feature scaling, a feature's std is floored at ``min_std`` times its range
        (max − min), so a nearly constant feature (a border pixel that is non-zero in one sample) is
        not blown up into a huge value on the rare sample where it differs: it stays within
        ±1/``min_std``. The floor is scale-free, so features in different units are treated alike.
        A constant feature gets std 1 (as in scikit-learn's ``StandardScaler``).

    The output is always flat (N, F).
    """

    AUTO_SPREAD = 10.0
    mean: Tensor  # (F,) buffers
    std: Tensor

    def __init__(self, num_features: int, scope: str = "auto", min_std: float = 0.1) -> None:
        super().__init__()
        self.num_features = check_positive_int(num_features, "num_features")
        self.scope = check_choice(scope, SCOPES, "scope")
        self.min_std = check_positive_float(min_std, "min_std", allow_zero=True)
        self.fitted_scope: str | None = None
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("std", torch.ones(self.num_features))

    @torch.no_grad()
    def fit(self, x: Any) -> Standardize:
        """Set ``mean``/``std`` from training data ``x`` (N, F) or (N, ...): a tensor or an array."""
        if isinstance(x, (Tensor, np.ndarray)) and x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        data = torch.from_numpy(check_matrix(x, "Standardize.fit data", dim=self.num_features).astype(np.float64))
        mean, std = data.mean(dim=0), data.std(dim=0, correction=0)  # (F,), (F,)
        spread = data.amax(dim=0) - data.amin(dim=0)  # (F,)
        scope = self.scope
        if scope == "auto":
            varying = std[std > 0]
            shared = varying.numel() == 0 or float(varying.max()) <= self.AUTO_SPREAD * float(varying.median())
            scope = "global" if shared else "feature"
        if scope == "global":
            mean = data.mean().expand(self.num_features)  # (F,)
            std = data.std(correction=0).expand(self.num_features)  # (F,)
        else:
            std = torch.maximum(std, spread * self.min_std)  # (F,)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, 1.0))
        self.fitted_scope = scope
        return self

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.num_features, "Standardize")
        x = x.reshape(x.shape[0], self.num_features)  # (N, F)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, scope={self.scope!r}"


def _maybe_normalize(x: Tensor, normalize: bool) -> Tensor:
    return F.normalize(x, dim=1) if normalize else x  # (N, out) unit rows when normalize


class MLP(nn.Module):
    """``in -> [Linear -> BatchNorm1d -> ReLU] per hidden size -> Linear -> optional L2 normalisation``.

    The hidden Linear layers have no bias (the BatchNorm after them has one); the last Linear is the
    embedding head. With ``hidden=()`` the MLP is a single linear map.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        out_features: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.hidden = tuple(check_positive_int(h, "hidden size") for h in hidden)
        self.out_features = check_positive_int(out_features, "out_features")
        self.normalize = bool(normalize)
        layers: list[nn.Module] = []
        width = self.in_features
        for size in self.hidden:
            layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.ReLU(inplace=True)]
            width = size
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.in_features, "MLP")
        return _maybe_normalize(self.head(self.layers(x.flatten(1))), self.normalize)  # (N, out)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class ConvNet(nn.Module):
    """Small CNN for image-shaped input (digits 8×8, MNIST 28×28, CIFAR 3×32×32).

    Each stage is ``Conv3×3 -> BatchNorm2d -> ReLU -> MaxPool2`` (the pool is skipped once the map is
    smaller than 2×2); the map is then average-pooled to at most 4×4, flattened and sent through the
    linear embedding head, with optional L2 normalisation. Input may be flat (N, C·H·W) or (N, C, H, W).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        out_features: int = 64,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {describe(in_shape)}")
        self.in_shape = tuple(check_positive_int(s, "in_shape entry") for s in in_shape)
        self.channels = tuple(check_positive_int(c, "channel count") for c in channels)
        if not self.channels:
            raise ValueError("channels must name at least one stage, got ()")
        self.out_features = check_positive_int(out_features, "out_features")
        self.normalize = bool(normalize)
        c, h, w = self.in_shape
        layers: list[nn.Module] = []
        for size in self.channels:
            layers += [nn.Conv2d(c, size, 3, padding=1, bias=False), nn.BatchNorm2d(size), nn.ReLU(inplace=True)]
            if h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = size
        pooled = (min(h, 4), min(w, 4))
        layers += [nn.AdaptiveAvgPool2d(pooled), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * pooled[0] * pooled[1], self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, math.prod(self.in_shape), "ConvNet")
        images = x.reshape(x.shape[0], *self.in_shape)  # (N, C, H, W)
        return _maybe_normalize(self.head(self.features(images)), self.normalize)  # (N, out)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, normalize={self.normalize}"


class Encoder(nn.Module):
    """What :func:`build_encoder` returns: ``body(standardize(x))`` plus the arguments that rebuild it."""

    def __init__(
        self,
        standardize: Standardize,
        body: nn.Module,
        spec: str,
        input_shape: tuple[int, ...],
        embedding_dim: int,
        normalize: bool,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.standardize = standardize
        self.body = body
        self.spec = spec
        self.input_shape = input_shape
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.augment = augment  # image batches, training only (metriclearn.images.transforms)

    def forward(self, x: Tensor) -> Tensor:
        if self.augment is not None and self.training:
            x = self.augment(x.reshape(x.shape[0], *self.input_shape))  # (N, C, H, W)
        return self.body(self.standardize(x))  # (N, embedding_dim)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, input_shape={self.input_shape}, embedding_dim={self.embedding_dim}"


def _parse_sizes(spec: str, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"encoder spec {spec!r} must list positive integers after ':'; allowed forms: {SPEC_FORMS}")
    return sizes


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return input_shape
    if len(input_shape) == 2:
        return (1, *input_shape)
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise ValueError(
                f"encoder 'cnn' needs a square image, but {input_shape[0]} features is not a perfect square; "
                "pass input_shape=(C, H, W)"
            )
        return (1, side, side)
    raise ValueError(f"encoder 'cnn' needs input_shape (F,), (H, W) or (C, H, W), got {input_shape}")


def build_encoder(
    spec: str,
    input_shape: tuple[int, ...] | int,
    embedding_dim: int = 64,
    normalize: bool = True,
    **options: Any,
) -> nn.Module:
    """Build an :class:`Encoder` from a spec string (see the module docstring for the grammar).

    Parameters
    ----------
    spec:
        ``"mlp"``, ``"mlp:512,256"``, ``"cnn"``, ``"cnn:32,64"``, ``"sentence"`` or ``"sentence:PATH"``.
    input_shape:
        The shape of one sample without the batch axis, e.g. ``(64,)`` or ``(1, 28, 28)`` (an int is
        taken as ``(n,)``).
    embedding_dim:
        Width of the embedding.
    normalize:
        L2-normalise the embeddings.
    options:
        Keyword arguments of :class:`~metriclearn.sentence.SentenceEncoder` (sentence specs only). The
        returned sentence encoder's ``spec`` names its model folder as an absolute path (``"sentence"``
        for the packaged model), so a saved run is rebuilt from any working directory.
    """
    if not isinstance(spec, str):
        raise TypeError(f"encoder spec must be a string, got {describe(spec)}")
    name, _, args = spec.strip().partition(":")
    if name.lower() == "sentence":
        return _sentence_encoder(spec, args, embedding_dim, normalize, options)
    if is_vision_spec(spec):
        return _vision_encoder(spec, input_shape, embedding_dim, normalize, options)
    augment = options.pop("augment", "none") if name.lower() == "cnn" else "none"
    if options:
        raise ValueError(f"encoder spec {spec!r} takes no encoder options, got {sorted(options)}")
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (int(input_shape),)
    shape = tuple(check_positive_int(s, "input_shape entry") for s in input_shape)
    if not shape:
        raise ValueError("input_shape must have at least one entry, got ()")
    embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
    name = name.lower()
    if name not in ("mlp", "cnn") or (":" in spec and not args):
        raise ValueError(f"unknown encoder spec {spec!r}; allowed forms: {SPEC_FORMS}")
    num_features = math.prod(shape)
    body: nn.Module
    if name == "mlp":
        hidden = _parse_sizes(spec, args) if args else DEFAULT_HIDDEN
        standardize = Standardize(num_features, scope="auto")
        body = MLP(num_features, hidden, embedding_dim, normalize)
    else:
        channels = _parse_sizes(spec, args) if args else DEFAULT_CHANNELS
        standardize = Standardize(num_features, scope="global")
        body = ConvNet(_image_shape(shape), embedding_dim, channels, normalize)
    if augment != "none":
        from metriclearn.images.transforms import augmentation

        if len(shape) != 3:
            raise ValueError(f"augment={augment!r} needs images (input_shape (C, H, W)), got input_shape {shape}")
        return Encoder(standardize, body, spec, shape, embedding_dim, bool(normalize),
                       augmentation(augment, shape[-1], shape[0]))
    return Encoder(standardize, body, spec, shape, embedding_dim, bool(normalize))


def _vision_encoder(spec: str, input_shape: tuple[int, ...] | int, embedding_dim: int, normalize: bool,
                    options: dict[str, Any]) -> nn.Module:
    from pathlib import Path

    from metriclearn.images.backbones import parse_spec
    from metriclearn.vision import VisionEncoder

    known = ("freeze", "unfreeze", "augment", "channels_last")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown encoder option(s) {unknown} for {spec!r}; known: {', '.join(known)}")
    shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
    if shape and len(shape) != 3:
        raise ValueError(f"encoder {spec!r} embeds images (C, H, W), but the samples have shape {shape}; give "
                         "--data an image folder or a .csv with a path column")
    kind, name, weights = parse_spec(spec)
    if kind == "hf-vision":  # an absolute folder, so a saved run is rebuilt from any working directory
        spec = f"hf-vision:{Path(name).expanduser().resolve()}"
    elif weights:
        spec = f"{kind}:{name}:{Path(weights).expanduser().resolve()}"
    model = VisionEncoder(spec, check_positive_int(embedding_dim, "embedding_dim"), normalize,
                          image_size=shape[-1] if shape else None, **options)
    model.input_shape = shape  # the decoded images' (C, S, S): a run decodes new images at it
    return model


def _sentence_encoder(spec: str, path: str, embedding_dim: int, normalize: bool, options: dict[str, Any]) -> nn.Module:
    known = ("freeze", "max_length", "chunk_size", "cache_size", "unfreeze", "pooling", "gradient_checkpointing")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown encoder option(s) {unknown} for {spec!r}; known: {', '.join(known)}")
    if ":" in spec and not path.strip():
        raise ValueError(f"encoder spec {spec!r} needs a model folder after ':'; allowed forms: {SPEC_FORMS}")
    embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
    model = SentenceEncoder(path.strip() or None, embedding_dim, normalize, **options)
    model.spec = f"sentence:{model.model_path}" if path.strip() else "sentence"
    model.input_shape = ()
    return model
