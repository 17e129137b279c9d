"""The fused neighbourhood + uniformity kernel against autograd through the unfused formula, finite
differences, the two separate modules, and the objective that uses it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_f32_close
from torch.autograd import gradcheck

from metriclearn.losses import NeighborhoodSoftmaxLoss, UniformityLoss
from metriclearn.losses._neighborhood_uniformity import can_fuse, neighborhood_and_uniformity
from metriclearn.training.objectives import build_objective

# uneven classes: 5 / 3 / 2 / 1 (class 3 is a singleton, so anchor 9 has no positive and is left out)
LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 0, 2, 1, 3, 0])


def unfused_reference(x: torch.Tensor, labels: torch.Tensor, temperature: float, t: float,
                      reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Both terms written with autograd's pieces, each with its own normalisation and Gram matrix."""
    b = x.shape[0]
    eye = torch.eye(b, dtype=torch.bool)
    z = torch.nn.functional.normalize(x, dim=1)
    logits = (z @ z.T / temperature).masked_fill(eye, -math.inf)  # (B, B)
    same = (labels[:, None] == labels[None, :]) & ~eye
    per_anchor = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    counted = same.any(1)
    per_anchor = torch.where(counted, per_anchor, torch.zeros_like(per_anchor))
    nb = {"mean": per_anchor.sum() / counted.sum(), "sum": per_anchor.sum(), "none": per_anchor}[reduction]
    w = torch.nn.functional.normalize(x, dim=1)
    u_logits = ((2.0 * t) * (w @ w.T) - 2.0 * t).masked_fill(eye, -math.inf)
    return nb, torch.logsumexp(u_logits.reshape(-1), 0) - math.log(b * (b - 1))


def _grads(outputs: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    nb, un = outputs
    (grad,) = torch.autograd.grad(0.7 * nb.sum() + 0.05 * un, x)  # the default objective's weights, scaled
    return grad


@pytest.mark.parametrize("temperature", [0.15, 1.0, 4.0])
@pytest.mark.parametrize("t", [2.0, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_value_and_gradient_equal_autograd_through_the_unfused_formula(temperature: float, t: float,
                                                                       reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, dtype=torch.float64, generator=gen) * torch.rand(11, 1, dtype=torch.float64,
                                                                           generator=gen) * 3  # uneven norms
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = neighborhood_and_uniformity(NeighborhoodSoftmaxLoss(temperature, "cosine", reduction=reduction),
                                        UniformityLoss(t), mine, LABELS)
    expected = unfused_reference(ref, LABELS, temperature, t, reduction)
    for value, want in zip(fused, expected):
        torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grads(fused, mine), _grads(expected, ref), rtol=1e-9, atol=1e-12)


def test_finite_differences() -> None:
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3])
    nb, un = NeighborhoodSoftmaxLoss(0.3, "cosine", reduction="none"), UniformityLoss(1.5)
    assert gradcheck(lambda e: neighborhood_and_uniformity(nb, un, e, labels), (x,))


def test_equals_the_two_modules_in_float32_at_the_training_size() -> None:
    """B = 128 (16 classes × 8), batch of the default run; a zero row hits F.normalize's floor."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(131, 64, generator=gen)  # 131: not a multiple of the classes
    x[5] = 0.0
    labels = torch.randint(0, 17, (131,), generator=gen)
    nb, un = NeighborhoodSoftmaxLoss(0.15, "cosine"), UniformityLoss()
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = neighborhood_and_uniformity(nb, un, mine, labels)
    apart = (nb(ref, labels), un(ref))
    for value, want in zip(fused, apart):
        assert_f32_close(value.detach(), want.detach(), gain=1 / 0.15)
    assert_f32_close(_grads(fused, mine), _grads(apart, ref), gain=1 / 0.15, ulps=64)


def test_each_term_alone_as_pcgrad_asks_for_it() -> None:
    """``autograd.grad`` of one output leaves the other's upstream at zero: each term's own gradient."""
    x = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1] * 5)
    nb, un = NeighborhoodSoftmaxLoss(0.5, "cosine"), UniformityLoss()
    fused = neighborhood_and_uniformity(nb, un, x, labels)
    for value, alone in zip(fused, (lambda: nb(x, labels), lambda: un(x))):
        (mine,) = torch.autograd.grad(value, x, retain_graph=True)
        (want,) = torch.autograd.grad(alone(), x)
        torch.testing.assert_close(mine, want, rtol=1e-10, atol=1e-13)


def test_tiny_temperature_rows_redone_in_the_log_domain() -> None:
    """T = 1e-3: positives' softmax mass underflows float64; the fused kernel stays finite and equal."""
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    nb, un = NeighborhoodSoftmaxLoss(1e-3, "cosine"), UniformityLoss()
    fused = neighborhood_and_uniformity(nb, un, x, labels)
    apart = (nb(x, labels), un(x))
    for value, want in zip(fused, apart):
        assert torch.isfinite(value)
        torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grads(fused, x), _grads(apart, x), rtol=1e-8, atol=1e-12)


def test_batch_of_one_and_half_precision() -> None:
    nb, un = NeighborhoodSoftmaxLoss(0.15, "cosine"), UniformityLoss()
    one = torch.randn(1, 4, requires_grad=True)
    value, uniform = neighborhood_and_uniformity(nb, un, one, torch.tensor([3]))
    assert value.item() == 0.0 and uniform.item() == 0.0
    (value + uniform).backward()
    assert torch.equal(one.grad, torch.zeros_like(one))
    half = torch.randn(6, 4).bfloat16()
    value, uniform = neighborhood_and_uniformity(nb, un, half, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert value.dtype == uniform.dtype == torch.float32


def test_refuses_what_it_cannot_fuse() -> None:
    assert not can_fuse(NeighborhoodSoftmaxLoss(distance="sqeuclidean"), UniformityLoss())
    with pytest.raises(TypeError, match="sqeuclidean|cannot fuse"):
        neighborhood_and_uniformity(NeighborhoodSoftmaxLoss(), UniformityLoss(), torch.randn(4, 2),
                                    torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("combine", ["sum", "pcgrad"])
def test_default_objective_fuses_and_matches_its_terms(combine: str) -> None:
    """The objective ``metriclearn train`` builds computes the same losses and gradient as term by term."""
    objective = build_objective(None, 8, 4, combine=combine)
    assert objective.fused == ("neighborhood", "uniformity")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(21, 8, generator=gen)  # 21 = 4 classes of 7, 5, 5, 4: uneven
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 5 + [3] * 4)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = objective.term_losses(mine, labels)
    apart = {name: objective.terms[name](ref, labels) for name in objective.names}
    assert list(fused) == list(apart)
    for name, value in apart.items():
        assert_f32_close(fused[name].detach(), value.detach(), gain=1 / 0.15)
    objective.total(fused).backward()
    objective.total(apart).backward()
    assert_f32_close(mine.grad, ref.grad, gain=1 / 0.15, ulps=64)
    assert list(objective.term_losses(mine, labels, ["uniformity"])) == ["uniformity"]  # one term: not fused
