"""CacheLoss: exact against a loop reference over batch + cache, no self-match, ring buffer, resume."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from metriclearn.losses import CacheLoss, NeighborhoodSoftmaxLoss
from metriclearn.losses._recenter import is_unit, recenter_gradient
from metriclearn.losses._softmax_kernel import matching_slots

from ._neighborhood_reference import loop_loss

DIM = 4


def _batch(b: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, DIM, dtype=dtype, requires_grad=True), torch.randint(0, 3, (b,))


def _grad(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, x)[0]


def _prepared(x: torch.Tensor, distance: str) -> torch.Tensor:
    return F.normalize(x, dim=1) if distance == "cosine" else x


@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
def test_empty_cache_equals_neighborhood_softmax(distance: str) -> None:
    x, labels = _batch()
    value = CacheLoss(DIM, size=16, temperature=0.3, distance=distance).double()(x, labels)
    ref = NeighborhoodSoftmaxLoss(0.3, distance)(x, labels)
    torch.testing.assert_close(value, ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(_grad(value, x), _grad(ref, x), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
def test_scores_against_batch_and_earlier_batches_only(distance: str) -> None:
    """Step 3 sees steps 1-2 in the cache, never its own (just-enqueued) copies; gradient only via the batch."""
    loss = CacheLoss(DIM, size=32, temperature=0.5, distance=distance, recenter=False).double()
    history = [_batch() for _ in range(2)]
    for x, labels in history:
        loss(x, labels).backward()
    x, labels = _batch()
    value = loss(x, labels)
    refs = torch.cat([_prepared(h.detach(), distance) for h, _ in history])  # (12, D)
    ref_labels = torch.cat([lab for _, lab in history])
    ref = loop_loss(x, labels, 0.5, distance, refs=refs, ref_labels=ref_labels)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(value, x), _grad(ref, x), rtol=1e-10, atol=1e-12)
    assert not loss.cache_embeddings.requires_grad
    torch.testing.assert_close(loss.cache_embeddings[12:18], _prepared(x.detach(), distance))


def test_ids_exclude_an_anchors_stale_copies() -> None:
    loss = CacheLoss(DIM, size=32, temperature=0.5, recenter=False).double()
    x, labels = _batch()
    ids = torch.arange(100, 106)
    loss(x, labels, ids=ids)  # the cache now holds this batch with its ids
    y = (x.detach() + 0.01 * torch.randn_like(x)).requires_grad_(True)  # the same samples, next epoch
    value = loss(y, labels, ids=ids)
    exclude = ids[:, None] == ids[None, :]  # slot m holds sample ids[m]
    ref = loop_loss(F.normalize(y, dim=1), labels, 0.5, "cosine", refs=F.normalize(x.detach(), dim=1),
                    ref_labels=labels, exclude=exclude)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(value, y), _grad(ref, y), rtol=1e-10, atol=1e-12)
    loss_without_ids = CacheLoss(DIM, size=32, temperature=0.5).double()
    loss_without_ids(x, labels)
    assert not torch.allclose(loss_without_ids(y, labels), value)  # the stale self-match changes the loss


def test_matching_slots_equals_brute_force() -> None:
    ids = torch.randint(0, 30, (50,))
    slot_ids = torch.cat([torch.randint(0, 30, (200,)), torch.full((20,), -1)])  # repeats, empty slots
    pairs = matching_slots(ids, slot_ids)
    expected = (ids[:, None] == slot_ids[None, :]).nonzero().T
    assert sorted(map(tuple, pairs.T.tolist())) == sorted(map(tuple, expected.T.tolist()))
    assert matching_slots(torch.tensor([5]), torch.tensor([1, 2])).shape == (2, 0)


def test_anchor_whose_only_positive_is_its_own_copy_is_left_out() -> None:
    loss = CacheLoss(DIM, size=8, reduction="none")
    x = torch.randn(2, DIM)
    loss(x, torch.tensor([0, 1]), ids=torch.tensor([5, 6]))
    values = loss(x, torch.tensor([0, 1]), ids=torch.tensor([5, 6]))
    assert values.tolist() == [0.0, 0.0]  # each one's only same-label neighbour is its own stale copy
    assert (loss(x, torch.tensor([0, 1]), ids=torch.tensor([7, 8])) > 0).all()  # different ids: positives


def test_warmup_fills_but_does_not_score() -> None:
    loss = CacheLoss(DIM, size=32, warmup_steps=2).double()
    nsl = NeighborhoodSoftmaxLoss(0.15, "cosine")  # the cache default T
    for _ in range(2):
        x, labels = _batch()
        torch.testing.assert_close(loss(x, labels), nsl(x, labels), rtol=1e-13, atol=1e-13)
    assert int(loss.filled) == 12 and int(loss.step) == 2
    x, labels = _batch()
    assert not torch.allclose(loss(x, labels), nsl(x, labels))


def test_ring_buffer_overwrites_oldest_slots() -> None:
    loss = CacheLoss(2, size=5, distance="sqeuclidean")
    rows = torch.arange(12, dtype=torch.float32).repeat(2, 1).T  # row k = (k, k)
    labels = torch.arange(12) % 2
    loss(rows[:3], labels[:3])
    loss(rows[3:6], labels[3:6])
    assert (int(loss.pointer), int(loss.filled), int(loss.step)) == (1, 5, 2)
    assert loss.cache_embeddings[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]  # row 0 overwritten by row 5
    assert loss.cache_labels.tolist() == [1, 1, 0, 1, 0]
    loss(rows[6:12], labels[6:12])  # a batch bigger than the cache writes its last 5 rows
    assert int(loss.pointer) == 1 and loss.cache_embeddings[:, 0].tolist() == [11.0, 7.0, 8.0, 9.0, 10.0]


def test_state_dict_resumes_exactly() -> None:
    torch.manual_seed(1)
    batches = [_batch(dtype=torch.float32) for _ in range(5)]
    ids = [torch.arange(6) + 6 * (k % 2) for k in range(5)]
    first = CacheLoss(DIM, size=10, warmup_steps=1)
    for (x, labels), i in zip(batches[:3], ids[:3]):
        first(x, labels, ids=i)
    state = first.state_dict()
    assert {"cache_embeddings", "cache_labels", "cache_ids", "pointer", "filled", "step"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = CacheLoss(DIM, size=10, warmup_steps=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for (x, labels), i in zip(batches[3:], ids[3:]):
        assert torch.equal(first(x, labels, ids=i), resumed(x, labels, ids=i))
    for name, value in first.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_eval_and_no_grad_score_without_updating() -> None:
    loss = CacheLoss(DIM, size=16)
    x, labels = _batch(dtype=torch.float32)
    loss(x, labels)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    with torch.no_grad():
        scored = loss(x, labels)
    loss.eval()
    assert torch.equal(loss(x, labels), scored)
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())
    loss.train()
    loss(x, labels)
    assert int(loss.step) == 2


@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
def test_gradcheck_with_cache_and_excluded_slots(distance: str) -> None:
    loss = CacheLoss(DIM, size=16, temperature=0.4, distance=distance, reduction="none", recenter=False).double()
    x, labels = _batch()
    loss(x, labels, ids=torch.arange(6))
    loss.eval()  # gradcheck calls the loss many times: keep the cache fixed
    y = torch.randn(6, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels, ids=torch.arange(3, 9)), (y,))


@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
def test_recentred_gradient_is_the_plain_one_less_its_batch_mean(distance: str) -> None:
    """Same value; the gradient minus its mean over the batch (no net force from the constant cache)."""
    plain = CacheLoss(DIM, size=32, temperature=0.4, distance=distance, recenter=False).double()
    recentred = CacheLoss(DIM, size=32, temperature=0.4, distance=distance).double()
    for _ in range(2):  # the same history in both caches
        x, labels = _batch(7)
        plain(x, labels)
        recentred(x, labels)
    x, labels = _batch(7)
    value, reference = recentred(x, labels), plain(x, labels)
    torch.testing.assert_close(value, reference, rtol=1e-13, atol=0)
    g, g_plain = _grad(value, x), _grad(reference, x)
    torch.testing.assert_close(g, g_plain - g_plain.mean(0), rtol=1e-12, atol=1e-14)
    assert g.sum(0).abs().max() < 1e-12 * g.abs().max()  # the rows' gradients sum to zero
    assert g_plain.sum(0).abs().max() > 1e-3 * g_plain.abs().max()  # they did not before


def test_recentring_survives_an_encoders_normalisation() -> None:
    """Unit rows (the encoder normalised z): no net force on z itself, though normalize's backward projects."""
    plain = CacheLoss(DIM, size=32, temperature=0.4, recenter=False).double()
    recentred = CacheLoss(DIM, size=32, temperature=0.4).double()
    for _ in range(2):
        x, labels = _batch(7)
        plain(x, labels)
        recentred(x, labels)
    z = (3.0 * F.normalize(torch.randn(7, DIM, dtype=torch.float64), dim=1)).requires_grad_(True)  # equal norms
    labels = torch.randint(0, 3, (7,))
    value, reference = recentred(F.normalize(z, dim=1), labels), plain(F.normalize(z, dim=1), labels)
    torch.testing.assert_close(value, reference, rtol=1e-13, atol=0)
    g, g_plain = _grad(value, z), _grad(reference, z)
    assert g.sum(0).abs().max() < 1e-5 * g.abs().max()  # no net force on z (to the solve's 1e-6 ridge)
    assert g_plain.sum(0).abs().max() > 1e-3 * g_plain.abs().max()
    assert (g - g_plain).norm() < g_plain.norm()  # a correction, not a different gradient


