"""PrototypeLoss (learned / ema / batch) against per-sample loop references, gradcheck and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from metriclearn.losses import PrototypeLoss

from ._neighborhood_reference import logsumexp

F64 = torch.float64


def sqdist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def naive_centroid_ce(x, y, centroids: dict[int, torch.Tensor], temperature: float) -> list[float]:
    """Cross-entropy of each anchor over −distance/T to the given {class: centroid} (loop)."""
    values = []
    for i in range(len(x)):
        logits = {k: -sqdist(x[i], c) / temperature for k, c in centroids.items()}
        values.append(logsumexp(list(logits.values())) - logits[int(y[i])])
    return values


def naive_batch(x, y, temperature: float, leave_one_out: bool) -> tuple[list[float], list[bool]]:
    """Prototypical Networks, recomputing every anchor's prototypes from scratch."""
    values, counted = [], []
    for i in range(len(x)):
        protos = {}
        for k in sorted(set(y.tolist())):
            members = [j for j in range(len(x)) if y[j] == k and not (leave_one_out and j == i)]
            if members:
                protos[k] = x[members].mean(dim=0)
        if int(y[i]) not in protos:
            values.append(0.0)
            counted.append(False)
            continue
        values.append(naive_centroid_ce(x[i : i + 1], y[i : i + 1], protos, temperature)[0])
        counted.append(True)
    return values, counted


def naive_ema_step(state: dict, x, y, momentum: float, repulsion: float, temperature: float) -> list[float]:
    """One training step of the EMA mode on a {class: centroid} dict, following the documented formula."""
    means = {k: x[y == k].mean(dim=0) for k in sorted(set(y.tolist()))}
    for k, m in means.items():
        state.setdefault(k, m.clone())
    values = naive_centroid_ce(x, y, dict(state), temperature)
    moved = {k: (momentum * c + (1 - momentum) * means[k]) if k in means else c for k, c in state.items()}
    new = dict(moved)
    for k in means:
        others = [l for l in moved if l != k]
        if repulsion > 0 and others:
            lse = logsumexp([-sqdist(moved[k], moved[l]) / temperature for l in others])
            avg = sum(math.exp(-sqdist(moved[k], moved[l]) / temperature - lse) * moved[l] for l in others)
            new[k] = moved[k] + repulsion * (moved[k] - avg)
    state.clear()
    state.update(new)
    return values


def test_learned_matches_naive_loop() -> None:
    loss = PrototypeLoss(5, 3, temperature=0.7, reduction="none").double()
    x, y = torch.randn(11, 3, dtype=F64), torch.randint(0, 5, (11,))
    expected = naive_centroid_ce(x, y, dict(enumerate(loss.centroids.detach())), 0.7)
    torch.testing.assert_close(loss(x, y), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    loss.reduction = "mean"
    assert loss(x, y).item() == pytest.approx(sum(expected) / 11, rel=1e-12)


def test_learned_gradcheck_through_embeddings_and_centroids() -> None:
    loss = PrototypeLoss(4, 3, temperature=0.5).double()
    x = torch.randn(7, 3, dtype=F64, requires_grad=True)
    c = loss.centroids.detach().clone().requires_grad_(True)
    y = torch.tensor([0, 1, 1, 2, 3, 3, 0])
    assert gradcheck(lambda e, cen: functional_call(loss, {"centroids": cen}, (e, y)), (x, c))


def test_learned_centroids_train_and_resume_from_state_dict() -> None:
    loss = PrototypeLoss(3, 2)
    assert [n for n, _ in loss.named_parameters()] == ["centroids"]
    x, y = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    loss(x, y).backward()
    assert loss.centroids.grad.abs().sum() > 0
    other = PrototypeLoss(3, 2)
    other.load_state_dict(loss.state_dict())
    assert torch.equal(other(x, y), loss(x, y))


def test_init_centroids_uses_class_means() -> None:
    loss = PrototypeLoss(3, 2)
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 1.0], [1.0, 1.0]])
    before = loss.centroids.detach().clone()
    with pytest.warns(UserWarning, match=r"no samples of classes \[2\]"):
        present = loss.init_centroids(x, torch.tensor([0, 0, 1, 0]))
    assert present.tolist() == [True, True, False]
    torch.testing.assert_close(loss.centroids.detach()[:2], torch.tensor([[1.0, 1.0], [5.0, 1.0]]))
    assert torch.equal(loss.centroids.detach()[2], before[2])
    assert loss.centroids.requires_grad and loss.centroids.grad is None
    ema = PrototypeLoss(2, 2, mode="ema")
    ema.init_centroids(x, torch.tensor([0, 1, 1, 0]))
    assert ema.initialized.tolist() == [True, True]
    torch.testing.assert_close(ema.centroids, torch.tensor([[0.5, 0.5], [3.5, 1.5]]))


