"""Temporary stand-ins for the losses another helper is writing (NeighborhoodSoftmaxLoss, CacheLoss).

Installed by the trainer tests' conftest ONLY when the real module/attribute is missing, so the tests run
against the real implementations as soon as they land on main. Never imported by the package.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- metriclearn.losses
def _nca(sim_logits, labels, exclude_self=True):
    B = sim_logits.shape[0]
    eye = torch.eye(B, dtype=torch.bool)
    logits = sim_logits.masked_fill(eye, float("-inf")) if exclude_self else sim_logits
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = logits.log_softmax(1)
    has = pos.any(1)
    loss = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), 1)
    return loss[has].mean() if has.any() else sim_logits.sum() * 0


class NeighborhoodSoftmaxLoss(nn.Module):
    def __init__(self, temperature=1.0, distance="sqeuclidean"):
        super().__init__()
        self.temperature, self.distance = temperature, distance

    def forward(self, e, y):
        d = torch.cdist(e, e).pow(2) if self.distance == "sqeuclidean" else 1 - F.normalize(e, dim=1) @ F.normalize(e, dim=1).T
        return _nca(-d / self.temperature, y)


class CacheLoss(nn.Module):
    def __init__(self, dim, size=4096, temperature=0.1, warmup_steps=0):
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.temperature = temperature

    def forward(self, e, y):
        valid = self.bank_labels >= 0
        allx = torch.cat([e, self.bank[valid]])
        ally = torch.cat([y, self.bank_labels[valid]])
        logits = -torch.cdist(e, allx).pow(2) / self.temperature  # (B, B+C)
        B = len(y)
        logits[:, :B] = logits[:, :B].masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
        pos = y[:, None] == ally[None, :]
        pos[:, :B] &= ~torch.eye(B, dtype=torch.bool)
        logp = logits.log_softmax(1)
        loss = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), 1)
        with torch.no_grad():
            n = len(y)
            idx = (self.ptr + torch.arange(n)) % len(self.bank)
            self.bank[idx] = e.detach()
            self.bank_labels[idx] = y
            self.ptr.copy_((self.ptr + n) % len(self.bank))
        return loss[pos.any(1)].mean()


def install() -> list[str]:
    """Put each stand-in where the real module/attribute is missing; return what was installed."""
    installed: list[str] = []
    this = sys.modules[__name__]
    for modname, names in {
        "losses": ["NeighborhoodSoftmaxLoss", "CacheLoss"],
    }.items():
        full = f"metriclearn.{modname}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError:
            module = types.ModuleType(full)
            sys.modules[full] = module
            setattr(importlib.import_module("metriclearn"), modname, module)
        for name in names:
            if not hasattr(module, name):
                setattr(module, name, getattr(this, name))
                installed.append(f"{full}.{name}")
    return installed
