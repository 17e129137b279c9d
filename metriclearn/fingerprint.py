"""A fingerprint of a model's weights: tells whether two models would embed the same way.

The fingerprint is the SHA-256 of every entry of ``state_dict()`` (parameters and buffers) in key order:
its name, dtype, shape and bytes. Indexes built from a model record it (``EmbeddingIndex.attrs
["model_fingerprint"]``), so a query embedded by another model can be refused, and a saved second opinion
refuses to load with weights other than the ones its cache was built with.

Example
-------
>>> import torch
>>> torch.manual_seed(0) and None
>>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
>>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
(True, False)
>>> len(model_fingerprint(a))
64
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and values of ``model.state_dict()``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:  # extra state objects: their repr is all we can hash
            digest.update(repr(value).encode("utf-8"))
    return digest.hexdigest()
