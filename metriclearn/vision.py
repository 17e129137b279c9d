"""``VisionEncoder``: a pretrained vision backbone, pooling and a trainable projection head, on image batches.

Input: (N, C, S, S) float images in [0, 1] (what :func:`metriclearn.data.load_data` gives for an image folder).
Per batch, as tensor operations::

    x → [augmentation, training only] → channels to the backbone's → resize to its input size
      → (x − mean) / std (its own normalisation) → backbone → pooled feature → Linear head → L2 normalisation

The backbone comes from a spec (:mod:`metriclearn.images.backbones`: ``hf-vision:DIR``,
``torchvision:NAME[:WEIGHTS.pth]``, ``timm:NAME[:WEIGHTS]``). As for the text encoder
(:class:`~metriclearn.sentence.SentenceEncoder`): frozen by default (no gradients, always in eval mode, so its
BatchNorm statistics and dropout stay as trained; only the head trains and a run saves only the head when the
weights come from a file); ``freeze=False`` fine-tunes it (``unfreeze=N``: its top N blocks) at the trainer's
``encoder_lr`` (:meth:`encoder_parameters`), under bf16 autocast on a CPU with native bf16 (``cpu_bf16``).
``channels_last=True`` runs a convolutional backbone in the NHWC memory format.

A frozen backbone is a fixed function of its input, so its pooled features are computed once per picture and
kept in memory (up to ``cache_size`` pictures, keyed by a BLAKE2b digest of the picture's pixels): every epoch
after the first, and the validation passes, only run the head. Not when the input changes every time (training
with augmentation) nor for pictures on a GPU (hashing them would copy them back; the GPU recomputes fast).

Example
-------
>>> import tempfile, torch
>>> from transformers import ResNetConfig, ResNetModel
>>> folder = tempfile.mkdtemp()
>>> ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(folder)
>>> encoder = VisionEncoder(f"hf-vision:{folder}", embedding_dim=4)
>>> encoder(torch.rand(3, 3, 16, 16)).shape
torch.Size([3, 4])
>>> sorted(encoder.state_dict())  # frozen: only the head; the backbone comes from the folder
['head.bias', 'head.weight']
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearn._checks import check_bool, check_choice, check_positive_int, describe
from metriclearn._frozen_part import skip_when_frozen
from metriclearn.images.backbones import load_backbone
from metriclearn.images.transforms import AUGMENTS, Normalize, augmentation, match_channels, resize_batch

__all__ = ["VisionEncoder"]

PROBE_SIDE = 32  # the probe image's side for a backbone that takes any size


class VisionEncoder(nn.Module):
    """Backbone → pooled feature → optional linear head → optional L2 normalisation (see the module docstring).

    Parameters
    ----------
    spec:
        ``hf-vision:DIR``, ``torchvision:NAME[:WEIGHTS.pth]`` or ``timm:NAME[:WEIGHTS]``.
    embedding_dim:
        Width of the trainable head; ``None``: no head (the pooled feature itself).
    normalize:
        L2-normalise the output.
    freeze:
        Keep the backbone fixed and train only the head (default).
    unfreeze:
        With ``freeze=False``: fine-tune only the top ``unfreeze`` blocks; ``None``: all of it.
    augment:
        Training augmentation preset (``none``, ``light``, ``strong``: :mod:`metriclearn.images.transforms`),
        applied in ``train()`` mode only: embedding never augments.
    image_size:
        The decoded images' side (the augmentation's crop size); ``None``: the backbone's input size.
    channels_last:
        Run the backbone in the channels-last memory format.
    cache_size:
        Frozen backbone: how many pictures' features are kept in memory (0: none; see the module docstring).
    """

    def __init__(self, spec: str, embedding_dim: int | None = 64, normalize: bool = True, freeze: bool = True,
                 unfreeze: int | None = None, augment: str = "none", image_size: int | None = None,
                 channels_last: bool = False, cache_size: int = 100_000) -> None:
        super().__init__()
        self.cache_size = check_positive_int(cache_size, "cache_size", allow_zero=True)
        self._memo: dict[bytes, Tensor] = {}  # picture digest -> frozen backbone features (H,)
        self.spec = spec.strip()
        self.freeze = check_bool(freeze, "freeze")
        self.normalize = check_bool(normalize, "normalize")
        self.channels_last = check_bool(channels_last, "channels_last")
        self.unfreeze = None if unfreeze is None else check_positive_int(unfreeze, "unfreeze")
        if self.unfreeze is not None and self.freeze:
            raise ValueError(f"unfreeze={self.unfreeze} needs freeze=False (fine-tuning; --finetune)")
        self.augment_preset = check_choice(augment, AUGMENTS, "augment")
        self.input_shape: tuple[int, ...] = ()  # set by build_encoder: the decoded images' (C, S, S)
        self._backbone = load_backbone(self.spec)
        self.backbone = self._backbone.module
        self.input_size = self._backbone.size
        side = image_size or self.input_size or PROBE_SIDE
        self.image_size = check_positive_int(side, "image_size")
        self.augment = augmentation(augment, self.image_size, self._backbone.channels)
        self.preprocess = Normalize(self._backbone.mean, self._backbone.std)
        with torch.no_grad():
            probe = torch.zeros(2, self._backbone.channels, self.input_size or self.image_size,
                                self.input_size or self.image_size)
            self.hidden_size = int(self._backbone.features(self.preprocess(probe)).shape[1])
        self.embedding_dim = None if embedding_dim is None else check_positive_int(embedding_dim, "embedding_dim")
        self.head = nn.Linear(self.hidden_size, self.embedding_dim) if self.embedding_dim else nn.Identity()
        if self.freeze:
            self.backbone.requires_grad_(False)
        elif self.unfreeze is not None:
            blocks = self._backbone.blocks
            if self.unfreeze > len(blocks):
                raise ValueError(f"unfreeze={self.unfreeze} but the backbone {self.spec!r} has {len(blocks)} blocks")
            self.backbone.requires_grad_(False)
            for block in blocks[len(blocks) - self.unfreeze:]:
                block.requires_grad_(True)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # a frozen backbone is not saved: it is rebuilt from its source
        skip_when_frozen(self, "backbone", lambda m: m.freeze and m._backbone.from_file)
        self.train(True)

    @property
    def is_text(self) -> bool:
        return False

    @property
    def out_features(self) -> int:
        return self.embedding_dim or self.hidden_size

    @property
    def cpu_bf16(self) -> bool:
        """A fine-tuned backbone trains under bf16 autocast on a CPU with native bf16 (the trainer's ``amp``);
        a frozen one only trains the small head, which stays in float32."""
        return not self.freeze

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The backbone's trainable parameters (they get the trainer's ``encoder_lr``)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # a frozen backbone never updates its BatchNorm statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"VisionEncoder expects images (N, C, H, W), got {describe(x)}")
        augmented = self.training and self.augment_preset != "none"
        if augmented:
            x = self.augment(x)
        memo = (self.freeze and self.cache_size > 0 and not augmented and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64)
                and not torch.is_inference_mode_enabled())  # inference tensors could not train the head later
        features = self._remembered_features(x) if memo else self._features(x)  # (N, H)
        out = self.head(features.float() if self.freeze else features)  # (N, D)
        return F.normalize(out, dim=1) if self.normalize else out

    def _features(self, x: Tensor) -> Tensor:
        """The backbone's pooled features of pictures ``x`` (N, C, S, S) in [0, 1]: channels, resize, its
        normalisation, the backbone."""
        x = match_channels(x, self._backbone.channels)
        if self.input_size is not None:
            x = resize_batch(x, self.input_size)
        x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self._backbone.features(x)

    def _remembered_features(self, x: Tensor) -> Tensor:
        """:meth:`_features` of a frozen backbone, from memory for the pictures seen before (the rest computed
        once, and kept while fewer than ``cache_size`` are)."""
        rows = x.detach().contiguous().numpy()
        keys = [hashlib.blake2b(row, digest_size=16).digest() for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        computed = self._features(x[missing]).detach() if missing else None
        out = torch.empty(len(keys), self.hidden_size, dtype=computed.dtype if computed is not None else
                          next(iter(self._memo.values())).dtype)
        for j, i in enumerate(missing):
            assert computed is not None
            out[i] = computed[j]
            if len(self._memo) < self.cache_size:
                self._memo[keys[i]] = computed[j].clone()
        for i, key in enumerate(keys):
            if key in self._memo:
                out[i] = self._memo[key]
        return out

    def extra_repr(self) -> str:
        return (f"spec={self.spec!r}, freeze={self.freeze}, augment={self.augment_preset!r}, "
                f"image_size={self.image_size}")