def test_init_centroids_is_validated() -> None:
    with pytest.raises(ValueError, match="init_centroids needs stored centroids; mode='batch'"):
        PrototypeLoss(2, 2, mode="batch").init_centroids(torch.zeros(2, 2), torch.tensor([0, 1]))
    loss = PrototypeLoss(2, 2)
    with pytest.raises(ValueError, match="contain NaN or inf values in 1 of 2 rows"):
        loss.init_centroids(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="embeddings have dimension 3 but PrototypeLoss was built with dim=2"):
        loss.init_centroids(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be < num_classes=2, got 2"):
        loss.init_centroids(torch.zeros(2, 2), torch.tensor([0, 2]))


@pytest.mark.parametrize("repulsion", [0.0, 0.2])
def test_ema_matches_the_documented_update(repulsion: float) -> None:
    loss = PrototypeLoss(6, 3, mode="ema", momentum=0.6, repulsion=repulsion, temperature=2.0, reduction="none").double()
    state: dict[int, torch.Tensor] = {}
    steps = [torch.tensor([0, 0, 1, 1, 2]), torch.tensor([1, 2, 2, 3, 3]), torch.tensor([0, 4, 4, 1, 1])]
    for y in steps:
        x = torch.randn(len(y), 3, dtype=F64, requires_grad=True)
        untouched = loss.centroids.clone()
        value = loss(x, y)
        value.sum().backward()  # works although the buffers were updated in place after the forward
        torch.testing.assert_close(value, torch.tensor(naive_ema_step(state, x.detach(), y, 0.6, repulsion, 2.0), dtype=F64))
        expected = torch.stack([state.get(k, torch.zeros(3, dtype=F64)) for k in range(6)])
        torch.testing.assert_close(loss.centroids, expected, rtol=1e-12, atol=1e-12)
        absent = [k for k in range(6) if k not in y.tolist()]
        assert torch.equal(loss.centroids[absent], untouched[absent])  # absent classes do not move
        assert loss.initialized.tolist() == [k in state for k in range(6)]
    assert not loss.centroids.requires_grad


def test_ema_eval_mode_freezes_and_skips_unseen_classes() -> None:
    loss = PrototypeLoss(4, 2, mode="ema")
    loss.eval()
    x = torch.randn(3, 2, requires_grad=True)
    nothing = loss(x, torch.tensor([0, 1, 2]))  # no class has a centroid yet
    assert nothing.item() == 0.0
    nothing.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    loss.train()
    loss(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]))
    loss.eval()
    frozen = loss.centroids.clone()
    per_anchor = PrototypeLoss(4, 2, mode="ema", reduction="none")
    per_anchor.load_state_dict(loss.state_dict())
    values = per_anchor.eval()(x.detach(), torch.tensor([0, 1, 3]))
    assert values[2].item() == 0.0  # class 3 was never seen: not counted
    expected = naive_centroid_ce(x.detach()[:2], torch.tensor([0, 1]), {0: frozen[0], 1: frozen[1]}, 1.0)
    torch.testing.assert_close(values[:2], torch.tensor(expected))
    assert torch.equal(loss.centroids, frozen) and torch.equal(per_anchor.centroids, frozen)


