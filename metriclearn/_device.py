"""One rule for choosing the torch device, shared by the trainer, run loading and the classifiers.

Example
-------
>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("tpu")
Traceback (most recent call last):
    ...
ValueError: device must be one of 'auto', 'cpu', 'cuda'; got 'tpu'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metriclearn._checks import check_choice

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # the device names every --device option and ``device=`` argument accepts


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises ``TypeError`` for a non-string, ``ValueError`` for an unknown name or for CUDA without a GPU.
    """
    import torch  # here, not at module level: the CLI's option lists import DEVICES without torch

    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    check_choice(device.split(":")[0], DEVICES, "device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu or auto)")
    return resolved
