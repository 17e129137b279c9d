"""``FeatureExtractor``: a pretrained model's own features and probabilities from one forward pass.

Forward hooks on the named modules of any ``torch.nn.Module`` record what those modules see or produce while
the model computes its logits, so one pass gives both the features ``f_l(x)`` of each requested layer ``l``
and the model's probabilities ``softmax(logits(x))``. Each layer's tensor becomes one row per input:

- ``(n, T, H)`` token outputs are mean-pooled over the tokens, with the batch's ``attention_mask`` when the
  batch carries one of shape ``(n, T)`` (Sentence-BERT pooling, ``Σ_t m_t h_t / Σ_t m_t``), else over all T;
- ``(n, d)`` stays as it is; anything else ``(n, …)`` is flattened.

Each layer's rows are then L2-normalised and the layers concatenated:
``features(x) = [f_1(x)/‖f_1(x)‖, …, f_L(x)/‖f_L(x)‖]``.

A layer is named as in ``model.named_modules()``: ``"bert.encoder.layer.5"`` is that module's output,
``"classifier:input"`` the (first tensor) input of the module ``classifier``. ``layers=None`` means the input
of the model's last ``nn.Linear`` — the penultimate features Orhan (NeurIPS 2018) cached.

During extraction the model is in ``eval()`` mode under ``torch.no_grad()``; each module's own training flag
is restored afterwards and the hooks are removed, also when the pass fails.

Example
-------
>>> import numpy as np, torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> extractor = FeatureExtractor(model, batch_size=4)
>>> extractor.layers
['2:input']
>>> features, probs = extractor.extract(np.random.default_rng(0).normal(size=(10, 4)))
>>> features.shape, probs.shape, bool(np.allclose(probs.sum(1), 1)), bool(model.training)
((10, 8), (10, 3), True, True)
>>> FeatureExtractor(model, layers=["1", "0:input"]).extract(np.ones((2, 4)))[0].shape
(2, 12)
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_positive_int, describe
from metriclearn._device import resolve_device
from metriclearn._progress import progress
from metriclearn.pretrained._torchscript import INPUT_SUFFIX, is_torchscript, layer_runner, visible_layers
from metriclearn.sentence import mean_pool

_LIST_ALL_BELOW = 40  # error messages list every layer name of models with fewer modules than this


# ---------------------------------------------------------------------------------------------- layers
def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, also inside a TorchScript model (whose submodules keep their ``original_name``)."""
    return isinstance(module, nn.Linear) or getattr(module, "original_name", None) == "Linear"


def default_layer(model: nn.Module) -> str:
    """``"<name>:input"`` of the model's last ``nn.Linear`` (registration order); ``ValueError`` without one.

    >>> default_layer(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    '2:input'
    """
    names = [name for name, module in model.named_modules() if name and _is_linear(module)]
    if not names:
        raise ValueError(
            f"layers=None takes the input of the model's last nn.Linear, but {type(model).__name__} has none; "
            f"name the layers, e.g. layers={_module_names(model)[-1:]!r}"
        )
    return names[-1] + INPUT_SUFFIX


