"""The values of options that the CLI lists in ``--help``, importable without torch.

The modules that implement them import them from here (``losses.registry``: how loss terms combine and the
default loss; ``hidden``: the layer an embedding is read from), so ``metriclearn train --help`` starts without
loading torch. ``BUILTIN_LOSSES`` is what ``train --help`` lists: the keys of
:data:`metriclearn.losses.registry.LOSSES` as shipped (a test holds the two equal); the config checks
names against ``LOSSES`` itself, so a row added there is usable at once.

>>> "neighborhood" in BUILTIN_LOSSES, COMBINES[0], LAYERS
(True, 'sum', ('embedding', 'hidden'))
"""

from __future__ import annotations

BUILTIN_LOSSES = ("neighborhood", "snn", "prototype", "cache", "softmax", "complement", "uniformity")
COMBINES = ("sum", "alternate", "pcgrad")
DEFAULT_LOSS = ("neighborhood", "uniformity:0.05")  # the objective of `metriclearn train` with no --loss
LAYERS = ("embedding", "hidden")
