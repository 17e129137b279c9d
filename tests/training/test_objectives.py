"""Objectives: weighted sums, alternating steps, PCGrad (against a hand-computed example), building by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from metriclearn.training import Objective, Trainer, build_objective, expected_initial_loss, pcgrad
from metriclearn.training.objectives import LOSS_NAMES, LOSSES, HeadLoss, build_loss, lambda_loss, pcgrad_projections


def test_pcgrad_hand_computed_two_tasks() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1·g2 = -1 < 0: g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); sum = (0.5, 1.5)
    projected = pcgrad_projections([g1, g2])
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    # each projected gradient no longer conflicts with the other task's original gradient
    assert torch.dot(projected[0], g2) == 0 and torch.dot(projected[1], g1) == 0
    assert torch.allclose(pcgrad([g1, g2]), projected.sum(0))


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    grads = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, 0.0, 1.0])]
    assert torch.equal(pcgrad(grads), grads[0] + grads[1])


def _pcgrad_reference(grads: list[np.ndarray], orders: list[list[int]]) -> np.ndarray:
    """Algorithm 1 of Yu et al. (2020) in numpy, visiting the other tasks in the given orders."""
    out = [g.copy() for g in grads]
    for i, order in enumerate(orders):
        for j in order:
            if j != i and out[i] @ grads[j] < 0:
                out[i] = out[i] - (out[i] @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
    return np.sum(out, axis=0)


def test_pcgrad_three_tasks_follow_the_seeded_random_order() -> None:
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.2]), torch.tensor([0.3, -1.0])]
    results = set()
    for seed in range(6):
        out = pcgrad(grads, generator=torch.Generator().manual_seed(seed))
        replay = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(3, generator=replay).tolist() for _ in range(3)]
        np.testing.assert_allclose(out.numpy(), _pcgrad_reference([g.numpy() for g in grads], orders), rtol=1e-6)
        results.add(tuple(np.round(out.numpy(), 5)))
    assert len(results) > 1  # with three conflicting tasks the visiting order matters
    with pytest.raises(ValueError, match="at least one gradient"):
        pcgrad([])


def test_objective_backward_pcgrad_sets_projected_gradients() -> None:
    w = nn.Parameter(torch.zeros(2))
    # L1 = w·(1,0) and L2 = w·(-1,1) have the gradients of the hand example
    obj = Objective({"a": lambda_loss(lambda e, y: e[0] @ torch.tensor([1.0, 0.0])),
                     "b": lambda_loss(lambda e, y: e[0] @ torch.tensor([-1.0, 1.0]))}, combine="pcgrad")
    losses = obj.term_losses(w[None], torch.tensor([0]))
    obj.backward(losses, [w])
    assert torch.allclose(w.grad, torch.tensor([0.5, 1.5]))
    w.grad = None
    Objective(dict(obj.terms), combine="sum").backward(losses, [w])
    assert torch.allclose(w.grad, torch.tensor([0.0, 1.0]))


def test_weighted_sum_and_validation() -> None:
    obj = Objective({"a": lambda_loss(lambda e, y: e.sum()), "b": lambda_loss(lambda e, y: 2 * e.sum())},
                    weights={"a": 2.0, "b": 0.25})
    assert obj(torch.ones(1, 1), torch.tensor([0])).item() == pytest.approx(2.5)
    assert obj.groups() == [["a", "b"]]
    with pytest.raises(ValueError, match="unknown terms"):
        Objective({"a": lambda_loss(lambda e, y: e.sum())}, weights={"z": 1.0})
    with pytest.raises(ValueError, match="combine must be one of"):
        Objective({"a": lambda_loss(lambda e, y: e.sum())}, combine="max")
    with pytest.raises(ValueError, match="at least one loss term"):
        Objective({})


def test_alternate_takes_one_optimizer_step_per_term() -> None:
    X = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    y = np.repeat(np.arange(4), 8)
    obj = build_objective([("softmax", 1.0), ("complement", 1.0)], 3, 4, combine="alternate")
    assert obj.groups() == [["softmax"], ["complement"]]
    assert obj.terms["softmax"].head is obj.terms["complement"].head  # one shared head
    model = nn.Linear(5, 3)
    trainer = Trainer(model, obj, batch_size=16, samples_per_class=4, device="cpu", verbose=False, scheduler="none")
    steps = []
    trainer.optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    trainer.fit((X, y), epochs=1)
    assert len(steps) == 2 * len(trainer.sampler)
    assert {"softmax", "complement"} <= set(trainer.history[0])


def test_build_objective_by_name_and_options() -> None:
    obj = build_objective([("neighborhood", 1.0), ("cache", 0.5)], 8, 3,
                          loss_options={"neighborhood": {"temperature": 0.1}, "cache": {"size": 32}})
    assert obj.names == ["neighborhood", "cache"] and obj.weights == {"neighborhood": 1.0, "cache": 0.5}
    assert obj.terms["neighborhood"].temperature == 0.1
    with pytest.raises(ValueError, match=r"loss_options.neighborhood: unknown option\(s\) \['temprature'\]"):
        build_objective([("neighborhood", 1.0)], 8, 3, loss_options={"neighborhood": {"temprature": 0.1}})
    with pytest.raises(ValueError, match="set by the trainer"):
        build_loss("cache", 8, 3, {"dim": 4})
    with pytest.raises(ValueError, match="given more than once"):
        build_objective([("snn", 1.0), ("snn", 2.0)], 8, 3)
    with pytest.raises(ValueError, match="needs at least two losses"):
        build_objective([("snn", 1.0)], 8, 3, combine="alternate")
    head = build_loss("softmax", 8, 3)
    assert isinstance(head, HeadLoss) and head.head.out_features == 3


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_named_loss_starts_at_its_chance_level_and_trains(name: str) -> None:
    """An untrained objective sees identical embeddings and zero parameters: every softmax is uniform."""
    obj = build_objective([(name, 1.0)], 4, 3)
    with torch.no_grad():
        for p in obj.parameters():
            p.zero_()
    e = torch.ones(12, 4, requires_grad=True)
    y = torch.arange(3).repeat(4)
    loss = obj(e, y)
    expected = expected_initial_loss(name, 12, 4, 3)
    if expected is None:  # complement: uniform wrong classes give the maximal entropy log(K - 1), loss -H/K;
        # uniformity: identical points are its maximum, log 1
        expected = {"complement": -math.log(2) / 3, "uniformity": 0.0}[name]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    moved = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    build_objective([(name, 1.0)], 4, 3)(moved, y).backward()  # a fresh objective's gradient reaches the embeddings
    assert moved.grad is not None and moved.grad.abs().sum() > 0


class _ScaledPull(nn.Module):
    """A loss for a registry row added by the test: ``scale · mean ‖e‖²`` (its ``dim`` is filled from the data)."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert embeddings.shape[1] == self.dim
        return self.scale * embeddings.pow(2).sum(dim=1).mean()