def candidate_layers(model: nn.Module) -> list[str]:
    """The layers :class:`SecondOpinion` tries when ``layers=None``: the classifier's input, then the output
    of the last block and of the middle block of the model's longest stack of blocks (its longest
    ``nn.ModuleList``/``nn.Sequential`` of ≥ 2 modules, e.g. a transformer's layers), when it has one.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> candidate_layers(net)
    ['4:input', '3', '2']
    """
    default = default_layer(model)
    head = default[: -len(INPUT_SUFFIX)]
    stacks = [
        (name, list(module.named_children()))
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential)) or getattr(module, "original_name", "") in
        ("ModuleList", "Sequential")
    ]
    stacks = [(name, children) for name, children in stacks if len(children) >= 2]
    out = [default]
    if stacks:
        name, children = max(stacks, key=lambda s: len(s[1]))  # first of the longest
        blocks = [f"{name}.{child}" if name else child for child, _ in children]
        blocks = [b for b in blocks if b != head and not head.startswith(b + ".")]
        for pick in (len(blocks) - 1, len(blocks) // 2):
            if blocks and blocks[pick] not in out:
                out.append(blocks[pick])
    if is_torchscript(model):  # only modules its top-level forward calls can be recorded
        visible = set(visible_layers(model))
        out = out[:1] + [layer for layer in out[1:] if layer in visible]
    return out


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    """Validated layer names (``None`` → ``[default_layer(model)]``); an unknown name is a ``ValueError``
    that lists the model's layers (or, for large models, the closest names)."""
    if layers is None:
        return [default_layer(model)]
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be None or a non-empty list of module names, got {describe(layers)}")
    modules = dict(model.named_modules())
    out = []
    for layer in layers:
        if not isinstance(layer, str):
            raise TypeError(f"layers must hold module names (str), got {describe(layer)}")
        name = layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer
        if not name or name not in modules:
            raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; {_suggest(name, model)}")
        if layer not in out:
            out.append(layer)
    return out


def _suggest(name: str, model: nn.Module) -> str:
    names = _module_names(model)
    if len(names) < _LIST_ALL_BELOW:
        return f"its layers are {', '.join(names)} (add ':input' for a layer's input)"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # e.g. a misspelt prefix: match on the last component
        tail = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == tail][:5]
    close = close or names[-5:]
    return f"closest of its {len(names)} layers: {', '.join(close)} (add ':input' for a layer's input)"


# ---------------------------------------------------------------------------------------------- tensors
def _first_tensor(value: Any) -> Tensor | None:
    """The tensor a module produced: itself, ``last_hidden_state``/``logits``, or the first tensor inside."""
    if isinstance(value, Tensor):
        return value
    for key in ("last_hidden_state", "logits"):
        found = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
        if isinstance(found, Tensor):
            return found
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, items) if t is not None), None)


def _logits(output: Any, n: int) -> Tensor:
    """The (n, K) logits in a model's output (a tensor, ``.logits``, a dict or a tuple whose first entry)."""
    logits = output
    if not isinstance(output, Tensor):
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(
            f"the model must return (n, K) class logits with K >= 2; for a batch of {n} it returned "
            f"{describe(logits if isinstance(logits, Tensor) else output)}"
        )
    if not torch.isfinite(logits).all():
        raise ValueError(f"the model returned NaN or inf logits for a batch of {n}")
    return logits


def pool_rows(x: Tensor, n: int, mask: Tensor | None, layer: str) -> Tensor:
    """One float32 row per input: masked token mean for (n, T, H), as-is for (n, d), flattened otherwise.

    >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> pool_rows(h, 1, torch.tensor([[1, 1, 0]]), "x").tolist()
    [[2.0, 3.0]]
    """
    if x.ndim == 0 or x.shape[0] != n:
        raise ValueError(f"layer {layer!r} gave {describe(x)} for a batch of {n} inputs; "
                         "choose a layer with one row per input")
    x = x.float()
    if x.ndim == 3:
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
            return mean_pool(x, mask.to(x.device))
        return x.mean(dim=1)
    return x.reshape(n, -1)


# ---------------------------------------------------------------------------------------------- batches
def _batch_rows(batch: Any) -> int:
    """Rows of one ready batch: a tensor, a dict of tensors (same first dimension) or a list of texts."""
    if isinstance(batch, Tensor):
        if batch.ndim == 0:
            raise ValueError("a batch must have a first (batch) dimension, got a 0-d tensor")
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        sizes = {k: int(v.shape[0]) for k, v in batch.items() if isinstance(v, Tensor) and v.ndim > 0}
        if not sizes:
            raise ValueError(f"a dict batch must hold tensors, got keys {list(batch)}")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"mismatched batch sizes in one batch: {sizes}")
        return next(iter(sizes.values()))
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(t, str) for t in batch):
        return len(batch)
    raise TypeError(f"a batch must be a tensor, a dict of tensors or a list of str, got {describe(batch)}")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return batch


def input_width(model: nn.Module) -> int | None:
    """The features per row the model's first weight matrix takes (``Linear.in_features``), if it has one
    (TorchScript models too); ``None`` for models whose first parameter is not a 2-D weight (embeddings,
    convolutions)."""
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.dim() == 2 and "embed" not in name:
            return int(param.shape[1])
        return None
    return None


