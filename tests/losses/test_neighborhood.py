"""NeighborhoodSoftmaxLoss: exact against loop references and NCA, gradcheck, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch

from metriclearn.losses import NeighborhoodSoftmaxLoss
from metriclearn.losses._softmax_kernel import label_codes, scaled_symmetric

from ._neighborhood_reference import dense_loss, loop_loss, nca_loss

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1, 0])  # class 3 is a singleton: anchor 6 is left out


def _batch(dtype: torch.dtype = torch.float64, b: int = 10, d: int = 5) -> torch.Tensor:
    return torch.randn(b, d, dtype=dtype, requires_grad=True)


def _value_and_grad(loss: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 7.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_per_anchor_loop(distance: str, temperature: float, reduction: str) -> None:
    x = _batch()
    loss = NeighborhoodSoftmaxLoss(temperature, distance, reduction=reduction)
    value, grad = _value_and_grad(loss(x, LABELS), x)
    ref_value, ref_grad = _value_and_grad(loop_loss(x, LABELS, temperature, distance, reduction=reduction), x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_equals_nca_value_and_gradient() -> None:
    x = _batch()
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss()(x, LABELS), x)
    ref_value, ref_grad = _value_and_grad(nca_loss(x, LABELS), x)
    torch.testing.assert_close(value, ref_value, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-13)


def test_equals_pytorch_metric_learning_nca() -> None:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import NCALoss

    x = _batch()
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss()(x, LABELS), x)
    pml = NCALoss(distance=LpDistance(normalize_embeddings=False, power=2))
    ref_value, ref_grad = _value_and_grad(pml(x, LABELS), x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(distance: str, reduction: str) -> None:
    loss = NeighborhoodSoftmaxLoss(0.5, distance, reduction=reduction)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS), (_batch(),))


def test_double_backward_raises_clearly() -> None:
    x = _batch()
    value = NeighborhoodSoftmaxLoss()(x, LABELS)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported"):
        torch.autograd.grad(value, x, create_graph=True)


def test_large_batch_matches_dense_reference() -> None:
    x = _batch(b=300, d=8)
    labels = torch.randint(0, 7, (300,))
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss(2.0)(x, labels), x)
    ref_value, ref_grad = _value_and_grad(dense_loss(x, labels, 2.0), x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n", [3, 512])
def test_scaled_symmetric(n: int) -> None:
    g, scale = torch.randn(n, n + 5)[:, :n], torch.randn(n)  # a strided block, as in the backward
    scaled, symmetric = scaled_symmetric(g, scale)
    torch.testing.assert_close(scaled, g * scale[:, None], rtol=0, atol=0)
    torch.testing.assert_close(symmetric, scaled + scaled.T, rtol=0, atol=0)


def test_label_codes_count_positives_excluding_self() -> None:
    for offset in (0, 10**8):  # small labels are counted with bincount, large ones renumbered
        labels, ref_labels = torch.tensor([4, 7, 4, 9]) + offset, torch.tensor([7, 7, 1]) + offset
        codes, positives = label_codes(labels, ref_labels, torch.float32)
        assert positives.tolist() == [1, 2, 1, 0]
        same = codes[:, None] == codes[None, :]
        everything = torch.cat([labels, ref_labels])
        assert codes.dtype == torch.float32 and torch.equal(same, everything[:, None] == everything[None, :])


def test_huge_label_values_are_compared_exactly() -> None:
    """Labels above 2**24 would collide as float32; the compact codes keep them apart."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2**40, 2**40 + 1, 2**40, 2**40 + 1])
    value = NeighborhoodSoftmaxLoss()(x, labels)
    torch.testing.assert_close(value, loop_loss(x, labels), rtol=1e-12, atol=1e-12)


def test_single_anchor_is_a_connected_zero() -> None:
    x = _batch(b=1)
    value = NeighborhoodSoftmaxLoss()(x, torch.tensor([3]))
    value.backward()
    assert value.item() == 0.0 and value.requires_grad
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_one_class_is_zero_loss_and_zero_gradient(distance: str) -> None:
    x = _batch(torch.float32)
    value = NeighborhoodSoftmaxLoss(distance=distance)(x, torch.zeros(10, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_all_distinct_labels_give_connected_zero() -> None:
    x = _batch(torch.float32, b=4)
    value = NeighborhoodSoftmaxLoss()(x, torch.arange(4))
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_duplicate_embeddings() -> None:
    base = torch.randn(4, 3, dtype=torch.float64)
    x = base[[0, 0, 1, 1, 2, 3, 3, 0]].clone().requires_grad_(True)  # exact duplicates, across classes too
    labels = torch.tensor([0, 0, 1, 1, 0, 2, 1, 1])
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss()(x, labels), x)
    ref_value, ref_grad = _value_and_grad(loop_loss(x, labels), x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("temperature", [1e6, 1e-4])
def test_extreme_temperatures_stay_exact_in_float32(temperature: float) -> None:
    x64 = _batch()
    x32 = x64.detach().float().requires_grad_(True)
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss(temperature)(x32, LABELS), x32)
    ref_value, ref_grad = _value_and_grad(loop_loss(x64, LABELS, temperature), x64)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value.double(), ref_value, rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-3, atol=1e-3 * ref_grad.abs().max().item())


