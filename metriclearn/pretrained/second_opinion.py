"""``SecondOpinion``: a cache of a pretrained model's own features that corrects its predictions.

Orhan ("A Simple Cache Model for Image Recognition", NeurIPS 2018): keep the features ``k_i`` of labelled
examples, taken from a layer of the model itself, and blend the model's probabilities with the cache's::

    p_cache(y|x) = Σ_i exp(θ·cos(f(x), k_i))·1[y_i = y] / Σ_i exp(θ·cos(f(x), k_i))
    p(y|x)       = (1 − λ)·p_model(y|x) + λ·p_cache(y|x)

``fit`` runs the model once over the cache examples (:class:`FeatureExtractor`); ``tune`` picks θ, λ and —
with ``layers=None`` — the layer ``f`` on held-out data: every candidate of :func:`candidate_layers` (the
classifier's input, the last block, a middle block) is scored by the accuracy of the tuned blend, ties by
log-loss, then by candidate order. The layer matters: for a sentence classifier whose head reads a pooled
[CLS] vector, the mean-pooled last hidden state makes a far better cache (BENCHMARKS.md).

Cache labels are aligned to the model's output columns by name (``classes=``, or a Hugging Face model's
``config.id2label``) or, when they are not names, by index; a label the model does not have is an error that
names it. Probability columns always follow the model's classes; the cache may hold fewer classes.

Example
-------
>>> import numpy as np, torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> X = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32); y = (X[:, 0] > 0).astype(int)
>>> model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))  # an untrained classifier
>>> opinion = SecondOpinion(model).fit(X[:40], y[:40]).tune(X[40:50], y[40:50])
>>> opinion.predict_proba(X[50:]).shape, opinion.layers_
((10, 2), ['2:input'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from metriclearn._checks import check_fraction, check_positive_float, check_positive_int, describe
from metriclearn.classify.cache import LAM_GRID, THETA_GRID, CacheClassifier
from metriclearn.classify.defaults import DEFAULT_LAM, DEFAULT_THETA
from metriclearn.fingerprint import model_fingerprint
from metriclearn.pretrained.extractor import FeatureExtractor, candidate_layers, resolve_layers

FORMAT = "metriclearn.second_opinion"
FORMAT_VERSION = 1
AUDIT_NEIGHBORS = 5


def model_classes(model: nn.Module, classes: Sequence[Any] | None = None) -> list[Any] | None:
    """The names of the model's output columns: ``classes``, else a Hugging Face ``config.id2label``."""
    if classes is not None:
        return list(classes)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and id2label:
        return [id2label[i] for i in sorted(id2label)]
    return None


def align_labels(y: Any, classes: Sequence[Any] | None, num_classes: int, what: str) -> np.ndarray:
    """Column codes (n,) of labels ``y``: by name when every label is a class name, else by integer index.

    >>> align_labels(["pos", "neg", "pos"], ["neg", "pos"], 2, "y").tolist()
    [1, 0, 1]
    >>> align_labels([1, 0], ["neg", "pos"], 2, "y").tolist()
    [1, 0]
    >>> align_labels(["neutral"], ["neg", "pos"], 2, "y")
    Traceback (most recent call last):
        ...
    ValueError: y label 'neutral' is not one of the model's 2 classes ('neg', 'pos')
    """
    values = np.asarray(y).reshape(-1).tolist() if not isinstance(y, list) else list(y)
    names = list(classes) if classes is not None else list(range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"classes has {len(names)} names but the model outputs {num_classes} columns")
    lookup = {name: i for i, name in enumerate(names)}
    try:
        if all(v in lookup for v in values):
            return np.array([lookup[v] for v in values], dtype=np.int64)
    except TypeError:  # unhashable labels
        raise TypeError(f"{what} must hold ints or strings, got {describe(values[0])}") from None
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < num_classes for v in values):
        return np.array(values, dtype=np.int64)
    bad = next(v for v in values if v not in lookup)
    preview = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    raise ValueError(f"{what} label {bad!r} is not one of the model's {num_classes} classes ({preview})")


