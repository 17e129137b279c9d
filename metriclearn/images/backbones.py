"""Pretrained vision backbones by spec, loaded from local files only (nothing is ever downloaded).

====================================  ==============================================================================
``hf-vision:DIR``                     a Hugging Face ``AutoModel`` folder: ViT, DeiT, DINOv2, ResNet, ConvNeXt, CLIP
                                      (its vision tower) ...; checked by :func:`metriclearn._hf.check_model_folder`
                                      (a folder that asks to run its own code is refused) and read with
                                      :data:`~metriclearn._hf.SAFE_LOAD`
``torchvision:NAME[:WEIGHTS.pth]``    ``torchvision.models.get_model(NAME)``, weights from a local state-dict file
                                      (random initialisation and a warning without one); only where torchvision
                                      imports
``timm:NAME[:WEIGHTS]``               ``timm.create_model(NAME, num_classes=0)``, weights from a local file; only
                                      where timm imports
====================================  ==============================================================================

:func:`load_backbone` returns a :class:`Backbone`: the module, how to pool its output to one vector per image
(a transformer's class token — CLIP's post-layer-norm pooled output —, a CNN's global average), its input
size (``None``: any), channels, normalisation (the folder's ``preprocessor_config.json``, timm's data config,
else ImageNet's) and its stack of blocks, bottom to top (``--unfreeze N`` trains the top N).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metriclearn.images.transforms import IMAGENET_MEAN, IMAGENET_STD

KINDS = ("hf-vision", "torchvision", "timm")
_BLOCK_NAMES = ("layer", "layers", "stages", "blocks")


@dataclass(eq=False)
class Backbone:
    """A loaded backbone (see the module docstring); ``from_file``: its weights come from a file, so a frozen
    copy need not be saved with a run."""

    module: nn.Module
    kind: str
    size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    blocks: list[nn.Module]
    from_file: bool
    pool: str  # "cls", "pooler" or "output"

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) normalised images → (N, H') pooled features."""
        if self.kind != "hf-vision":
            return self.module(x).flatten(1)
        out = self.module(pixel_values=x)
        if self.pool == "cls":
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden[:, 0]


def is_vision_spec(spec: Any) -> bool:
    """Whether an encoder spec names a vision backbone (``hf-vision:``, ``torchvision:``, ``timm:``)."""
    return isinstance(spec, str) and spec.strip().partition(":")[0].lower() in KINDS


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``(kind, name or folder, weights file or None)``; ``ValueError`` for a spec without its argument."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in KINDS or not rest.strip():
        raise ValueError(f"vision encoder spec {spec!r} must be hf-vision:DIR, torchvision:NAME[:WEIGHTS.pth] or "
                         "timm:NAME[:WEIGHTS]")
    if kind == "hf-vision":
        return kind, rest.strip(), None
    name, _, weights = rest.partition(":")
    return kind, name.strip(), weights.strip() or None


def input_size(spec: str) -> int | None:
    """The input side a backbone expects, read from its files without loading it (``None``: any, or unknown
    before loading); what ``train`` decodes images at when ``--image-size`` is not given."""
    kind, name, _ = parse_spec(spec)
    if kind != "hf-vision":
        return None
    folder = Path(name).expanduser()
    return _hf_size(_json(folder / "preprocessor_config.json"), _json(folder / "config.json"))


def load_backbone(spec: str) -> Backbone:
    """The backbone of ``spec`` (see the module docstring), in eval mode."""
    kind, name, weights = parse_spec(spec)
    loader = {"hf-vision": _hf, "torchvision": _torchvision, "timm": _timm}[kind]
    backbone = loader(name, weights)
    backbone.module.eval()
    return backbone


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _side(value: Any) -> int | None:
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge"):
            if isinstance(value.get(key), int) and value[key] > 0:
                return int(value[key])
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], int):
        return int(value[-1])
    return None