def _width_error(model: nn.Module, batch: Any, exc: RuntimeError) -> ValueError | None:
    """A one-line ``ValueError`` when ``exc`` came from rows of the wrong width for the model, else ``None``."""
    width = input_width(model)
    if not isinstance(batch, Tensor) or batch.dim() != 2 or width is None or batch.shape[1] == width:
        return None
    return ValueError(f"X has {batch.shape[1]} features per row, but the model's first layer takes {width}; "
                      "give inputs of the width the model was trained on")


def _call(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


# ---------------------------------------------------------------------------------------------- extractor
class FeatureExtractor:
    """Features of named layers and class probabilities of any classifier ``nn.Module`` in one pass.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier whose forward returns (n, K) logits (a tensor, an object with ``.logits`` such as a
        Hugging Face output, a dict with ``"logits"``, or a tuple whose first entry is the logits).
    layers : str, list of str or None
        Module names (``model.named_modules()``); ``"NAME:input"`` is the input of module NAME. ``None``: the
        input of the last ``nn.Linear``.
    batch_size : int
        Rows per forward pass when ``inputs`` is an array, a tensor or a list of texts.
    device : str
        ``"auto"``: run where the model's parameters already are; ``"cpu"``/``"cuda"``: move the model there.
    tokenizer : callable, optional
        A Hugging Face tokenizer: lets :meth:`extract` take a list of texts (tokenised per batch, padded,
        truncated to ``max_length``). Without it a list of texts goes to the model as it is.
    max_length : int, optional
        Token limit for ``tokenizer`` (default: the smallest of the tokenizer's limit, the model's
        ``config.max_position_embeddings`` and 512).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        batch_size: int = 64,
        device: str = "auto",
        tokenizer: Any = None,
        max_length: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.device = device
        self.tokenizer = tokenizer
        limits = [512, getattr(tokenizer, "model_max_length", 512),
                  getattr(getattr(model, "config", None), "max_position_embeddings", 512)]
        limit = min(int(v) for v in limits if isinstance(v, (int, float)))
        self.max_length = check_positive_int(max_length if max_length is not None else limit, "max_length")

    def extract(self, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, d) float32, probs (n, K) float32)`` of ``inputs``.

        ``inputs``: an array or tensor (n, …) or a dict of (n, …) tensors such as a tokenizer's output (batched
        here, with a progress bar), a list of texts, or an iterable of ready batches — tensors or dicts of
        tensors.
        """
        per_layer, probs = self.extract_layers(inputs, self.layers)
        return np.concatenate([per_layer[layer] for layer in self.layers], axis=1), probs

    def extract_layers(self, inputs: Any, layers: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each of ``layers`` (validated like ``layers=``) as its own L2-normalised (n, d_l) float32 block,
        and the probabilities, all from the same single pass."""
        layers = resolve_layers(self.model, list(layers))
        device = self._device()
        batches, order, total = self._batches(inputs)
        modes = {m: m.training for m in self.model.modules()}
        feats: dict[str, list[Tensor]] = {layer: [] for layer in layers}
        probs: list[Tensor] = []
        try:
            self.model.eval()
            with self._recorder(layers) as run, torch.no_grad():
                for batch in progress(batches, desc="extracting features", total=total, unit="batch"):
                    n = _batch_rows(batch)
                    batch = _to_device(batch, device)
                    try:
                        output, captured = run(batch)
                    except RuntimeError as exc:  # torch's "mat1 and mat2 shapes cannot be multiplied (...)"
                        clearer = _width_error(self.model, batch, exc)
                        if clearer is None:
                            raise
                        raise clearer from exc
                    logits = _logits(output, n)
                    if probs and logits.shape[1] != probs[0].shape[1]:
                        raise ValueError(f"the model returned {logits.shape[1]} logits per row, earlier batches "
                                         f"{probs[0].shape[1]}")
                    probs.append(torch.softmax(logits.double(), dim=1).float().cpu())
                    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                    for layer in layers:
                        value = _first_tensor(captured.get(layer))
                        if value is None:
                            raise ValueError(f"layer {layer!r} was not reached by the model's forward pass "
                                             "(no tensor recorded); choose a layer the forward pass runs")
                        feats[layer].append(F.normalize(pool_rows(value, n, mask, layer), dim=1).cpu())
        finally:
            for module, mode in modes.items():
                module.training = mode
        if not probs:
            raise ValueError("inputs are empty: no batch to extract features from")
        restore = np.argsort(order) if order is not None else slice(None)
        out = {layer: _stack(chunks, layer)[restore] for layer, chunks in feats.items()}
        return out, torch.cat(probs).numpy()[restore]

    # ------------------------------------------------------------------ helpers
    def _device(self) -> torch.device:
        if self.device == "auto":
            param = next(iter(self.model.parameters()), None)
            return param.device if param is not None else torch.device("cpu")
        device = resolve_device(self.device)
        self.model.to(device)
        return device

    @contextlib.contextmanager
    def _recorder(self, layers: Sequence[str]) -> Iterator[Callable[[Any], tuple[Any, dict[str, Any]]]]:
        """A function ``batch -> (model output, {layer: recorded value})``; hooks are removed on exit."""
        if is_torchscript(self.model):
            run = layer_runner(self.model, layers)

            def call_script(batch: Any) -> tuple[Any, dict[str, Any]]:
                if not isinstance(batch, Tensor):
                    raise TypeError(f"a TorchScript model takes tensor batches here, got {describe(batch)}")
                return run(batch)

            yield call_script
            return
        modules = dict(self.model.named_modules())
        captured: dict[str, Any] = {}
        handles = []

        def hook_for(layer: str) -> Callable[..., None]:
            def record(_: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
                captured[layer] = [*args, *kwargs.values()] if layer.endswith(INPUT_SUFFIX) else output

            return record

        def call(batch: Any) -> tuple[Any, dict[str, Any]]:
            captured.clear()
            return _call(self.model, batch), captured

        try:
            for layer in layers:
                module = modules[layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer]
                handles.append(module.register_forward_hook(hook_for(layer), with_kwargs=True))
            yield call
        finally:
            for handle in handles:
                handle.remove()

    def _batches(self, inputs: Any) -> tuple[Iterable[Any], np.ndarray | None, int | None]:
        """(batches, the permutation applied to the rows or None, number of batches if known)."""
        if isinstance(inputs, (np.ndarray, Tensor)):
            x = torch.as_tensor(inputs)
            if x.ndim == 0 or len(x) == 0:
                raise ValueError(f"inputs must be a non-empty (n, ...) array, got {describe(inputs)}")
            if x.dtype == torch.float64:
                x = x.float()
            return x.split(self.batch_size), None, -(-len(x) // self.batch_size)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
            order = np.argsort([len(t) for t in inputs], kind="stable")  # similar lengths share a batch
            texts = [inputs[i] for i in order]
            chunks = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
            return self._tokenized(chunks), order, len(chunks)
        if isinstance(inputs, Mapping):  # e.g. a tokenizer's output for every text: batched here
            n = _batch_rows(inputs)
            batches = ({k: v[i : i + self.batch_size] if isinstance(v, Tensor) else v for k, v in inputs.items()}
                       for i in range(0, n, self.batch_size))
            return batches, None, -(-n // self.batch_size)
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
            raise TypeError(f"inputs must be an array, a tensor, a list of texts or an iterable of batches, "
                            f"got {describe(inputs)}")
        return inputs, None, len(inputs) if isinstance(inputs, Sized) else None

    def _tokenized(self, chunks: list[list[str]]) -> Iterator[Any]:
        for chunk in chunks:
            if self.tokenizer is None:
                yield chunk
            else:
                yield dict(self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                          return_tensors="pt"))


def _stack(chunks: list[Tensor], layer: str) -> np.ndarray:
    widths = {c.shape[1] for c in chunks}
    if len(widths) > 1:
        raise ValueError(f"layer {layer!r} gave rows of different widths {sorted(widths)} across batches "
                         "(a token output without an attention mask?); choose a pooled layer")
    return torch.cat(chunks).numpy()
