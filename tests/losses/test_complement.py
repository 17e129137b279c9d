"""ComplementEntropyLoss against a per-sample loop, the official COT formulation, gradcheck and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from metriclearn.losses import ComplementEntropyLoss


def naive_complement(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """−H(complement distribution) / K for each sample, written out with plain Python floats."""
    values = []
    num_classes = logits.shape[1]
    for row, g in zip(logits.tolist(), labels.tolist()):
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        y_hat = [e / sum(exps) for e in exps]
        rest = 1.0 - y_hat[g]
        entropy = -sum(y_hat[j] / rest * math.log(y_hat[j] / rest) for j in range(num_classes) if j != g)
        values.append(-entropy / num_classes)
    return values


def official_cot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The formulation of the authors' ComplementEntropy module (with its two epsilons)."""
    batch, classes = logits.shape
    y_hat = torch.softmax(logits, dim=1)
    y_g = torch.gather(y_hat, 1, labels.unsqueeze(1))
    px = y_hat / ((1 - y_g) + 1e-7)
    zerohot = torch.ones(batch, classes, dtype=logits.dtype).scatter_(1, labels.unsqueeze(1), 0)
    return (px * torch.log(px + 1e-10) * zerohot).sum() / batch / classes


def test_matches_naive_loop_and_reductions() -> None:
    logits = torch.randn(9, 6, dtype=torch.float64) * 3
    labels = torch.randint(0, 6, (9,))
    expected = torch.tensor(naive_complement(logits, labels), dtype=torch.float64)
    torch.testing.assert_close(ComplementEntropyLoss(6, reduction="none")(logits, labels), expected, rtol=1e-12, atol=0)
    assert ComplementEntropyLoss(6)(logits, labels).item() == pytest.approx(expected.mean().item(), rel=1e-12)
    assert ComplementEntropyLoss(6, reduction="sum")(logits, labels).item() == pytest.approx(expected.sum().item())


def test_matches_official_implementation() -> None:
    logits = torch.randn(32, 10, dtype=torch.float64)
    labels = torch.randint(0, 10, (32,))
    torch.testing.assert_close(ComplementEntropyLoss(10)(logits, labels), official_cot(logits, labels), rtol=1e-6, atol=0)


def test_bounds_and_sign() -> None:
    num_classes = 5
    flat = torch.zeros(4, num_classes)  # uniform complement: maximal entropy log(K − 1)
    assert ComplementEntropyLoss(num_classes)(flat, torch.arange(4)).item() == pytest.approx(-math.log(4) / 5)
    peaked = torch.tensor([[0.0, 30.0, 0.0, 0.0, 0.0]])  # one wrong class takes all: entropy → 0
    assert ComplementEntropyLoss(num_classes)(peaked, torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-10)


def test_gradcheck() -> None:
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    assert gradcheck(lambda z: ComplementEntropyLoss(4)(z, labels), (logits,))


def test_stable_when_the_target_probability_is_one() -> None:
    logits = torch.randn(5, 7, dtype=torch.float64)
    labels = torch.tensor([0, 3, 6, 2, 2])
    confident = logits.clone()
    confident[torch.arange(5), labels] = 1e4  # ŷ_g == 1.0 exactly in float64: 1 − ŷ_g == 0
    confident.requires_grad_(True)
    value = ComplementEntropyLoss(7, reduction="none")(confident, labels)
    # The complement distribution ignores the target logit, so the value equals that at the plain logits.
    torch.testing.assert_close(value, torch.tensor(naive_complement(logits, labels), dtype=torch.float64))
    value.sum().backward()
    assert torch.isfinite(confident.grad).all()
    assert torch.equal(confident.grad[torch.arange(5), labels], torch.zeros(5, dtype=torch.float64))


def test_single_sample_one_class_and_duplicates() -> None:
    loss = ComplementEntropyLoss(3)
    one = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
    assert loss(one, torch.tensor([1])).item() == pytest.approx(naive_complement(one.detach(), torch.tensor([1]))[0])
    same = torch.randn(1, 3).repeat(4, 1).requires_grad_(True)  # duplicates, all of one class
    value = loss(same, torch.zeros(4, dtype=torch.long))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(same.grad).all()
    assert torch.allclose(same.grad, same.grad[:1].expand(4, 3))
    two = ComplementEntropyLoss(2)(torch.randn(3, 2, requires_grad=True), torch.tensor([0, 1, 1]))
    assert two.item() == 0.0 and two.requires_grad  # a one-class complement has zero entropy


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    logits = (torch.randn(8, 5) * 4).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 5, (8,))
    value = ComplementEntropyLoss(5)(logits, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ComplementEntropyLoss(5)(logits.detach().float(), labels))
    value.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="num_classes must be at least 2 for a complement distribution, got 1"):
        ComplementEntropyLoss(1)
    with pytest.raises(TypeError, match="num_classes must be an integer, got 2.5"):
        ComplementEntropyLoss(2.5)  # type: ignore[arg-type]
    loss = ComplementEntropyLoss(4)
    with pytest.raises(ValueError, match="logits have 8 columns but num_classes=4; .* not embeddings"):
        loss(torch.zeros(2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be < num_classes=4, got 4"):
        loss(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="labels must be an integer tensor, got torch.float32"):
        loss(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