def _hf_size(processor: dict[str, Any], config: dict[str, Any]) -> int | None:
    nested = config.get("vision_config")
    vision: dict[str, Any] = nested if isinstance(nested, dict) else config
    for value in (processor.get("crop_size"), processor.get("size"), vision.get("image_size")):
        side = _side(value)
        if side is not None:
            return side
    return None


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The longest ModuleList named layer/layers/stages/blocks (bottom to top), else the top-level children."""
    lists = [m for name, m in module.named_modules()
             if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_NAMES]
    longest = max(lists, key=lambda m: len(m)) if lists else None
    return list(longest) if longest is not None else list(module.children())


def _hf(folder_text: str, _: str | None) -> Backbone:
    from metriclearn._hf import SAFE_LOAD, check_model_folder

    folder = Path(folder_text).expanduser()
    if not folder.is_dir():
        raise ValueError(f"hf-vision model folder {folder_text!r} does not exist; pass a local Hugging Face model "
                         "folder (nothing is downloaded)")
    config = check_model_folder(folder)  # before transformers reads anything: a folder's own code never runs
    model_type = config.get("model_type")
    if isinstance(config.get("vocab_size"), int) and "vision_config" not in config:
        raise ValueError(f"model folder {str(folder)!r} (model_type {model_type!r}) is a text model, not a vision "
                         "backbone; use --encoder sentence:DIR for texts")
    import transformers

    with _quiet_transformers(transformers):
        if model_type == "clip":  # the full CLIP folder: only its vision tower
            module = transformers.CLIPVisionModel.from_pretrained(folder, **SAFE_LOAD)
        else:
            module = transformers.AutoModel.from_pretrained(folder, **SAFE_LOAD)
    processor = _json(folder / "preprocessor_config.json")
    channels = int(getattr(module.config, "num_channels", 3) or 3)
    tokens = getattr(module.config, "model_type", "") not in ("resnet", "convnext", "convnextv2", "regnet",
                                                               "efficientnet", "mobilenet_v2", "bit")
    pool = "pooler" if not tokens or "clip" in str(model_type) or "siglip" in str(model_type) else "cls"
    mean, std = tuple(processor.get("image_mean") or IMAGENET_MEAN), tuple(processor.get("image_std") or IMAGENET_STD)
    return Backbone(module, "hf-vision", _hf_size(processor, config), channels, mean, std, _blocks(module), True, pool)


class _quiet_transformers:
    """transformers' own log lines (e.g. "Some weights ... newly initialized") at error level, and no progress bar,
    while loading."""

    def __init__(self, transformers: Any) -> None:
        self.logging = transformers.logging

    def __enter__(self) -> None:
        self.level = self.logging.get_verbosity()
        self.bars = self.logging.is_progress_bar_enabled()
        self.logging.set_verbosity_error()
        self.logging.disable_progress_bar()  # its "Loading weights" bar, for a model of a few MB

    def __exit__(self, *exc: Any) -> None:
        self.logging.set_verbosity(self.level)
        if self.bars:
            self.logging.enable_progress_bar()


def _state_dict(path_text: str) -> dict[str, Tensor]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file {path_text!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line naming it
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"weights file {path_text!r} is not a readable state dict ({why})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path_text!r} holds a {type(state).__name__}, not a state dict")
    return state


def _torchvision(name: str, weights: str | None) -> Backbone:
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - e.g. "operator torchvision::nms does not exist" with a CPU torch
        raise ValueError(f"encoder torchvision:{name} needs torchvision, which does not import here "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        module = torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise ValueError(f"torchvision has no model {name!r} (torchvision.models.list_models() lists them)") from None
    if weights:
        module.load_state_dict(_state_dict(weights))
    else:
        warnings.warn(f"torchvision:{name} has no weights file: random initialisation", stacklevel=3)
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(module, head, None), nn.Module):
            setattr(module, head, nn.Identity())
            break
    size = getattr(module, "image_size", None)
    return Backbone(module, "torchvision", size if isinstance(size, int) else None, 3, IMAGENET_MEAN, IMAGENET_STD,
                    _blocks(module), weights is not None, "output")


def _timm(name: str, weights: str | None) -> Backbone:
    try:
        import timm
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"encoder timm:{name} needs timm, which does not import here "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        module = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError:
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)") from None
    if weights:
        missing, _ = module.load_state_dict(_state_dict(weights), strict=False)
        if missing:
            raise ValueError(f"weights file {weights!r} lacks {len(missing)} weights of timm:{name}, e.g. {missing[0]}")
    cfg = timm.data.resolve_data_config({}, model=module)
    size = cfg.get("input_size", (3, 224, 224))
    return Backbone(module, "timm", int(size[-1]), int(size[0]), tuple(cfg.get("mean", IMAGENET_MEAN)),
                    tuple(cfg.get("std", IMAGENET_STD)), _blocks(module), weights is not None, "output")
