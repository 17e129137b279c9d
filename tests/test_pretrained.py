"""FeatureExtractor and SecondOpinion on plain nn.Modules and TorchScript (the Hugging Face path: test_pretrained_hf)."""

from __future__ import annotations

import io
import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_f32_close
from sklearn.datasets import load_digits
from torch import nn

from metriclearn.classify import CacheClassifier
from metriclearn.indexes import EmbeddingIndex
from metriclearn.pretrained import FeatureExtractor, SecondOpinion, candidate_layers


def mlp(classes: int = 3, width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, classes))


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_hooks_with_kwargs) for m in model.modules())


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, nn.Module]:
    """Uneven digits (class k keeps 60 + 8k images) and a softmax MLP trained briefly on the first 40 %."""
    X, y = load_digits(return_X_y=True)
    keep = np.concatenate([np.flatnonzero(y == k)[: 60 + 8 * k] for k in range(10)])
    keep = np.random.default_rng(0).permutation(keep)
    X, y = (X[keep] / 16.0).astype(np.float32), y[keep]
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()),
                                      head=nn.Linear(32, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = int(0.4 * len(y))
    for _ in range(3):
        for batch in torch.randperm(n).split(64):
            opt.zero_grad()
            F.cross_entropy(model(torch.from_numpy(X[batch])), torch.from_numpy(y[batch])).backward()
            opt.step()
    return X, y, model.eval()


# ---------------------------------------------------------------------------------------------- extractor
def test_extract_gives_the_penultimate_features_and_softmax_in_batches_that_do_not_divide(rng) -> None:
    model = mlp()
    x = rng.normal(size=(10, 4)).astype(np.float32)
    features, probs = FeatureExtractor(model, batch_size=4).extract(x)
    with torch.no_grad():
        hidden = torch.relu(model[0](torch.from_numpy(x)))
        expected_p = torch.softmax(model[3](hidden), 1)
    assert_f32_close(features, F.normalize(hidden, dim=1).numpy())
    assert_f32_close(probs, expected_p.numpy())
    assert features.dtype == np.float32 and probs.dtype == np.float32


def test_several_layers_are_normalised_each_and_concatenated(rng) -> None:
    model = mlp()
    x = rng.normal(size=(6, 4))
    features, _ = FeatureExtractor(model, layers=["0", "3:input"]).extract(x)
    assert features.shape == (6, 16)
    assert_f32_close(np.linalg.norm(features[:, :8], axis=1), np.ones(len(features)))
    assert_f32_close(np.linalg.norm(features[:, 8:], axis=1), np.ones(len(features)))


def test_eval_mode_during_extraction_and_every_module_mode_restored(rng) -> None:
    model = mlp().train()
    model[0].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    x = rng.normal(size=(32, 4))
    a, _ = FeatureExtractor(model, layers="3").extract(x)
    b, _ = FeatureExtractor(model, layers="3").extract(x)
    np.testing.assert_array_equal(a, b)  # dropout was off
    assert [m.training for m in model.modules()] == before
    assert hooks_left(model) == 0


def test_hooks_removed_and_mode_restored_after_an_error(rng) -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)[:, 0]  # (n,) instead of (n, K)

    model = Bad().train()
    with pytest.raises(ValueError, match=r"must return \(n, K\) class logits.*batch of 5 it returned Tensor of shape \(5,\)"):
        FeatureExtractor(model).extract(rng.normal(size=(5, 4)))
    assert hooks_left(model) == 0 and model.training