@pytest.mark.parametrize("rows", [1, 5])
def test_recentring_coinciding_unit_rows_stays_finite(rows: int) -> None:
    """Rows that all coincide (or one row) make the solve singular along them; the gradient stays bounded."""
    u = F.normalize(torch.randn(1, DIM), dim=1).repeat(rows, 1).requires_grad_(True)  # (rows, D), all alike
    g = torch.randn(rows, DIM)
    recenter_gradient(u, unit=True).backward(g)
    tangent = g - (g @ u.detach().T[:, :1]) * u.detach()  # the part a normalisation lets through
    assert torch.isfinite(u.grad).all() and u.grad.norm() <= 2 * g.norm()
    projected = u.grad - (u.grad @ u.detach().T[:, :1]) * u.detach()  # (rows, D)
    torch.testing.assert_close(projected.sum(0), torch.zeros(DIM), rtol=0, atol=1e-5 * float(tangent.norm()))


def test_is_unit_tells_normalised_rows() -> None:
    x = torch.randn(5, DIM)
    assert not is_unit(x) and is_unit(F.normalize(x, dim=1))
    assert is_unit(F.normalize(x, dim=1).bfloat16())


def test_recentring_waits_for_the_cache() -> None:
    """Before the cache is scored (empty or warming up) the gradient is the plain neighbourhood one."""
    loss = CacheLoss(DIM, size=32, temperature=0.4, warmup_steps=2).double()
    for _ in range(2):  # step 0: empty cache; step 1: warming up
        x, labels = _batch(7)
        value = loss(x, labels)
        ref = NeighborhoodSoftmaxLoss(0.4, "cosine")(x, labels)
        torch.testing.assert_close(_grad(value, x), _grad(ref, x), rtol=1e-12, atol=1e-14)
    assert loss.scored_slots() == 14