def test_registry_rows_drive_building_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row added to LOSSES is built by name with its required arguments, tuned options and head: the loss
    values show it, not the attributes the row itself set."""
    from metriclearn.training.config import TrainConfig
    from metriclearn.training.objectives import LossSpec

    monkeypatch.setitem(LOSSES, "pull", LossSpec(_ScaledPull, required=("dim",), tuned={"scale": 3.0}))
    monkeypatch.setitem(LOSSES, "smooth", LossSpec(nn.CrossEntropyLoss, tuned={"label_smoothing": 0.2}, head=True))
    e = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])  # uneven classes
    mean_sq = e.pow(2).sum(dim=1).mean()
    assert build_loss("pull", 4, 3)(e, y).item() == pytest.approx(3.0 * mean_sq.item(), rel=1e-6)  # tuned
    assert build_loss("pull", 4, 3, {"scale": 0.5})(e, y).item() == pytest.approx(0.5 * mean_sq.item(), rel=1e-6)
    objective = build_objective([("pull", 2.0), ("smooth", 1.0)], 4, 3)
    head = objective.terms["smooth"].head
    smoothed = nn.functional.cross_entropy(head(e), y, label_smoothing=0.2)
    assert smoothed.item() != pytest.approx(nn.functional.cross_entropy(head(e), y).item(), rel=1e-3)
    assert objective(e, y).item() == pytest.approx(6.0 * mean_sq.item() + smoothed.item(), rel=1e-5)
    with pytest.raises(ValueError, match="set by the trainer"):
        build_loss("pull", 4, 3, {"dim": 2})
    assert TrainConfig(loss=["pull:2", "smooth"]).terms() == [("pull", 2.0), ("smooth", 1.0)]  # the config too
    monkeypatch.delitem(LOSSES, "pull")
    with pytest.raises(ValueError, match=r"loss name must be one of .*'smooth'; got 'pull'"):
        build_loss("pull", 4, 3)
    # the built-in rows' tuned options are in effect: the default neighbourhood loss is not the class default
    from metriclearn.losses import NeighborhoodSoftmaxLoss

    tuned, default = build_loss("neighborhood", 4, 3)(e, y).item(), NeighborhoodSoftmaxLoss()(e, y).item()
    assert tuned == pytest.approx(NeighborhoodSoftmaxLoss(temperature=0.15, distance="cosine")(e, y).item(), rel=1e-6)
    assert tuned != pytest.approx(default, rel=1e-3)


def test_expected_initial_loss_matches_uniform_softmax() -> None:
    # all distances equal: p_i = (M-1)/(B-1) exactly, so the NCA-type loss is log((B-1)/(M-1))
    e = torch.zeros(12, 4)
    y = torch.arange(3).repeat(4)
    obj = build_objective([("neighborhood", 1.0)], 4, 3)
    assert obj(e, y).item() == pytest.approx(expected_initial_loss("neighborhood", 12, 4, 3), rel=1e-5)
    assert expected_initial_loss("softmax", 12, 4, 3) == pytest.approx(math.log(3))
    assert expected_initial_loss("complement", 12, 4, 3) is None


def test_trainer_passes_sample_ids_to_the_cache_loss() -> None:
    """CacheLoss receives dataset indices, so a sample never meets its own stale copy in the cache."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 12)
    objective = build_objective([("neighborhood", 1.0), ("cache", 0.5)], 4, 4, loss_options={"cache": {"size": 256}})
    trainer = Trainer(nn.Linear(6, 4), objective, batch_size=16, samples_per_class=4, device="cpu", verbose=False)
    trainer.fit((X, y), epochs=2)
    cache = objective.terms["cache"]
    stored = cache.cache_ids[: int(cache.filled)]
    assert int(cache.filled) == 96  # two epochs of 48 samples
    assert sorted(stored.tolist()) == sorted(list(range(48)) * 2)  # the ids are the dataset indices
    # the ids reach the loss: with them, the loss differs from one that may match stale copies
    emb = torch.from_numpy(X[:16]) @ torch.eye(6, 4)
    labels = torch.as_tensor(y[:16])
    cache.eval()
    with_ids = objective.term_losses(emb, labels, ["cache"], ids=torch.arange(16))["cache"]
    without = objective.term_losses(emb, labels, ["cache"])["cache"]
    assert not torch.allclose(with_ids, without)


