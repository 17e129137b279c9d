"""Every top-level module of the package sits in a layer of the import-linter contract in pyproject.toml.

`make lint` checks the layers with `lint-imports`, but a module no layer names is checked by nothing: this test
says which one to place (README, Development).
"""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_has_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    entries = [m.strip() for layer in layers for m in re.split(r"[:|]", layer)]
    named = {m.strip("()").removeprefix("metriclearn.") for m in entries}
    required = {m.removeprefix("metriclearn.") for m in entries if not m.startswith("(")}  # "(x)": optional
    package = ROOT / "metriclearn"
    modules = {p.stem for p in package.glob("*.py")}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    unplaced = sorted(modules - {"__init__", "__main__"} - named)
    assert not unplaced, f"modules in no layer of [tool.importlinter] in pyproject.toml: {unplaced}"
    assert required <= modules, f"layers name modules that do not exist: {sorted(required - modules)}"
