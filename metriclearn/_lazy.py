"""Lazy package exports (PEP 562): a package names its public objects, and each submodule is imported on first use.

``import metriclearn.indexes`` then costs nothing until ``metriclearn.indexes.EmbeddingIndex`` is touched, so
the CLI can read a constant from one submodule (``metriclearn.indexes._factory.KINDS``) without importing torch
and faiss through the package's ``__init__``.

Example
-------
>>> exports = {"JSONDecoder": "json.decoder"}
>>> module_getattr, module_dir = lazy_exports("json", exports)
>>> module_getattr("JSONDecoder").__name__, module_dir()
('JSONDecoder', ['JSONDecoder'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module defining it.

    A name that is a module itself (``"distributed": "metriclearn.training.distributed"``) maps to that module
    and is returned whole when the module's own name ends with the public name.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        return module if module.__name__.rsplit(".", 1)[-1] == name else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
