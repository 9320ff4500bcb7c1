"""New-instances generator: sample splits, class balance, coverage, errors."""

from __future__ import annotations

import pytest
import torch

from clkernel_benchmarks import ni_benchmark


def _uids(bm):
    return [e.dataset.uid for e in bm.train_stream]


def test_balanced_experiences_hold_every_class_in_near_equal_shares(toy):
    train, test = toy(n_classes=5, per_class=11)  # 11 per class over 3 experiences: 4, 4, 3
    bm = ni_benchmark(train, test, 3, seed=0, balance_experiences=True)
    assert len(bm.train_stream) == 3
    for exp in bm.train_stream:
        assert exp.classes == list(range(5)) and exp.dataset.classes == list(range(5))
        counts = torch.bincount(exp.dataset.targets, minlength=5)
        assert set(counts.tolist()) <= {3, 4}
    sizes = [len(e.dataset) for e in bm.train_stream]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 55
    assert torch.equal(torch.cat(_uids(bm)).sort().values, torch.arange(55))


def test_unbalanced_split_covers_every_sample_once_in_equal_sizes(toy):
    train, test = toy(n_classes=4, per_class=10)
    bm = ni_benchmark(train, test, 6, seed=1)
    sizes = [len(e.dataset) for e in bm.train_stream]
    assert sizes == [7, 7, 7, 7, 6, 6]
    assert torch.equal(torch.cat(_uids(bm)).sort().values, torch.arange(40))
    same = ni_benchmark(train, test, 6, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_uids(bm), _uids(same)))
    other = ni_benchmark(train, test, 6, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(_uids(bm), _uids(other)))


def test_no_shuffle_cuts_the_dataset_in_order(toy):
    train, test = toy(n_classes=4, per_class=5)
    bm = ni_benchmark(train, test, 4, shuffle=False)
    assert [e.dataset.uid.tolist() for e in bm.train_stream] == [list(range(i, i + 5)) for i in range(0, 20, 5)]


def test_test_stream_is_the_whole_test_set(toy):
    train, test = toy(n_classes=4, per_class=5, test_per_class=3)
    bm = ni_benchmark(train, test, 2, seed=0)
    assert len(bm.test_stream) == 1 and len(bm.test_stream[0].dataset) == 12
    assert bm.test_stream[0].classes == [0, 1, 2, 3]
    assert torch.equal(bm.test_stream[0].dataset.uid, torch.arange(12))


def test_balance_needs_enough_samples_per_class(toy):
    train, test = toy(n_classes=3, per_class=2)
    with pytest.raises(ValueError, match="class .* has 2 training samples, fewer than n_experiences=3"):
        ni_benchmark(train, test, 3, balance_experiences=True)
    with pytest.raises(ValueError, match="only 6 samples"):
        ni_benchmark(train, test, 7)


def test_fixed_exp_assignment(toy):
    train, test = toy(n_classes=2, per_class=3)
    bm = ni_benchmark(train, test, fixed_exp_assignment=[[5, 0], [1, 2, 3]])
    assert [e.dataset.uid.tolist() for e in bm.train_stream] == [[5, 0], [1, 2, 3]]
    with pytest.raises(ValueError, match="more than one experience"):
        ni_benchmark(train, test, fixed_exp_assignment=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="outside 0..5"):
        ni_benchmark(train, test, fixed_exp_assignment=[[0, 6]])