def test_single_anchor_and_one_class() -> None:
    loss = CacheLoss(DIM, size=8)
    x = torch.randn(1, DIM, requires_grad=True)
    value = loss(x, torch.tensor([0]))  # empty cache, no positive
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    x = torch.randn(5, DIM, requires_grad=True)
    value = loss(x, torch.zeros(5, dtype=torch.long))  # batch and cache are all one class
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype: torch.dtype) -> None:
    loss = CacheLoss(DIM, size=16)
    x, labels = _batch(dtype=torch.float32)
    loss(x, labels)
    half = torch.randn(6, DIM).to(dtype).requires_grad_(True)
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == dtype and torch.isfinite(value)
    assert loss.cache_embeddings.dtype == torch.float32
    torch.testing.assert_close(loss.cache_embeddings[6:12], F.normalize(half.detach().float(), dim=1))


def test_reset_empties_the_cache() -> None:
    loss = CacheLoss(DIM, size=8)
    loss(*_batch(dtype=torch.float32))
    loss.reset()
    assert (int(loss.pointer), int(loss.filled), int(loss.step)) == (0, 0, 0)
    assert (loss.cache_labels == -1).all() and (loss.cache_embeddings == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dim": 0}, ValueError, "dim must be a positive integer, got 0"),
        ({"dim": 4, "size": 0}, ValueError, "size must be a positive integer, got 0"),
        ({"dim": 4, "size": 2.5}, TypeError, "size must be an integer, got 2.5"),
        ({"dim": 4, "warmup_steps": -1}, ValueError, "warmup_steps must be a non-negative integer, got -1"),
        ({"dim": 4, "temperature": -0.1}, ValueError, "temperature must be a finite positive number, got -0.1"),
        ({"dim": 4, "distance": "l1"}, ValueError, "distance must be one of 'sqeuclidean', 'cosine'; got 'l1'"),
        ({"dim": 4, "recenter": "yes"}, TypeError, "recenter must be true or false, got 'yes'"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CacheLoss(**kwargs)


@pytest.mark.parametrize(
    ("embeddings", "ids", "error", "match"),
    [
        (torch.zeros(3, 5), None, ValueError, "embeddings have dimension 5 but CacheLoss was built with dim=4"),
        (torch.zeros(3, 4), torch.arange(4), ValueError, r"ids must have shape \(3,\), got \(4,\)"),
        (torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]), TypeError, "ids must be an integer tensor"),
        (torch.zeros(3, 4), torch.tensor([0, -2, 1]), ValueError, "ids must be non-negative sample ids, got -2"),
        (torch.tensor([[0.0] * 4, [float("nan")] * 4, [1.0] * 4]), None, ValueError,
         "embeddings contain NaN or inf values; CacheLoss will not write them into its cache"),
    ],
)
def test_bad_inputs(embeddings: torch.Tensor, ids: torch.Tensor | None, error: type, match: str) -> None:
    loss = CacheLoss(DIM, size=8)
    with pytest.raises(error, match=match):
        loss(embeddings, torch.tensor([0, 1, 0]), ids=ids)
    assert int(loss.filled) == 0  # nothing was written


