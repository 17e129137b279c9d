"""Embed with the last hidden layer of an MLP encoder instead of its output: features that transfer to new classes.

A metric-learning loss shapes the *output* of the encoder for the training classes: the last projection
(256 → 64 in the MLP 784-256-64) keeps the directions that separate them and squeezes the rest. The layer
before it is shaped less directly and keeps more of what tells apart classes the model never saw (Chen et
al. 2020 found the same for the projection head of SimCLR). On MNIST digits never seen in training it
retrieves markedly better than the 64-d output (BENCHMARKS.md, "Unseen classes").

``HiddenFeatures(encoder)`` is a module that maps inputs to the L2-normalised activations of the encoder's
last hidden layer taken *before* its ReLU (``Linear → BatchNorm1d``, so negative evidence is kept): for
``"mlp"`` that is a 256-d vector; for ``"mlp:512,256"`` the 256 units of the second layer.

Example
-------
>>> import torch
>>> from metriclearn.encoders import build_encoder
>>> model = build_encoder("mlp:32", input_shape=(64,), embedding_dim=8).eval()
>>> hidden = HiddenFeatures(model)
>>> hidden(torch.rand(5, 64)).shape, hidden.embedding_dim
(torch.Size([5, 32]), 32)
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_choice
from metriclearn._choices import LAYERS  # the --layer values, listed by the CLI without torch


class HiddenFeatures(nn.Module):
    """``normalize(BatchNorm(Linear(... standardize(x))))``: the encoder's last hidden layer before its ReLU.

    Parameters
    ----------
    encoder:
        An ``"mlp"`` :class:`~metriclearn.encoders.Encoder` with at least one hidden layer (from
        :func:`~metriclearn.encoders.build_encoder` or a trained run). It is shared, not copied.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        layers = getattr(getattr(encoder, "body", None), "layers", None)
        if not isinstance(layers, nn.Sequential) or not len(layers) or not isinstance(layers[-1], nn.ReLU):
            spec = getattr(encoder, "spec", type(encoder).__name__)
            raise ValueError(f"layer 'hidden' needs an MLP encoder with a hidden layer ('mlp' or 'mlp:H1,...'), "
                             f"got {spec!r}")
        self.encoder = encoder
        self.pre_activation = layers[:-1]  # every hidden block, then the last one's Linear and BatchNorm
        self.embedding_dim = int(cast(nn.BatchNorm1d, layers[-2]).num_features)
        self.input_shape = getattr(encoder, "input_shape", ())

    def forward(self, x: Tensor) -> Tensor:
        standardize = cast(nn.Module, self.encoder.standardize)
        return F.normalize(self.pre_activation(standardize(x)), dim=1)  # (N, H)


def select_layer(encoder: nn.Module, layer: str) -> nn.Module:
    """``encoder`` itself for ``layer="embedding"``, :class:`HiddenFeatures` of it for ``"hidden"``."""
    check_choice(layer, LAYERS, "layer")
    return encoder if layer == "embedding" else HiddenFeatures(encoder)
