"""Temporary stand-ins for modules other helpers are writing (data, metrics, encoders, losses).

Installed by the trainer tests' conftest ONLY when the real module/attribute is missing, so the tests run
against the real implementations as soon as they land on main. Never imported by the package.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- metriclearn.data
@dataclass(frozen=True)
class LabeledData:
    X: np.ndarray
    y: np.ndarray
    classes: list
    source: str

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices):
        idx = np.asarray(indices)
        return LabeledData(self.X[idx], self.y[idx], self.classes, self.source)


def encode_labels(labels, classes=None):
    labels = list(labels)
    classes = sorted(set(labels)) if classes is None else list(classes)
    lookup = {c: i for i, c in enumerate(classes)}
    missing = [v for v in labels if v not in lookup]
    if missing:
        raise ValueError(f"unknown labels {missing[:3]}")
    return np.array([lookup[v] for v in labels], dtype=np.int64), classes


def load_data(source, classes=None):
    if str(source) == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X, raw = d.data.astype(np.float32), d.target.tolist()
    else:
        with np.load(source, allow_pickle=False) as z:
            X, raw = z["X"].astype(np.float32), z["y"].tolist()
    y, classes = encode_labels(raw, classes)
    return LabeledData(X, y, classes, str(source))


def train_val_split(data, val_fraction=0.2, seed=0):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=data.y)
    return data.subset(np.sort(tr)), data.subset(np.sort(va))


class ClassBalancedSampler:
    """Stand-in: every sample once per epoch, groups of M of one class packed into full batches."""

    def __init__(self, labels, batch_size, samples_per_class=4, seed=0):
        self.labels = np.asarray(labels)
        self.batch_size, self.m, self.seed, self.epoch = batch_size, samples_per_class, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = []
        for c in np.unique(self.labels):
            idx = rng.permutation(np.flatnonzero(self.labels == c))
            groups += [idx[i : i + self.m] for i in range(0, len(idx), self.m)]
        flat = np.concatenate([groups[i] for i in rng.permutation(len(groups))])
        for start in range(0, len(flat), self.batch_size):
            yield flat[start : start + self.batch_size].tolist()
        self.epoch += 1

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.seed, self.epoch = state["seed"], state["epoch"]


# ---------------------------------------------------------------- metriclearn.metrics
def retrieval_metrics(query, query_labels, reference=None, reference_labels=None, metric="l2", k=5):
    q = np.asarray(query, dtype=np.float64)
    same = reference is None
    r = q if same else np.asarray(reference, dtype=np.float64)
    ql = np.asarray(query_labels)
    rl = ql if same else np.asarray(reference_labels)
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    if same:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    hits = rl[order] == ql[:, None]
    knn = [np.bincount(rl[order[i, :k]]).argmax() == ql[i] for i in range(len(q))]
    p1, rp, mapr = [], [], []
    for i in range(len(q)):
        R = int((rl == ql[i]).sum()) - (1 if same else 0)
        if R == 0:
            continue
        h = hits[i, :R]
        p1.append(hits[i, 0])
        rp.append(h.mean())
        mapr.append((np.cumsum(h) / np.arange(1, R + 1) * h).sum() / R)
    return {"precision_at_1": float(np.mean(p1)), "r_precision": float(np.mean(rp)),
            "map_at_r": float(np.mean(mapr)), "knn_accuracy": float(np.mean(knn))}


def separation_metrics(x, labels):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score, silhouette_score

    pred = KMeans(len(np.unique(labels)), n_init=2, random_state=0).fit_predict(x)
    return {"silhouette": float(silhouette_score(x, labels)), "nmi": float(normalized_mutual_info_score(labels, pred)),
            "ami": float(adjusted_mutual_info_score(labels, pred))}


# ---------------------------------------------------------------- metriclearn.encoders
class Standardize(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, X):
        X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        self.mean.copy_(X.mean(0))
        self.std.copy_(X.std(0).clamp(min=1e-6))
        return self

    def forward(self, x):
        return (x - self.mean) / self.std


class MLP(nn.Module):
    def __init__(self, in_features, hidden=(256,), out_features=64, normalize=True):
        super().__init__()
        self.standardize = Standardize(in_features)
        layers, d = [], in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU()]
            d = h
        self.net = nn.Sequential(*layers, nn.Linear(d, out_features))
        self.normalize = normalize

    def forward(self, x):
        z = self.net(self.standardize(x.flatten(1)))
        return F.normalize(z, dim=1) if self.normalize else z


def build_encoder(spec, input_shape, embedding_dim=64, normalize=True):
    name, _, arg = spec.partition(":")
    if name != "mlp":
        raise ValueError(f"unknown encoder {spec!r}")
    hidden = tuple(int(h) for h in arg.split(",")) if arg else (256,)
    return MLP(int(np.prod(input_shape)), hidden, embedding_dim, normalize)


# ---------------------------------------------------------------- metriclearn.losses
def _nca(sim_logits, labels, exclude_self=True):
    B = sim_logits.shape[0]
    eye = torch.eye(B, dtype=torch.bool)
    logits = sim_logits.masked_fill(eye, float("-inf")) if exclude_self else sim_logits
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = logits.log_softmax(1)
    has = pos.any(1)
    loss = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), 1)
    return loss[has].mean() if has.any() else sim_logits.sum() * 0


class NeighborhoodSoftmaxLoss(nn.Module):
    def __init__(self, temperature=1.0, distance="sqeuclidean"):
        super().__init__()
        self.temperature, self.distance = temperature, distance

    def forward(self, e, y):
        d = torch.cdist(e, e).pow(2) if self.distance == "sqeuclidean" else 1 - F.normalize(e, dim=1) @ F.normalize(e, dim=1).T
        return _nca(-d / self.temperature, y)


class SoftNearestNeighborLoss(NeighborhoodSoftmaxLoss):
    pass


class PrototypeLoss(nn.Module):
    def __init__(self, num_classes, dim, mode="learned", momentum=0.9, repulsion=0.0, temperature=1.0):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(num_classes, dim))
        self.temperature = temperature

    def init_centroids(self, e, y):
        with torch.no_grad():
            for c in y.unique():
                self.centroids[c] = e[y == c].mean(0)

    def forward(self, e, y):
        return F.cross_entropy(-torch.cdist(e, self.centroids).pow(2) / self.temperature, y)


class CacheLoss(nn.Module):
    def __init__(self, dim, size=4096, temperature=0.1, warmup_steps=0):
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.temperature = temperature

    def forward(self, e, y):
        valid = self.bank_labels >= 0
        allx = torch.cat([e, self.bank[valid]])
        ally = torch.cat([y, self.bank_labels[valid]])
        logits = -torch.cdist(e, allx).pow(2) / self.temperature  # (B, B+C)
        B = len(y)
        logits[:, :B] = logits[:, :B].masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
        pos = y[:, None] == ally[None, :]
        pos[:, :B] &= ~torch.eye(B, dtype=torch.bool)
        logp = logits.log_softmax(1)
        loss = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), 1)
        with torch.no_grad():
            n = len(y)
            idx = (self.ptr + torch.arange(n)) % len(self.bank)
            self.bank[idx] = e.detach()
            self.bank_labels[idx] = y
            self.ptr.copy_((self.ptr + n) % len(self.bank))
        return loss[pos.any(1)].mean()


class ComplementEntropyLoss(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits, y):
        p = logits.softmax(1)
        pg = p.gather(1, y[:, None])
        q = (p / (1 - pg + 1e-7)).scatter(1, y[:, None], 0.0)
        return (q * torch.log(q + 1e-10)).sum(1).mean() / (self.num_classes - 1)


def install() -> list[str]:
    """Put each stand-in where the real module/attribute is missing; return what was installed."""
    installed: list[str] = []
    this = sys.modules[__name__]
    for modname, names in {
        "data": ["LabeledData", "load_data", "encode_labels", "train_val_split", "ClassBalancedSampler"],
        "metrics": ["retrieval_metrics", "separation_metrics"],
        "encoders": ["Standardize", "MLP", "build_encoder"],
        "losses": ["NeighborhoodSoftmaxLoss", "SoftNearestNeighborLoss", "PrototypeLoss", "CacheLoss",
                   "ComplementEntropyLoss"],
    }.items():
        full = f"metriclearn.{modname}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError:
            module = types.ModuleType(full)
            sys.modules[full] = module
            setattr(importlib.import_module("metriclearn"), modname, module)
        for name in names:
            if not hasattr(module, name):
                setattr(module, name, getattr(this, name))
                installed.append(f"{full}.{name}")
    return installed