def test_repr_names_the_settings() -> None:
    assert repr(CacheLoss(8, size=64, warmup_steps=3)) == (
        "CacheLoss(dim=8, size=64, temperature=0.15, distance='cosine', warmup_steps=3, recenter=True, "
        "reduction='mean')"
    )


def test_underflowing_positives_with_excluded_slots_stay_exact() -> None:
    """Tiny temperature: the positives' mass underflows float32 and the log-domain path must keep the exclusions."""
    loss = CacheLoss(2, size=8, temperature=0.01, distance="sqeuclidean", reduction="none", recenter=False)
    old = torch.tensor([[0.0, 0.0], [0.1, 0.0], [9.0, 0.0], [9.1, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    loss(old, labels, ids=torch.arange(4))
    x = (old + 0.05).requires_grad_(True)
    value = loss(x, labels, ids=torch.arange(4))
    x64 = x.detach().double().requires_grad_(True)
    exclude = torch.eye(4, dtype=torch.bool)  # slot m holds sample m
    ref = loop_loss(x64, labels, 0.01, "sqeuclidean", refs=old.double(), ref_labels=labels, exclude=exclude,
                    reduction="none")
    assert value.min().item() > 1000  # every anchor's positives are ~8000 nats away
    torch.testing.assert_close(value.double(), ref.detach(), rtol=1e-6, atol=1e-3)
    # float32 logits of ~1e4 carry ~1e-3 absolute error, so the gradient is good to ~1e-3 relative
    torch.testing.assert_close(_grad(value.sum(), x).double(), _grad(ref.sum(), x64), rtol=1e-3, atol=1e-2)
