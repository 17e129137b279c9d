"""Tests for ClassBalancedSampler: exact coverage, K × M composition, determinism, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from metriclearn.data import ClassBalancedSampler


def composition(batch: list[int], labels: np.ndarray) -> list[int]:
    """Sorted per-class counts of one batch."""
    return sorted(np.unique(labels[batch], return_counts=True)[1].tolist())


def random_case(seed: int) -> tuple[np.ndarray, int, int]:
    """Random label distribution (imbalanced, singletons, many or few classes) and random K, M."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 40))
    sizes = rng.integers(1, 60, num_classes) if seed % 2 else rng.geometric(0.05, num_classes)
    labels = rng.permutation(np.repeat(rng.permutation(1000)[:num_classes], sizes))
    m = int(rng.integers(1, 6))
    k = int(rng.integers(2, 9))
    return labels, k * m, m


@pytest.mark.parametrize("case", range(40))
def test_every_index_exactly_once_per_epoch(case: int) -> None:
    labels, batch_size, m = random_case(case)
    sampler = ClassBalancedSampler(labels, batch_size, m, seed=case)
    for epoch in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-len(labels) // batch_size)
        flat = np.concatenate(batches)
        assert np.array_equal(np.sort(flat), np.arange(len(labels)))
        assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
        assert sampler.epoch == epoch + 1 and sampler.position == 0


@pytest.mark.parametrize(("num_classes", "per_class", "k", "m"), [(10, 40, 4, 4), (7, 12, 3, 2), (50, 8, 8, 4)])
def test_balanced_data_gives_k_classes_of_m(num_classes: int, per_class: int, k: int, m: int) -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(num_classes), per_class))
    batches = list(ClassBalancedSampler(labels, k * m, m, seed=1))
    # per_class is a multiple of m, so the greedy fill never has to split a group; only the tail,
    # where fewer than k classes are left, may repeat a class
    perfect = [composition(b, labels) == [m] * k for b in batches]
    assert sum(perfect) >= len(batches) - 2
    assert all(len(set(labels[b])) >= 2 for b in batches[:-1])


def test_imbalanced_data_mostly_k_by_m() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(30), rng.integers(5, 40, 30))
    batches = list(ClassBalancedSampler(labels, 32, 4, seed=0))
    perfect = sum(composition(b, labels) == [4] * 8 for b in batches)
    assert perfect / len(batches) > 0.8


def test_fewer_classes_than_k_fills_batches_from_the_same_classes() -> None:
    labels = np.repeat(np.arange(3), 20)  # 3 classes but K = 8
    batches = list(ClassBalancedSampler(labels, 32, 4, seed=0))
    assert [len(b) for b in batches] == [32, 28]
    assert all(len(set(labels[b])) == 3 for b in batches)
    assert all(c % 4 == 0 for b in batches for c in composition(b, labels))


def test_dominant_class_ends_in_single_class_batches() -> None:
    labels = np.array([0] * 100 + [1] * 4 + [2] * 4)
    batches = list(ClassBalancedSampler(labels, 8, 4, seed=0))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(108))
    assert sum(len(set(labels[b])) > 1 for b in batches) == 2  # class 0 is paired with 1 and with 2


def test_deterministic_given_seed_and_epoch() -> None:
    labels, batch_size, m = random_case(3)
    a = ClassBalancedSampler(labels, batch_size, m, seed=7)
    b = ClassBalancedSampler(labels, batch_size, m, seed=7)
    c = ClassBalancedSampler(labels, batch_size, m, seed=8)
    epoch0 = list(a)
    assert epoch0 == list(b)
    assert epoch0 != list(c)
    epoch1 = list(a)
    assert epoch1 != epoch0  # the epoch changes the shuffle ...
    b.set_epoch(1)
    assert list(b) == epoch1  # ... reproducibly
    b.set_epoch(0)
    assert list(b) == epoch0
    assert [x.tolist() for x in a.batches(1)] == epoch1 and a.epoch == 2  # batches() does not move


def test_resume_mid_epoch_replays_the_remaining_batches() -> None:
    labels, batch_size, m = random_case(4)
    reference = ClassBalancedSampler(labels, batch_size, m, seed=2)
    reference.set_epoch(3)
    expected = list(reference)

    first = ClassBalancedSampler(labels, batch_size, m, seed=2)
    first.set_epoch(3)
    it = iter(first)
    consumed = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4

    resumed = ClassBalancedSampler(labels, batch_size, m, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a training loop calling set_epoch at the top of the epoch keeps the position
    assert consumed + list(resumed) == expected
    assert resumed.epoch == 4
    resumed.set_epoch(3)  # outside a restore, set_epoch starts the epoch over
    assert list(resumed) == expected


def test_resume_at_epoch_end_moves_to_next_epoch() -> None:
    labels = np.repeat(np.arange(4), 6)
    s = ClassBalancedSampler(labels, 8, 2, seed=0)
    state = s.state_dict() | {"epoch": 2, "position": len(s)}
    s.load_state_dict(state)
    assert (s.epoch, s.position) == (3, 0)
    fresh = ClassBalancedSampler(labels, 8, 2, seed=0)
    fresh.set_epoch(3)
    assert list(s) == list(fresh)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": 1}, r"sampler state has seed=1 but this sampler has seed=0"),
        ({"batch_size": 16}, r"batch_size=16 but this sampler has batch_size=8"),
        ({"num_samples": 5}, r"num_samples=5"),
        ({"labels_sha1": "x"}, r"labels_sha1='x'"),
        ({"position": 99}, r"state\['position'\] is 99 but an epoch has only 3 batches"),
        ({"epoch": -1}, r"state\['epoch'\] must be a non-negative integer, got -1"),
    ],
)
def test_load_state_dict_rejects_mismatches(change: dict, match: str) -> None:
    s = ClassBalancedSampler(np.repeat(np.arange(4), 6), 8, 2, seed=0)
    with pytest.raises(ValueError, match=match):
        s.load_state_dict(s.state_dict() | change)


