"""A Lightning checkpoint of a :class:`MetricLearningModule` → a metriclearn run directory.

:func:`export_run` writes ``model.pt``, ``config.toml`` and ``classes.json`` exactly as ``metriclearn train``
does (:func:`metriclearn.runs.save_model`), so ``metriclearn embed --model``, ``evaluate``,
``index build --model``, ``report --model`` and — for a run with a ``softmax``/``complement`` head —
``second-opinion --model`` read it. The way back is :meth:`MetricLearningModule.from_run`.

Example
-------
>>> export_run("lightning_logs/version_0/checkpoints/last.ckpt", "runs/exported")  # doctest: +SKIP
PosixPath('runs/exported')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from metriclearn._atomic import write_json
from metriclearn._outdir import claim_output_dir, remove_recorded
from metriclearn.lightning.module import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from metriclearn.training.config import TrainConfig

_RUN_FILES = ("config.toml", "classes.json", "model.pt")
_HEAD_KEY = re.compile(r"^objective\.terms\.[^.]+\.head\.(weight|bias)$")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory (no Lightning checkpoint)", str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable Lightning checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    saved = state.get(CHECKPOINT_KEY)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a checkpoint of metriclearn.lightning.MetricLearningModule "
                         f"(no {CHECKPOINT_KEY!r} entry)")
    if saved.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: {CHECKPOINT_KEY} format_version {saved.get('format_version')!r} is not supported "
                         f"(expected {CHECKPOINT_FORMAT})")
    if saved.get("run") is None:
        raise ValueError(f"{path}: the module's encoder was not built by metriclearn.encoders.build_encoder (or its "
                         f"loss terms are not metriclearn's), so it cannot become a run directory; build it with "
                         f"MetricLearningModule.from_config")
    return state


def export_run(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], overwrite: bool = False,
               classes: list[Any] | None = None) -> Path:
    """Write the run directory of a ``MetricLearningModule`` checkpoint (``.ckpt``) into ``out_dir``.

    ``out_dir`` must be new, empty or a metriclearn run folder (``overwrite=True`` to replace one). ``classes``
    (label values in code order) overrides the module's own (default ``0 .. K-1``). Everything is checked,
    and the encoder rebuilt and loaded, before anything is written. Returns ``out_dir`` as a ``Path``.
    """
    from metriclearn.encoders import build_encoder
    from metriclearn.runs import save_model

    path = Path(checkpoint)
    state = _read_checkpoint(path)
    run = state[CHECKPOINT_KEY]["run"]
    config = TrainConfig.from_dict(run["config"])
    input_shape = tuple(run["input_shape"])
    model = build_encoder(config.encoder, input_shape, config.embedding_dim, normalize=config.normalize,
                          **config.encoder_options)
    weights = {k[len("encoder."):]: v for k, v in state["state_dict"].items() if k.startswith("encoder.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the encoder weights do not fit {config.encoder!r} ({exc})") from None
    head_state = {}
    for key, value in state["state_dict"].items():
        match = _HEAD_KEY.match(key)
        if match and match.group(1) not in head_state:  # a shared head is listed under each of its terms
            head_state[match.group(1)] = value
    head = None
    if head_state:
        head = torch.nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
        head.load_state_dict(head_state)
    names = classes if classes is not None else run.get("classes")
    if names is None:
        if head is None:
            raise ValueError(f"{path}: the module has no classes and no head to count them; pass classes=[...]")
        names = list(range(head.out_features))
    if head is not None and len(names) != head.out_features:
        raise ValueError(f"classes has {len(names)} entries but the head of {path} has {head.out_features} outputs")
    with claim_output_dir(out_dir, "run", overwrite=overwrite, writes=_RUN_FILES, hint="overwrite=True") as out:
        if overwrite:  # only what the previous output wrote (its marker's record): the user's files stay
            remove_recorded(out)
        config.save(out / "config.toml")
        write_json(out / "classes.json", list(names))
        save_model(out / "model.pt", model, config, input_shape, head=head)
    return Path(out_dir)