def test_ema_resume_is_exact() -> None:
    batches = [(torch.randn(6, 3), torch.randint(0, 4, (6,))) for _ in range(4)]
    full = PrototypeLoss(4, 3, mode="ema", repulsion=0.1)
    values = [full(x, y) for x, y in batches]
    first = PrototypeLoss(4, 3, mode="ema", repulsion=0.1)
    for x, y in batches[:2]:
        first(x, y)
    resumed = PrototypeLoss(4, 3, mode="ema", repulsion=0.1)
    resumed.load_state_dict(first.state_dict())
    assert set(resumed.state_dict()) == {"centroids", "initialized"}
    assert [resumed(x, y) for x, y in batches[2:]] == values[2:]
    assert torch.equal(resumed.centroids, full.centroids)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_batch_mode_matches_naive_loop(leave_one_out: bool) -> None:
    x = torch.randn(10, 4, dtype=F64)
    y = torch.tensor([7, 7, 7, 2, 2, 5, 9, 9, 9, 9])  # class 5 is a singleton; classes 0, 1, 3, ... absent
    loss = PrototypeLoss(10, 4, mode="batch", temperature=1.5, leave_one_out=leave_one_out, reduction="none")
    values, counted = naive_batch(x, y, 1.5, leave_one_out)
    torch.testing.assert_close(loss(x, y), torch.tensor(values, dtype=F64), rtol=1e-10, atol=1e-12)
    assert counted[5] is (not leave_one_out)
    loss.reduction = "mean"
    assert loss(x, y).item() == pytest.approx(sum(values) / sum(counted), rel=1e-10)
    assert list(loss.parameters()) == [] and list(loss.buffers()) == []


def test_batch_mode_gradcheck() -> None:
    x = torch.randn(8, 3, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    loss = PrototypeLoss(4, 3, mode="batch", temperature=0.8)
    assert gradcheck(lambda e: loss(e, y), (x,))


@pytest.mark.parametrize("mode", ["learned", "ema", "batch"])
def test_single_sample_and_single_class(mode: str) -> None:
    one = torch.randn(1, 3, requires_grad=True)
    value = PrototypeLoss(3, 3, mode=mode)(one, torch.tensor([1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(one.grad).all()
    if mode != "learned":  # only one prototype exists: nothing to tell apart
        assert value.item() == 0.0
    same = torch.randn(5, 3, requires_grad=True)
    value = PrototypeLoss(3, 3, mode=mode)(same, torch.full((5,), 2))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(same.grad).all()
    if mode != "learned":
        assert value.item() == 0.0 and value.requires_grad


def test_duplicates_in_batch_mode() -> None:
    base = torch.randn(2, 3, dtype=F64)
    x = torch.cat([base, base]).requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1])
    value = PrototypeLoss(2, 3, mode="batch")(x, y)
    values, _ = naive_batch(x.detach(), y, 1.0, True)
    assert value.item() == pytest.approx(sum(values) / 4, rel=1e-12)
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_extreme_temperatures() -> None:
    loss = PrototypeLoss(4, 3, temperature=1e-6, reduction="none").double()
    x, y = torch.randn(6, 3, dtype=F64, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1])
    tiny = loss(x, y)
    expected = naive_centroid_ce(x.detach(), y, dict(enumerate(loss.centroids.detach())), 1e-6)
    torch.testing.assert_close(tiny, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-6)
    tiny.sum().backward()
    assert torch.isfinite(x.grad).all()
    huge = PrototypeLoss(4, 3, temperature=1e9)(torch.randn(6, 3), y)
    assert huge.item() == pytest.approx(math.log(4), rel=1e-6)  # all centroids equally far


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["learned", "ema", "batch"])
def test_half_precision_input(dtype: torch.dtype, mode: str) -> None:
    x = torch.randn(8, 4).to(dtype).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = PrototypeLoss(4, 4, mode=mode)
    reference = PrototypeLoss(4, 4, mode=mode)
    reference.load_state_dict(loss.state_dict())
    value = loss(x, y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference(x.detach().float(), y))
    value.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    if mode == "ema":
        assert loss.centroids.dtype == torch.float32


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="mode must be one of 'learned', 'ema', 'batch'; got 'proto'"):
        PrototypeLoss(3, 2, mode="proto")
    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        PrototypeLoss(1, 2)
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        PrototypeLoss(3, 0)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.5"):
        PrototypeLoss(3, 2, mode="ema", momentum=1.5)
    with pytest.raises(ValueError, match="repulsion applies only to mode='ema', got repulsion=0.5 with mode='learned'"):
        PrototypeLoss(3, 2, repulsion=0.5)
    with pytest.raises(ValueError, match="temperature must be a finite positive number, got -1.0"):
        PrototypeLoss(3, 2, temperature=-1.0)
    loss = PrototypeLoss(3, 2)
    with pytest.raises(ValueError, match="labels must be < num_classes=3, got 3"):
        loss(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="embeddings have dimension 5 but PrototypeLoss was built with dim=2"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="embeddings are on cpu but the centroids are on meta; move the loss"):
        PrototypeLoss(3, 2).to("meta")(torch.zeros(2, 2), torch.tensor([0, 1]))
