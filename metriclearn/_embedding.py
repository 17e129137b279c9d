"""Embedding a whole data set with a trained model: batched, in eval mode, under optional autocast.

Example
-------
>>> import numpy as np, torch
>>> model = torch.nn.Linear(4, 2)
>>> embed_array(model, np.ones((5, 4), np.float32), batch_size=2, device="cpu").shape
(5, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metriclearn._device import resolve_device
from metriclearn._progress import progress


@torch.no_grad()
def embed_array(
    model: nn.Module,
    data: Any,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Embed ``data`` (LabeledData, array, tensor or texts) with ``model`` in eval mode → (n, D) float32.

    The model's train/eval mode is restored afterwards.
    """
    device = resolve_device(device)
    X = data.X if hasattr(data, "X") else data
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    n = len(X)
    if n == 0:
        raise ValueError("data to embed is empty (0 samples)")
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in progress(range(0, n, batch_size), desc="embedding", unit="batch"):
            chunk = to_device(X[start : start + batch_size], device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                chunks.append(model(chunk).float().cpu())  # (b, D)
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def to_device(X: Any, device: torch.device) -> Any:
    """A float32 tensor of an array/tensor on ``device``; texts stay a list (the encoder tokenises)."""
    if isinstance(X, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    if isinstance(X, Tensor):
        return X.to(device)
    return list(X)
