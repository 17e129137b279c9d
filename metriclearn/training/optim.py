"""Optimisers and learning-rate schedules by name: the one place their names and set-up live.

Every optimiser gets the same parameter groups: weight decay on weight matrices and kernels
(``p.dim() > 1``), none on biases, normalisation weights and other vectors (decaying those only
shrinks the scale of the layers around them). Per-batch schedules (``onecycle``, ``cosine``) step
after every optimiser step; ``plateau`` steps once per epoch on the monitored metric.

Example
-------
>>> import torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer("sgd", list(model.parameters()), lr=0.1, weight_decay=1e-4)
>>> [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
[(1, 0.0001), (1, 0.0)]
>>> type(build_scheduler("cosine", opt, total_steps=10)).__name__
'CosineAnnealingLR'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from metriclearn._checks import check_choice

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "linear", "plateau", "none")
WARMUP_FRACTION = 0.1  # the linear schedule's warm-up: Hugging Face's usual warmup_ratio


def parameter_groups(params: Sequence[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ``params`` with more than one dimension decay by ``weight_decay``, the rest not at all."""
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float,
                    encoder_params: Sequence[torch.nn.Parameter] = (),
                    encoder_lr: float | None = None) -> torch.optim.Optimizer:
    """``adamw`` (decoupled decay), ``adam`` (L2 decay) or ``sgd`` (Nesterov momentum 0.9) over ``params``.

    ``encoder_params`` (a subset of ``params``: a fine-tuned transformer) get their own learning rate
    ``encoder_lr``, in groups of their own (decay and no decay), as in Hugging Face fine-tuning recipes where
    the pretrained body learns far slower (2e-5) than a fresh head. The fused kernel is used where the
    installed torch has one.

    >>> import torch
    >>> body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    >>> params = [*body.parameters(), *head.parameters()]
    >>> opt = build_optimizer("adamw", params, 1e-3, 0.01, list(body.parameters()), encoder_lr=2e-5)
    >>> [(len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups]
    [(1, 0.001, 0.01), (1, 0.001, 0.0), (1, 2e-05, 0.01), (1, 2e-05, 0.0)]
    """
    import torch  # here, not at module level: the CLI lists OPTIMIZERS without importing torch

    check_choice(name, OPTIMIZERS, "optimizer")
    slow = {id(p) for p in encoder_params} if encoder_lr is not None else set()
    groups = [{**g, "lr": lr} for g in parameter_groups([p for p in params if id(p) not in slow], weight_decay)]
    groups += [{**g, "lr": encoder_lr} for g in parameter_groups([p for p in params if id(p) in slow], weight_decay)]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    try:
        return cls(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, lr=lr)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
    """The schedule ``name`` over ``total_steps`` optimiser steps (``None`` for ``"none"``).

    ``onecycle`` peaks at each group's ``lr``; ``linear`` rises linearly from 0 to each group's ``lr`` over the
    first 10 % of the steps and falls linearly to 0 by the last (the fine-tuning schedule of Hugging Face's
    ``get_linear_schedule_with_warmup``); ``plateau`` halves the rate after 2 epochs without
    improvement of a metric that should go ``mode`` (``"max"`` or ``"min"``).
    """
    import torch

    check_choice(name, SCHEDULERS, "scheduler")
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "linear":  # transformers' get_linear_schedule_with_warmup
        warmup = max(1, round(WARMUP_FRACTION * total_steps))

        def factor(step: int) -> float:
            return step / warmup if step < warmup else max(0.0, (total_steps - step) / max(1, total_steps - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "plateau":
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        plateau_mode: Literal["min", "max"] = "min" if mode == "min" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=plateau_mode, factor=0.5, patience=2)
    return None
