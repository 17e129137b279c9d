"""SoftNearestNeighborLoss against a per-sample loop, finite differences, PML's NCA and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import NCALoss
from torch.autograd import gradcheck
from torch.func import functional_call

from metriclearn.losses import SoftNearestNeighborLoss

from ._neighborhood_reference import logsumexp


def naive_snn(x: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[list[float], list[bool]]:
    """Frosst et al. eq. (1), one anchor at a time, with a max-shifted log-sum-exp in plain Python."""
    values, counted = [], []
    for i in range(len(x)):
        logits = {k: -float(((x[i] - x[k]) ** 2).sum()) / temperature for k in range(len(x)) if k != i}
        positives = [k for k in logits if y[k] == y[i]]
        if not positives:
            values.append(0.0)
            counted.append(False)
            continue
        values.append(logsumexp(list(logits.values())) - logsumexp([logits[k] for k in positives]))
        counted.append(True)
    return values, counted


def batch(b: int = 12, d: int = 5, classes: int = 4, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, d, dtype=dtype), torch.randint(0, classes, (b,))


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_matches_naive_loop(temperature: float) -> None:
    x, _ = batch()
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5])  # 3, 4 and 5 are singletons
    per_anchor = SoftNearestNeighborLoss(temperature, reduction="none")(x, y)
    values, counted = naive_snn(x, y, temperature)
    torch.testing.assert_close(per_anchor, torch.tensor(values, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    mean = SoftNearestNeighborLoss(temperature)(x, y)
    expected = sum(v for v, c in zip(values, counted) if c) / sum(counted)
    assert mean.item() == pytest.approx(expected, rel=1e-10)
    total = SoftNearestNeighborLoss(temperature, reduction="sum")(x, y)
    assert total.item() == pytest.approx(sum(values), rel=1e-10)


def test_equals_pml_nca_without_normalisation() -> None:
    x, y = batch(b=32, d=8, classes=6, dtype=torch.float32)
    ours = SoftNearestNeighborLoss(1.0)(x, y)
    pml = NCALoss(softmax_scale=1, distance=LpDistance(normalize_embeddings=False, power=2))(x, y)
    assert pml.item() > 0.5  # a loss of order 1, so a relative tolerance alone is meaningful
    torch.testing.assert_close(ours, pml, rtol=1e-5, atol=0)  # two float32 paths: ~80 float32 ulps, no absolute floor


def test_gradcheck_embeddings() -> None:
    x, y = batch(b=8, d=3, classes=3)
    x.requires_grad_(True)
    loss = SoftNearestNeighborLoss(0.7)
    assert gradcheck(lambda e: loss(e, y), (x,))


def test_gradcheck_learned_temperature() -> None:
    x, y = batch(b=8, d=3, classes=3)
    x.requires_grad_(True)
    loss = SoftNearestNeighborLoss(0.5, learn_temperature=True).double()
    log_t = loss.log_temperature.detach().clone().requires_grad_(True)
    assert gradcheck(lambda e, t: functional_call(loss, {"log_temperature": t}, (e, y)), (x, log_t))


def test_learned_temperature_is_a_parameter_that_trains_and_resumes() -> None:
    loss = SoftNearestNeighborLoss(2.0, learn_temperature=True)
    assert [name for name, _ in loss.named_parameters()] == ["log_temperature"]
    assert loss.temperature.item() == pytest.approx(2.0)
    x, y = batch(dtype=torch.float32)
    loss(x, y).backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad.abs() > 0
    restored = SoftNearestNeighborLoss(1.0, learn_temperature=True)
    with torch.no_grad():
        loss.log_temperature.add_(0.3)
    restored.load_state_dict(loss.state_dict())
    assert restored.temperature.item() == pytest.approx(2.0 * math.exp(0.3))
    fixed = SoftNearestNeighborLoss(2.0)
    assert list(fixed.parameters()) == [] and fixed.temperature == 2.0


def test_single_sample_is_a_connected_zero() -> None:
    x = torch.randn(1, 4, requires_grad=True)
    value = SoftNearestNeighborLoss()(x, torch.tensor([3]))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_all_singletons_is_a_connected_zero() -> None:
    x = torch.randn(5, 4, requires_grad=True)
    value = SoftNearestNeighborLoss()(x, torch.arange(5))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_all_one_class_is_zero_with_finite_gradients() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    value = SoftNearestNeighborLoss(0.1)(x, torch.zeros(6, dtype=torch.long))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 1e-5


def test_duplicate_points_are_finite_and_exact() -> None:
    base = torch.randn(3, 4, dtype=torch.float64)
    x = torch.cat([base, base, base[:1]]).requires_grad_(True)  # every point has an exact duplicate
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    value = SoftNearestNeighborLoss(0.3)(x, y)
    values, counted = naive_snn(x.detach(), y, 0.3)
    assert value.item() == pytest.approx(sum(values) / sum(counted), rel=1e-10)
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_extreme_temperatures() -> None:
    x, _ = batch(b=10)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    # T → ∞: every neighbour weighs the same, so l_i = −log(#positives / (B − 1)).
    huge = SoftNearestNeighborLoss(1e9, reduction="none")(x, y)
    n_pos = torch.tensor([1, 1, 2, 2, 2, 4, 4, 4, 4, 4], dtype=torch.float64)
    torch.testing.assert_close(huge, -torch.log(n_pos / 9), rtol=1e-6, atol=1e-8)
    # T → 0: exp underflows everywhere but the log-sum-exp stays exact and finite.
    tiny = SoftNearestNeighborLoss(1e-6, reduction="none")(x.requires_grad_(True), y)
    values, _ = naive_snn(x.detach(), y, 1e-6)
    torch.testing.assert_close(tiny, torch.tensor(values, dtype=torch.float64), rtol=1e-9, atol=1e-6)
    tiny.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    x32, y = batch(b=16, dtype=torch.float32)
    x = x32.to(dtype).requires_grad_(True)
    value = SoftNearestNeighborLoss()(x, y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, SoftNearestNeighborLoss()(x.detach().float(), y))
    value.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="temperature must be a finite positive number, got 0.0"):
        SoftNearestNeighborLoss(0.0)
    with pytest.raises(TypeError, match="temperature must be a number, got 'hot'"):
        SoftNearestNeighborLoss("hot")  # type: ignore[arg-type]
    loss = SoftNearestNeighborLoss()
    with pytest.raises(ValueError, match=r"embeddings must have shape \(B, D\), got \(2, 3, 4\)"):
        loss(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\), got \(2,\)"):
        loss(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be non-negative class indices, got -1"):
        loss(torch.zeros(2, 2), torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="embeddings must be a floating-point tensor, got torch.int64"):
        loss(torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"empty batch \(B=0\)"):
        loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_learned_temperature_path_equals_fused_fixed_path() -> None:
    """The autograd path (learned T) and the fused kernel (fixed T) give the same value and gradient."""
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (24,))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    fixed = SoftNearestNeighborLoss(0.7)(x1, y)
    learned_loss = SoftNearestNeighborLoss(0.7, learn_temperature=True).double()
    with torch.no_grad():  # the parameter was made in float32: set log T exactly in float64
        learned_loss.log_temperature.fill_(math.log(0.7))
    learned = learned_loss(x2, y)
    fixed.backward()
    learned.backward()
    assert torch.allclose(fixed, learned, rtol=1e-12, atol=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