@pytest.mark.parametrize(
    ("labels", "batch_size", "m", "error", "match"),
    [
        ([0, 1] * 4, 10, 4, ValueError, r"batch_size \(10\) must be a multiple of samples_per_class \(4\)"),
        ([0, 1] * 4, 4, 4, ValueError, r"batch_size \(4\) / samples_per_class \(4\) gives 1 class per batch"),
        ([3] * 8, 8, 4, ValueError, r"labels hold a single class \(3\)"),
        ([], 8, 4, ValueError, r"labels is empty"),
        ([0, 1], 0, 1, ValueError, r"batch_size must be a positive integer, got 0"),
        ([0, 1], 4, 2.0, TypeError, r"samples_per_class must be an integer, got 2\.0"),
        ([[0, 1]], 4, 2, ValueError, r"labels must be a 1-D array"),
    ],
)
def test_constructor_errors(labels: list, batch_size: int, m: int, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ClassBalancedSampler(labels, batch_size, m)


def test_works_as_a_dataloader_batch_sampler() -> None:
    labels = torch.arange(40) % 5
    dataset = TensorDataset(torch.arange(40, dtype=torch.float32)[:, None], labels)
    sampler = ClassBalancedSampler(labels, batch_size=10, samples_per_class=2, seed=0)
    seen = []
    for x, y in DataLoader(dataset, batch_sampler=sampler):
        assert x.shape == (10, 1) and torch.bincount(y, minlength=5).tolist() == [2] * 5
        seen += x[:, 0].long().tolist()
    assert sorted(seen) == list(range(40))


def test_string_labels() -> None:
    labels = ["a", "b", "c"] * 4
    batches = list(ClassBalancedSampler(labels, 6, 2))
    assert sorted(i for b in batches for i in b) == list(range(12))


def test_length_buckets_keep_every_batch_s_classes_and_cut_padding() -> None:
    """On the fortunes (12 uneven classes, word counts as lengths) the padded tokens drop from 201k to 92k; here
    a synthetic set of the same shape: skewed lengths, more classes than a batch holds."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(12), [60, 55, 48, 40, 37, 33, 30, 25, 18, 12, 9, 7])  # 374: batch 24 does not divide
    lengths = np.ceil(rng.lognormal(3, 0.8, size=len(labels))).astype(int)  # tokens: mostly short, a long tail
    plain = ClassBalancedSampler(labels, batch_size=24, samples_per_class=4, seed=5)
    bucketed = ClassBalancedSampler(labels, batch_size=24, samples_per_class=4, seed=5, lengths=lengths)
    padded = {}
    for name, sampler in (("plain", plain), ("bucketed", bucketed)):
        batches = sampler.batches(epoch=2)
        assert sorted(i for b in batches for i in b) == list(range(len(labels)))  # each sample once
        padded[name] = sum(len(b) * int(lengths[b].max()) for b in batches)
        padded[name + "_classes"] = sorted(np.bincount(labels[b], minlength=12).tolist() for b in batches)
    assert padded["plain_classes"] == padded["bucketed_classes"]  # same class make-up, batch by batch
    assert padded["bucketed"] < 0.7 * padded["plain"]  # tokens a transformer pads to: far fewer
    again = ClassBalancedSampler(labels, 24, 4, seed=5, lengths=lengths).batches(epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(again, bucketed.batches(epoch=2)))  # deterministic: resumable
    with pytest.raises(ValueError, match="lengths has 3 entries but labels has 374"):
        ClassBalancedSampler(labels, 24, 4, lengths=[1, 2, 3])


def test_as_tensors_yields_the_same_batches_as_int64_tensors() -> None:
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3 + [3])  # uneven, one singleton
    lists = ClassBalancedSampler(labels, 6, 2, seed=3)
    tensors = ClassBalancedSampler(labels, 6, 2, seed=3, as_tensors=True)
    for epoch in (0, 1):
        lists.set_epoch(epoch)
        tensors.set_epoch(epoch)
        got = list(tensors)
        assert all(isinstance(b, torch.Tensor) and b.dtype == torch.int64 for b in got)
        assert [b.tolist() for b in got] == list(lists)