def test_positive_mass_below_float_range_is_not_log_zero() -> None:
    """Positives ~1e4 nats below the nearest negative: exp underflows even in float64; the loss is exact."""
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    value, grad = _value_and_grad(NeighborhoodSoftmaxLoss(0.01, reduction="none")(x, labels), x)
    x64 = x.detach().double().requires_grad_(True)
    ref_value, ref_grad = _value_and_grad(loop_loss(x64, labels, 0.01, reduction="none"), x64)
    assert value[0].item() > 9000
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-3)


def test_tiny_loss_keeps_relative_precision() -> None:
    """-log p for p = 1 - 1e-12 is computed as log1p(n/p), not from a rounded p."""
    x = torch.tensor([[0.0], [0.0], [5.3]], dtype=torch.float32)
    value = NeighborhoodSoftmaxLoss(reduction="none")(x, torch.tensor([0, 0, 1]))
    expected = math.log1p(math.exp(-5.3**2))
    assert value[0].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype: torch.dtype) -> None:
    x = torch.randn(10, 5).to(dtype).requires_grad_(True)
    value = NeighborhoodSoftmaxLoss(distance="cosine")(x, LABELS)
    value.backward()
    ref = NeighborhoodSoftmaxLoss(distance="cosine")(x.detach().float(), LABELS)
    assert value.dtype == torch.float32 and x.grad.dtype == dtype
    torch.testing.assert_close(value, ref)
    assert torch.isfinite(x.grad.float()).all() and x.grad.float().abs().sum() > 0


def test_none_reduction_zero_for_anchors_without_positive() -> None:
    values = NeighborhoodSoftmaxLoss(reduction="none")(torch.randn(10, 5), LABELS)
    assert values.shape == (10,) and values[6].item() == 0.0 and (values[LABELS != 3] > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite positive number, got 0.0"),
        ({"temperature": math.inf}, ValueError, "temperature must be a finite positive number, got inf"),
        ({"temperature": "1"}, TypeError, "temperature must be a number, got '1'"),
        ({"distance": "manhattan"}, ValueError, "distance must be one of 'sqeuclidean', 'cosine'; got 'manhattan'"),
        ({"reduction": "max"}, ValueError, "reduction must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        NeighborhoodSoftmaxLoss(**kwargs)


@pytest.mark.parametrize(
    ("embeddings", "labels", "error", "match"),
    [
        ([[0.0, 1.0]], torch.tensor([0]), TypeError, "embeddings must be a torch.Tensor, got list"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, r"must have shape \(B, D\), got \(4,\)"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), TypeError, "floating-point"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), ValueError, r"labels must have shape \(3,\), got \(4,\)"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), TypeError, "labels must be an integer tensor, got torch.float32"),
        (torch.zeros(2, 2), torch.tensor([0, -1]), ValueError, "labels must be non-negative class indices, got -1"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), ValueError, r"empty batch \(B=0\)"),
    ],
)
def test_bad_inputs(embeddings: object, labels: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        NeighborhoodSoftmaxLoss()(embeddings, labels)


def test_repr_names_the_settings() -> None:
    assert repr(NeighborhoodSoftmaxLoss(0.5, "cosine")) == (
        "NeighborhoodSoftmaxLoss(temperature=0.5, distance='cosine', reduction='mean')"
    )


def test_interleaved_forwards_and_backwards_do_not_share_state() -> None:
    """Two graphs alive at once (the scratch matrix is reused between calls; the gradient matrix is not)."""
    loss = NeighborhoodSoftmaxLoss(0.5)
    x1, x2 = _batch(b=40), _batch(b=70)
    labels1, labels2 = torch.randint(0, 4, (40,)), torch.randint(0, 4, (70,))
    first, second = loss(x1, labels1), loss(x2, labels2)
    (grad2,) = torch.autograd.grad(second, x2)
    (grad1,) = torch.autograd.grad(first, x1)
    torch.testing.assert_close(grad1, _value_and_grad(dense_loss(x1, labels1, 0.5), x1)[1], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(grad2, _value_and_grad(dense_loss(x2, labels2, 0.5), x2)[1], rtol=1e-10, atol=1e-13)