def test_unknown_layer_lists_the_layers_or_the_closest_ones() -> None:
    with pytest.raises(ValueError, match=r"layer 'fc' is not a module of Sequential; its layers are 0, 1, 2, 3"):
        FeatureExtractor(mlp(), layers="fc")
    big = nn.Sequential(OrderedDict(blocks=nn.ModuleList(nn.Linear(4, 4) for _ in range(60)), head=nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"closest of its 62 layers: blocks\.17"):
        FeatureExtractor(big, layers="blocks.17x")


def test_other_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        FeatureExtractor("model")
    with pytest.raises(ValueError, match="has none; name the layers"):
        FeatureExtractor(nn.Sequential(nn.Conv1d(1, 2, 1), nn.Flatten()))
    batches = [{"input": torch.ones(4, 2), "attention_mask": torch.ones(3, 2)}]
    with pytest.raises(ValueError, match=r"mismatched batch sizes in one batch: \{'input': 4, 'attention_mask': 3\}"):
        FeatureExtractor(mlp(width=2)).extract(batches)
    with pytest.raises(ValueError, match="non-empty"):
        FeatureExtractor(mlp()).extract(np.zeros((0, 4)))
    with pytest.raises(TypeError, match="iterable of batches"):
        FeatureExtractor(mlp()).extract(3)


class ToyTokens(nn.Module):
    """input_ids (n, T) + attention_mask -> token states (n, T, H) -> first-token logits, like a transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.blocks = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
        self.classifier = nn.Linear(6, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = torch.tanh(block(h))
        return {"logits": self.classifier(h[:, 0])}


def test_token_outputs_are_mean_pooled_with_the_batch_attention_mask() -> None:
    model = ToyTokens()
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    features, _ = FeatureExtractor(model, layers="blocks.2").extract([{"input_ids": ids, "attention_mask": mask}])
    with torch.no_grad():
        h = model.embed(ids)
        for block in model.blocks[:2]:
            h = torch.tanh(block(h))
        h = model.blocks[2](h)  # the module's own output (before the tanh that follows it)
    expected = torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)])  # padding positions left out
    assert_f32_close(features, F.normalize(expected, dim=1).numpy())
    assert candidate_layers(model) == ["classifier:input", "blocks.2", "blocks.1"]


def test_iterables_of_ready_batches_and_a_generator(rng) -> None:
    model = mlp()
    x = torch.from_numpy(rng.normal(size=(7, 4)).astype(np.float32))
    whole, p_whole = FeatureExtractor(model).extract(x)
    parts, p_parts = FeatureExtractor(model).extract(b for b in x.split(3))
    assert_f32_close(parts, whole)
    assert_f32_close(p_parts, p_whole)


def _scripted(model: nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13, but it is what users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer)
        return torch.jit.load(io.BytesIO(buffer.getvalue()))


def test_torchscript_model_gives_the_same_features_as_the_eager_one(rng) -> None:
    model = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(4, 8), nn.ReLU()), head=nn.Linear(8, 3))).eval()
    loaded = _scripted(model)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    eager = FeatureExtractor(model, batch_size=4).extract(x)
    script = FeatureExtractor(loaded, batch_size=4).extract(x)
    assert_f32_close(script[0], eager[0])
    assert_f32_close(script[1], eager[1])
    with pytest.raises(ValueError, match=r"'body\.0' of this TorchScript model is not called by its top-level "
                                         r"forward.*layers it calls: body, head"):
        FeatureExtractor(loaded, layers="body.0").extract(x)


# ---------------------------------------------------------------------------------------------- second opinion
def test_second_opinion_blends_as_the_formula_says_with_tuned_layer_theta_lambda(digits) -> None:
    X, y, model = digits
    cache, val, test = np.split(np.arange(len(y)), [int(0.4 * len(y)), int(0.6 * len(y))])
    opinion = SecondOpinion(model).fit(X[cache], y[cache]).tune(X[val], y[val])
    assert set(opinion.tuning_["layers"]) == {"head:input", "body.3", "body.2"}
    chosen = opinion.tuning_["chosen"]
    assert opinion.tuning_["layers"][chosen]["accuracy"] == max(v["accuracy"] for v in opinion.tuning_["layers"].values())
    assert opinion.layers_ == [chosen] and opinion.theta_ == opinion.tuning_["layers"][chosen]["theta"]
    # the formula, from the public pieces
    features, p_model = FeatureExtractor(model, layers=chosen).extract(X[test])
    keys, _ = FeatureExtractor(model, layers=chosen).extract(X[cache])
    p_cache = CacheClassifier(theta=opinion.theta_).fit(keys, y[cache]).predict_proba(features)
    expected = (1 - opinion.lam_) * p_model + opinion.lam_ * p_cache
    assert_f32_close(opinion.predict_proba(X[test]), expected, gain=opinion.theta_)  # softmax of θ·cos in float32
    blend_acc = np.mean(opinion.predict(X[test]).astype(int) == y[test])
    assert blend_acc >= np.mean(p_model.argmax(1) == y[test])  # the tuned blend does not hurt on held-out data


def test_labels_aligned_by_name_and_a_cache_missing_classes(rng) -> None:
    model = mlp(classes=3)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    names = ["cat", "dog", "eel"]
    y = np.array(["eel", "cat"] * 15)  # no "dog" in the cache, names in another order than the model's columns
    opinion = SecondOpinion(model, layers="0", theta=500.0, lam=1.0, classes=names).fit(X, y)
    proba = opinion.predict_proba(X)
    assert proba.shape == (30, 3) and np.all(proba[:, 1] == 0)  # "dog" column: the cache has none
    np.testing.assert_allclose(proba[:, 0] + proba[:, 2], 1)
    assert (opinion.predict(X[:4]) == ["eel", "cat", "eel", "cat"]).all()  # each finds itself first
    with pytest.raises(ValueError, match=r"cache label 'fox' is not one of the model's 3 classes \('cat', 'dog', 'eel'\)"):
        SecondOpinion(model, classes=names).fit(X[:2], ["cat", "fox"])
    with pytest.raises(ValueError, match="cache label 7 is not one of the model's 3 classes"):
        SecondOpinion(model).fit(X[:2], [0, 7])


def test_save_load_round_trip_and_refusal_of_another_model(digits, tmp_path) -> None:
    X, y, model = digits
    opinion = SecondOpinion(model).fit(X[:300], y[:300], metadata=[{"row": i} for i in range(300)])
    opinion.tune(X[300:450], y[300:450])
    opinion.save(tmp_path / "cache")
    again = SecondOpinion.load(tmp_path / "cache", model)
    assert (again.layers_, again.theta_, again.lam_) == (opinion.layers_, opinion.theta_, opinion.lam_)
    assert_f32_close(again.predict_proba(X[450:]), opinion.predict_proba(X[450:]), gain=opinion.theta_)
    index = EmbeddingIndex.load(tmp_path / "cache")  # an ordinary labelled index directory
    assert len(index) == 300 and index.attrs["tuning"]["theta"] == opinion.theta_
    changed = nn.Sequential(OrderedDict(body=model.body, head=nn.Linear(32, 10)))
    with pytest.raises(ValueError, match="was built with another model"):
        SecondOpinion.load(tmp_path / "cache", changed)
    plain = EmbeddingIndex(4, device="cpu")
    plain.add(np.eye(4), labels=[0, 1, 0, 1])
    plain.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a saved SecondOpinion"):
        SecondOpinion.load(tmp_path / "plain", model)


def test_audit_lists_exactly_the_changed_decisions_with_evidence(digits) -> None:
    X, y, model = digits
    opinion = SecondOpinion(model, layers="body.3", theta=30.0, lam=0.7)
    opinion.fit(X[:300], y[:300], metadata=[{"row": i} for i in range(300)])
    p_model, _, p_blend, _ = opinion.opinions(X[450:])
    rows = opinion.audit(X[450:], y[450:], neighbors=3)
    changed = np.flatnonzero(p_model.argmax(1) != p_blend.argmax(1))
    assert [r["row"] for r in rows] == changed.tolist() and len(rows) > 0
    for r in rows:
        truth = y[450 + r["row"]]
        assert r["true"] == truth and r["model"]["label"] != r["blend"]["label"]
        expected = "fixed" if r["blend"]["label"] == truth else "broke" if r["model"]["label"] == truth else "both wrong"
        assert r["outcome"] == expected
        sims = [n["similarity"] for n in r["neighbors"]]
        assert len(sims) == 3 and sims == sorted(sims, reverse=True)
        assert all(n["label"] == y[n["id"]] and n["metadata"] == {"row": n["id"]} for n in r["neighbors"])
    json.dumps(rows)  # JSON-able as written by the CLI
    unlabelled = opinion.audit(X[450:])
    assert [r["row"] for r in unlabelled] == changed.tolist() and all("true" not in r for r in unlabelled)


def test_tune_keeps_given_theta_and_lam(digits) -> None:
    X, y, model = digits
    opinion = SecondOpinion(model, layers="head:input", theta=20.0).fit(X[:300], y[:300]).tune(X[300:450], y[300:450])
    assert opinion.theta_ == 20.0 and opinion.layers_ == ["head:input"]
    assert list(opinion.tuning_["layers"]) == ["head:input"]
    with pytest.raises(ValueError, match="not fitted yet"):
        SecondOpinion(model).predict(X[:3])


def test_tune_needs_a_value_in_each_grid(digits) -> None:
    X, y, model = digits
    opinion = SecondOpinion(model, layers="head:input").fit(X[:200], y[:200])
    with pytest.raises(ValueError, match=r"thetas and lams need at least one value each, got thetas=\[\], lams="):
        opinion.tune(X[200:260], y[200:260], thetas=[])
