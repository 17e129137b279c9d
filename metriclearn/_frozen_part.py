"""A frozen pretrained part of an encoder (a text transformer, a vision backbone) is not saved with the run:
it is rebuilt from its folder or file, so a run directory holds only what training changed.

``skip_when_frozen(module, "backbone", frozen)`` drops ``backbone.*`` from ``module.state_dict()`` while
``frozen(module)`` is true, and fills those keys back from the live part when such a head-only state is loaded.

>>> import torch
>>> from torch import nn
>>> model = nn.Module(); model.part, model.head = nn.Linear(2, 2), nn.Linear(2, 1)
>>> skip_when_frozen(model, "part", lambda m: True)
>>> sorted(model.state_dict())
['head.bias', 'head.weight']
>>> model.load_state_dict(model.state_dict())  # the part keeps its own weights
<All keys matched successfully>
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def skip_when_frozen(module: nn.Module, part: str, frozen: Callable[[Any], bool]) -> None:
    """Register the save/load hooks that leave ``module.<part>`` out of its state while ``frozen(module)``."""
    key = part + "."

    def drop(module: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        if frozen(module):
            for name in [k for k in state if k.startswith(prefix + key)]:
                del state[name]

    def fill(module: Any, state: dict[str, Any], prefix: str, *args: Any) -> None:
        if frozen(module):
            for name, value in getattr(module, part).state_dict().items():
                state.setdefault(prefix + key + name, value)

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_pre_hook(fill)