class SecondOpinion:
    """Blend a pretrained classifier with a cache of its own features (Orhan 2018); see the module docstring.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (its forward returns (n, K) logits); see :class:`FeatureExtractor`.
    layers : str, list of str or None
        Where the cache features come from; ``None``: chosen by :meth:`tune` among ``candidates`` (before
        tuning: the input of the last ``nn.Linear``).
    theta, lam : float or None
        Inverse temperature θ > 0 and cache weight λ ∈ [0, 1]; ``None``: chosen by :meth:`tune` (before
        tuning: 50 and 0.5). A value given here is kept by :meth:`tune`.
    classes : sequence, optional
        Names of the model's output columns (default: ``model.config.id2label``, else 0 … K−1).
    candidates : list of str, optional
        Layers :meth:`tune` compares when ``layers=None`` (default :func:`candidate_layers`).
    tokenizer, batch_size, device, max_length
        Passed to :class:`FeatureExtractor` (a tokenizer lets X be a list of texts).

    Attributes
    ----------
    layers_ : list of str — the layer(s) in use; theta_, lam_ : float — θ and λ in use.
    classes_ : list — the model's class names, the columns of :meth:`predict_proba`.
    tuning_ : dict — per candidate layer: θ, λ, validation accuracy and log-loss, and the model's own accuracy.
    cache_ : CacheClassifier over the cache features (its classes are column codes).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        theta: float | None = None,
        lam: float | None = None,
        *,
        classes: Sequence[Any] | None = None,
        candidates: Sequence[str] | None = None,
        tokenizer: Any = None,
        batch_size: int = 64,
        device: str = "auto",
        max_length: int | None = None,
    ) -> None:
        self.extractor = FeatureExtractor(model, layers, batch_size=batch_size, device=device, tokenizer=tokenizer,
                                          max_length=max_length)
        self.model = model
        self.layers = layers
        self.theta = None if theta is None else check_positive_float(theta, "theta")
        self.lam = None if lam is None else check_fraction(lam, "lam")
        self.classes = model_classes(model, classes)
        self.candidates = (resolve_layers(model, list(candidates)) if candidates is not None
                           else candidate_layers(model) if layers is None else None)
        self.device = device

    # ------------------------------------------------------------------ fit / tune
    def fit(self, X: Any, y: Any, metadata: Sequence[Any] | None = None) -> SecondOpinion:
        """Run the model over the cache examples ``X`` with labels ``y``; returns ``self``.

        ``metadata``: one JSON-able object per example, shown as evidence by :meth:`audit` (default for a
        list of texts: ``{"text": ...}``).
        """
        layers = self._layer_options()
        per_layer, probs = self.extractor.extract_layers(X, self._all_layers(layers))
        self.classes_ = self.classes if self.classes is not None else list(range(probs.shape[1]))
        codes = align_labels(y, self.classes_, probs.shape[1], "cache")
        if len(codes) != len(probs):
            raise ValueError(f"y has {len(codes)} labels but X has {len(probs)} rows")
        if metadata is None and isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
            metadata = [{"text": t} for t in X]
        if metadata is not None and len(metadata) != len(codes):
            raise ValueError(f"metadata has {len(metadata)} entries but X has {len(codes)} rows")
        self.metadata_ = None if metadata is None else list(metadata)
        self.codes_ = codes
        self._features = {key: _join(per_layer, key) for key in layers}
        self.fingerprint_ = model_fingerprint(self.model)
        self._use(layers[0], DEFAULT_THETA if self.theta is None else self.theta,
                  DEFAULT_LAM if self.lam is None else self.lam)
        self.tuning_: dict[str, Any] = {}
        return self

    def tune(
        self,
        X_val: Any,
        y_val: Any,
        thetas: Sequence[float] = THETA_GRID,
        lams: Sequence[float] = LAM_GRID,
    ) -> SecondOpinion:
        """Choose θ, λ (those not fixed) and, with ``layers=None``, the layer on held-out ``(X_val, y_val)``.

        Never tune on the cache's own examples: each finds itself (cos = 1) and the search runs to the grid's
        corner. Returns ``self``.
        """
        self._check_fitted()
        layers = self._layer_options()
        per_layer, probs = self.extractor.extract_layers(X_val, self._all_layers(layers))
        codes = align_labels(y_val, self.classes_, probs.shape[1], "y_val")
        if len(codes) != len(probs):
            raise ValueError(f"y_val has {len(codes)} labels but X_val has {len(probs)} rows")
        thetas = [self.theta] if self.theta is not None else [check_positive_float(t, "thetas") for t in thetas]
        lams = [self.lam] if self.lam is not None else [check_fraction(v, "lams") for v in lams]
        if not thetas or not lams:
            raise ValueError(f"thetas and lams need at least one value each, got thetas={thetas}, lams={lams}")
        rows = np.arange(len(codes))
        scores: dict[str, dict[str, float]] = {}
        for key in layers:
            val = _join(per_layer, key)
            best = None
            for theta in thetas:
                p_cache = self._cache_proba(self._cache_for(self._features[key], theta), val)
                for lam in lams:
                    blend = (1.0 - lam) * probs + lam * p_cache
                    acc = float(np.mean(blend.argmax(1) == codes))
                    loss = float(-np.mean(np.log(np.clip(blend[rows, codes], 1e-15, 1.0))))
                    if best is None or (acc, -loss) > (best["accuracy"], -best["log_loss"]):
                        best = {"theta": theta, "lam": lam, "accuracy": acc, "log_loss": loss}
            assert best is not None  # thetas and lams are not empty
            scores[key] = best
        chosen = max(layers, key=lambda k: (scores[k]["accuracy"], -scores[k]["log_loss"], -layers.index(k)))
        self._use(chosen, scores[chosen]["theta"], scores[chosen]["lam"])
        self.tuning_ = {"layers": scores, "chosen": chosen, "n_val": len(codes),
                        "model_accuracy": float(np.mean(probs.argmax(1) == codes))}
        return self

    def score_layers(self, X: Any, y: Any) -> dict[str, dict[str, float]]:
        """Accuracy of the blend with each layer that :meth:`tune` compared, at that layer's tuned θ and λ, on
        labelled ``(X, y)`` (one forward pass) — how much the layer choice matters; never used to choose."""
        self._check_fitted()
        scores = self.tuning_.get("layers") or {self.layers_key_: {"theta": self.theta_, "lam": self.lam_}}
        per_layer, probs = self.extractor.extract_layers(X, self._all_layers(list(scores)))
        codes = align_labels(y, self.classes_, probs.shape[1], "y")
        out = {}
        for key, best in scores.items():
            cache = self._cache_for(self._features[key], best["theta"])
            blend = (1.0 - best["lam"]) * probs + best["lam"] * self._cache_proba(cache, _join(per_layer, key))
            accuracy = float(np.mean(blend.argmax(1) == codes))
            out[key] = {"theta": best["theta"], "lam": best["lam"], "accuracy": accuracy}
        return out

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Blended probabilities (n, K) float64; columns follow :attr:`classes_`."""
        return self.opinions(X)[2]

    def predict(self, X: Any) -> np.ndarray:
        """The blend's most probable class name for each input."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_, dtype=object)[proba.argmax(1)]

    def opinions(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(p_model, p_cache, p_blend, features)`` of ``X`` from one forward pass."""
        self._check_fitted()
        features, probs = self.extractor.extract(X)
        p_cache = self._cache_proba(self.cache_, features)
        return probs.astype(np.float64), p_cache, (1.0 - self.lam_) * probs + self.lam_ * p_cache, features

    def audit(self, X: Any, y: Any = None, neighbors: int = AUDIT_NEIGHBORS) -> list[dict[str, Any]]:
        """The inputs whose decision the blend changed, each with the evidence for the change.

        One dict per changed row: ``row``; ``model``, ``cache`` and ``blend`` (each ``{"label", "p"}``, its top
        class and probability); ``neighbors``: the ``neighbors`` most similar cache items (``id``, ``label``,
        ``similarity`` = cosine, ``metadata``); with labels ``y`` also ``true`` and ``outcome``: ``"fixed"`` (the
        model was wrong, the blend is right), ``"broke"`` (the reverse) or ``"both wrong"``.
        """
        return self.audit_opinions(self.opinions(X), y, neighbors)

    def audit_opinions(
        self, opinions: tuple[np.ndarray, ...], y: Any = None, neighbors: int = AUDIT_NEIGHBORS
    ) -> list[dict[str, Any]]:
        """:meth:`audit` of the output of :meth:`opinions` (no second forward pass)."""
        check_positive_int(neighbors, "neighbors")
        p_model, p_cache, p_blend, features = opinions
        codes = None if y is None else align_labels(y, self.classes_, p_model.shape[1], "y")
        if codes is not None and len(codes) != len(p_model):
            raise ValueError(f"y has {len(codes)} labels but X has {len(p_model)} rows")
        changed = np.flatnonzero(p_blend.argmax(1) != p_model.argmax(1))
        index = self.index()
        sims, ids = index.search(features[changed], min(neighbors, len(index))) if len(changed) else ([], [])
        rows = []
        for j, i in enumerate(changed.tolist()):
            row: dict[str, Any] = {"row": i}
            for name, p in (("model", p_model), ("cache", p_cache), ("blend", p_blend)):
                top = int(p[i].argmax())
                row[name] = {"label": self.classes_[top], "p": round(float(p[i, top]), 6)}
            row["neighbors"] = [
                {"id": int(k), "label": self.classes_[int(self.codes_[k])], "similarity": round(float(s), 6),
                 "metadata": None if self.metadata_ is None else self.metadata_[k]}
                for s, k in zip(sims[j], ids[j], strict=True) if k >= 0
            ]
            if codes is not None:
                truth = int(codes[i])
                row["true"] = self.classes_[truth]
                right = (int(p_model[i].argmax()) == truth, int(p_blend[i].argmax()) == truth)
                row["outcome"] = {(False, True): "fixed", (True, False): "broke"}.get(right, "both wrong")
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ persistence
    def index(self) -> Any:
        """The cache as a labelled :class:`~metriclearn.indexes.EmbeddingIndex` (cosine; ids = row numbers;
        labels = column codes; metadata) carrying θ, λ, the layers, the classes and the model fingerprint."""
        self._check_fitted()
        from metriclearn.indexes import EmbeddingIndex

        if getattr(self, "_index", None) is None:
            features = self._features[self.layers_key_]
            index = EmbeddingIndex(features.shape[1], metric="cosine", kind="flat", device="cpu")
            index.add(features, labels=self.codes_, ids=np.arange(len(features)), metadata=self.metadata_)
            self._index = index
        self._index.attrs = {
            "model_fingerprint": self.fingerprint_,
            "tuning": {"theta": self.theta_, "lam": self.lam_, **_json_tuning(self.tuning_)},
            "second_opinion": {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": self.layers_,
                               "classes": list(self.classes_)},
        }
        return self._index

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache as an EmbeddingIndex directory; θ, λ, layers, classes and the model's fingerprint
        go in its checksummed manifest (``attrs``). The directory also works with ``--index`` commands."""
        self.index().save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: nn.Module,
        theta: float | None = None,
        lam: float | None = None,
        **options: Any,
    ) -> SecondOpinion:
        """A saved second opinion for ``model``; ``ValueError`` when ``model`` has other weights than the one
        the cache was built with. ``theta``/``lam`` replace the saved values (and stay fixed in :meth:`tune`;
        the saved ones may be re-tuned). ``options``: ``tokenizer``, ``batch_size``, ``device``,
        ``max_length``."""
        from metriclearn.indexes import EmbeddingIndex

        index = EmbeddingIndex.load(path, device="cpu")
        info = index.attrs.get("second_opinion")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{path} is an index directory but not a saved SecondOpinion (no second_opinion attrs)")
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: second opinion format_version {info.get('format_version')!r} is not supported")
        saved = index.attrs.get("model_fingerprint")
        if saved != model_fingerprint(model):
            raise ValueError(f"{path} was built with another model (weights fingerprint {str(saved)[:12]}…); "
                             f"{type(model).__name__} given here has fingerprint {model_fingerprint(model)[:12]}…")
        tuning = index.attrs.get("tuning", {})
        opinion = cls(model, layers=info["layers"], theta=theta, lam=lam, classes=info["classes"], **options)
        opinion.classes_ = list(info["classes"])
        opinion.codes_ = index.labels.astype(np.int64)
        opinion.metadata_ = list(index.metadata_for(index.ids)) if _has_metadata(index) else None
        opinion._features = {"|".join(info["layers"]): index.vectors()}
        opinion.fingerprint_ = saved
        opinion.tuning_ = {k: v for k, v in tuning.items() if k not in ("theta", "lam")}
        opinion._use("|".join(info["layers"]), float(tuning["theta"] if theta is None else theta),
                     float(tuning["lam"] if lam is None else lam))
        opinion._index = index
        return opinion

    # ------------------------------------------------------------------ helpers
    def _layer_options(self) -> list[str]:
        """Keys of the layer choices: one per candidate with ``layers=None``, else the layers joined."""
        if self.layers is None:
            return list(self.candidates or [])  # candidates are set whenever layers is None
        return ["|".join(self.extractor.layers)]

    @staticmethod
    def _all_layers(keys: list[str]) -> list[str]:
        return list(dict.fromkeys(layer for key in keys for layer in key.split("|")))

    def _use(self, key: str, theta: float, lam: float) -> None:
        self.layers_key_ = key
        self.layers_ = key.split("|")
        self.theta_, self.lam_ = float(theta), float(lam)
        self.extractor.layers = self.layers_
        self.cache_ = self._cache_for(self._features[key], self.theta_)
        self._index = None

    def _cache_for(self, features: np.ndarray, theta: float) -> CacheClassifier:
        return CacheClassifier(theta=theta, device=self.device).fit(features, self.codes_)

    def _cache_proba(self, cache: CacheClassifier, features: np.ndarray) -> np.ndarray:
        """p_cache (n, K) with one column per model class (0 for classes the cache lacks)."""
        out = np.zeros((len(features), len(self.classes_)))
        out[:, cache.classes_] = cache.predict_proba(features)
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "cache_"):
            raise ValueError("this SecondOpinion is not fitted yet: call fit(X_cache, y_cache) first")


def _join(per_layer: dict[str, np.ndarray], key: str) -> np.ndarray:
    return np.concatenate([per_layer[layer] for layer in key.split("|")], axis=1)


def _json_tuning(tuning: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tuning.items() if k in ("layers", "chosen", "n_val", "model_accuracy")}


def _has_metadata(index: Any) -> bool:
    return any(m is not None for m in index.metadata_for(index.ids))



