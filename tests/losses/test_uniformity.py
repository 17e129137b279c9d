"""UniformityLoss against a per-pair loop, finite differences, the paper's formula and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from metriclearn.losses import UniformityLoss


def naive_uniformity(x: torch.Tensor, t: float) -> float:
    """Wang & Isola's L_uniform, one ordered pair i != j at a time, in plain Python floats."""
    z = [[float(v) for v in row / row.norm()] for row in x]
    terms = [
        math.exp(-t * sum((a - b) ** 2 for a, b in zip(z[i], z[j])))
        for i in range(len(z))
        for j in range(len(z))
        if i != j
    ]
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("t", [0.5, 2.0, 7.0])
@pytest.mark.parametrize("b", [2, 3, 13])
def test_matches_naive_loop(t: float, b: int) -> None:
    x = torch.randn(b, 5, dtype=torch.float64) * torch.rand(b, 1, dtype=torch.float64) * 4  # uneven norms
    assert UniformityLoss(t)(x).item() == pytest.approx(naive_uniformity(x, t), rel=1e-12, abs=1e-12)


def test_matches_the_papers_pdist_code() -> None:
    """The authors' snippet: ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()`` on unit vectors."""
    x = torch.nn.functional.normalize(torch.randn(40, 8, dtype=torch.float64), dim=1)
    expected = torch.pdist(x, p=2).pow(2).mul(-2.0).exp().mean().log()
    torch.testing.assert_close(UniformityLoss(2.0)(x), expected, rtol=1e-12, atol=1e-12)


def test_gradcheck() -> None:
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    loss = UniformityLoss(1.5)
    assert gradcheck(lambda e: loss(e), (x,))


def autograd_uniformity(x: torch.Tensor, t: float) -> torch.Tensor:
    """The loss written with autograd's pieces (the reference for the hand-written backward)."""
    z = torch.nn.functional.normalize(x, dim=1)
    logits = (2.0 * t) * (z @ z.T) - 2.0 * t
    logits = logits.masked_fill(torch.eye(len(x), dtype=torch.bool), float("-inf"))
    return torch.logsumexp(logits.reshape(-1), dim=0) - math.log(len(x) * (len(x) - 1))


@pytest.mark.parametrize("t", [0.5, 2.0, 30.0])
def test_hand_written_backward_equals_autograd(t: float) -> None:
    x = torch.randn(129, 16, dtype=torch.float64) * torch.rand(129, 1, dtype=torch.float64) * 3  # uneven norms
    x[7] = 0.0  # a zero row: F.normalize's floor
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    value, expected = UniformityLoss(t)(mine), autograd_uniformity(ref, t)
    (3.0 * value).backward()
    (3.0 * expected).backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_gradient_spreads_points_apart() -> None:
    """One gradient step moves two nearby points apart (the angle between them grows)."""
    x = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    UniformityLoss()(x).backward()
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(x[0], x[1], dim=0)
        moved = x - 0.1 * x.grad
        after = torch.nn.functional.cosine_similarity(moved[0], moved[1], dim=0)
    assert after < before


def test_extremes_and_scale_invariance() -> None:
    same = torch.tensor([[2.0, 0.0, 0.0]]).repeat(6, 1)
    assert UniformityLoss(2.0)(same).item() == pytest.approx(0.0, abs=1e-6)
    antipodal = torch.tensor([[0.0, 3.0], [0.0, -0.5]])
    assert UniformityLoss(2.0)(antipodal).item() == pytest.approx(-8.0, abs=1e-6)
    x = torch.randn(10, 6, dtype=torch.float64)
    torch.testing.assert_close(UniformityLoss()(x), UniformityLoss()(x * 17.0))
    # spread-out points score lower than clustered ones
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.9, -0.1], [1.0, 0.05]])
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert UniformityLoss()(spread) < UniformityLoss()(clustered)


def test_labels_are_ignored_but_checked() -> None:
    x = torch.randn(6, 3)
    loss = UniformityLoss()
    torch.testing.assert_close(loss(x, torch.tensor([0, 0, 1, 1, 2, 2])), loss(x))
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\), got \(5,\)"):
        loss(x, torch.zeros(5, dtype=torch.long))


def test_single_sample_gives_connected_zero_and_empty_batch_raises() -> None:
    x = torch.randn(1, 4, requires_grad=True)
    value = UniformityLoss()(x)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"empty batch \(B=0\)"):
        UniformityLoss()(torch.zeros(0, 4))


def test_half_precision_is_computed_in_float32() -> None:
    x = torch.randn(9, 5)
    value = UniformityLoss()(x.to(torch.bfloat16))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(UniformityLoss()(x.to(torch.bfloat16).float()).item(), rel=1e-6)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_bad_t_is_refused(t: float) -> None:
    with pytest.raises(ValueError, match="t must be"):
        UniformityLoss(t)


def test_bad_embeddings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"embeddings must have shape \(B, D\)"):
        UniformityLoss()(torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        UniformityLoss()(torch.ones(3, 2, dtype=torch.long))


def test_is_a_term_of_the_default_objective() -> None:
    """``metriclearn train``'s default: the neighbourhood softmax plus a weighted uniformity term."""
    from metriclearn.losses import NeighborhoodSoftmaxLoss
    from metriclearn.training import TrainConfig
    from metriclearn.training.objectives import build_objective

    cfg = TrainConfig()
    weights = dict(cfg.terms())
    assert set(weights) == {"neighborhood", "uniformity"} and 0 < weights["uniformity"] < 1
    objective = build_objective(cfg.terms(), 6, 3, loss_options=cfg.loss_options)
    e, y = torch.randn(12, 6), torch.tensor([0, 1, 2] * 4)
    nsl = NeighborhoodSoftmaxLoss(**cfg.loss_options["neighborhood"])
    expected = nsl(e, y) + weights["uniformity"] * UniformityLoss()(e)
    torch.testing.assert_close(objective(e, y), expected)
    tuned = build_objective([("uniformity", 1.0)], 6, 3, loss_options={"uniformity": {"t": 0.5}})
    assert tuned.terms["uniformity"].t == 0.5
