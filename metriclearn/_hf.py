"""Hugging Face model folders are data, never code: every transformers load in metriclearn goes through here.

A folder's ``config.json`` (or ``tokenizer_config.json``) can carry an ``auto_map`` that points at Python files
inside the folder; transformers then offers to run them ("Do you wish to run the custom code? [y/N]") and a
``y`` executes them. metriclearn never asks: :func:`check_model_folder` refuses such a folder, and one whose
``model_type`` transformers does not know (it could only be served by custom code), in one line that names the
folder and says why, *before* transformers reads anything; every ``from_pretrained`` call then passes
:data:`SAFE_LOAD`: ``trust_remote_code=False`` and ``local_files_only=True`` (nothing is ever downloaded either).

Example
-------
>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "m.M"}}))
>>> check_model_folder(folder)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: model folder ... asks to run its own code (auto_map in config.json); metriclearn never runs code ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# every from_pretrained call passes these
SAFE_LOAD: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
_CODE_KEYS = ("auto_map",)
_CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def check_model_folder(folder: str | Path) -> dict[str, Any]:
    """Refuse a folder that needs its own code; return its parsed ``config.json``.

    Refused: any of ``config.json`` / ``tokenizer_config.json`` / ``preprocessor_config.json`` with an
    ``auto_map`` (or a ``"custom_pipelines"`` entry), and a ``model_type`` that transformers does not know.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.json: it is not a Hugging Face model folder")
    config = _read_json(config_path)
    for name in _CONFIG_FILES:
        path = folder / name
        data = config if name == "config.json" else (_read_json(path) if path.is_file() else {})
        found = [key for key in (*_CODE_KEYS, "custom_pipelines") if data.get(key)]
        if found:
            raise ValueError(f"model folder {str(folder)!r} asks to run its own code ({found[0]} in {name}); "
                             "metriclearn never runs code from a model folder")
    model_type = config.get("model_type")
    if model_type is None:
        raise ValueError(f"model folder {str(folder)!r}: config.json names no model_type, so transformers could "
                         "only load it with custom code; metriclearn never runs code from a model folder")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"model folder {str(folder)!r}: model_type {model_type!r} is not one transformers knows, "
                         "so it could only run with the folder's own code; metriclearn never runs code from a "
                         "model folder")
    return config