def test_adding_a_loss_is_one_file_and_one_row_as_docs_losses_md_shows(tmp_path, monkeypatch) -> None:
    """Run the docs' MarginLoss example, add its one row, and train with it from the CLI."""
    import json
    import re
    from pathlib import Path

    from click.testing import CliRunner

    from metriclearn.cli import cli
    from metriclearn.training.objectives import LossSpec

    doc = (Path(__file__).resolve().parents[2] / "docs" / "losses.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:python|text)\n(.*?)```", doc, flags=re.S)  # the row is a ```text block
    namespace: dict = {}
    exec(next(b for b in blocks if "class MarginLoss" in b), namespace)  # the "one file"
    row = next(b for b in blocks if '"margin": LossSpec(' in b)
    spec = eval(row.split(":", 1)[1].strip().rstrip(","), {"LossSpec": LossSpec,  # the "one row"
                                                             "losses": type("m", (), namespace)})
    monkeypatch.setitem(LOSSES, "margin", spec)
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["train", "--loss", "margin", "--epochs", "1", "--encoder", "mlp:16",
                                      "--embedding-dim", "8", "--device", "cpu", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert 'margin = 0.3' in (out / "config.toml").read_text()  # the tuned option, resolved in the config
    assert json.loads((out / "metrics.json").read_text())["retrieval"]["precision_at_1"] > 0.5
    assert build_loss("margin", 8, 3).margin == 0.3


def test_the_help_lists_the_shipped_loss_names() -> None:
    """``train --help`` reads the loss names from metriclearn._choices (no torch): the shipped registry's keys."""
    from metriclearn._choices import BUILTIN_LOSSES

    assert BUILTIN_LOSSES == LOSS_NAMES == tuple(LOSSES)
