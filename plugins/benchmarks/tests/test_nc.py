"""Class-incremental generator: class partition and order, task labels, class-id remapping, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from clkernel import CLDataset
from clkernel_benchmarks import ScenarioBenchmark, nc_benchmark


def test_classes_are_partitioned_and_each_experience_holds_exactly_its_classes(toy):
    train, test = toy(n_classes=10, per_class=6, test_per_class=2)
    bm = nc_benchmark(train, test, 5, seed=3)
    assert isinstance(bm, ScenarioBenchmark)
    assert len(bm.train_stream) == len(bm.test_stream) == 5
    groups = bm.classes_in_experience
    assert sorted(c for g in groups for c in g) == list(range(10))
    assert [len(g) for g in groups] == [2] * 5 == bm.n_classes_per_exp
    for i, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert tr.classes == te.classes == groups[i] == sorted(bm.classes_order[2 * i:2 * i + 2])
        assert tr.dataset.classes == groups[i] and te.dataset.classes == groups[i]
        assert len(tr.dataset) == 12 and len(te.dataset) == 4  # every sample of those classes, none other
    all_uids = torch.cat([e.dataset.uid for e in bm.train_stream]).sort().values
    assert torch.equal(all_uids, torch.arange(60))


def test_class_order_follows_seed_and_shuffle(toy):
    train, test = toy()
    a = nc_benchmark(train, test, 5, seed=1).classes_order
    assert a == nc_benchmark(train, test, 5, seed=1).classes_order
    assert a != nc_benchmark(train, test, 5, seed=2).classes_order
    assert sorted(a) == list(range(10)) and a != list(range(10))
    assert nc_benchmark(train, test, 5, shuffle=False, seed=1).classes_order == list(range(10))


def test_fixed_class_order_is_used_as_given(toy):
    train, test = toy()
    order = [9, 3, 0, 7, 1, 2, 8, 4, 6, 5]
    bm = nc_benchmark(train, test, 5, fixed_class_order=order, seed=123)
    assert bm.classes_order == order
    assert bm.classes_in_experience == [[3, 9], [0, 7], [1, 2], [4, 8], [5, 6]]
    assert [e.info["original_classes"] for e in bm.train_stream] == bm.classes_in_experience


@pytest.mark.parametrize("order, words", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], ["misses", "[9]"]),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9], ["repeats", "[9]"]),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12], ["does not contain", "[12]"]),
])
def test_wrong_fixed_class_order_is_an_error_naming_the_classes(toy, order, words):
    train, test = toy()
    with pytest.raises(ValueError, match="fixed_class_order") as info:
        nc_benchmark(train, test, 5, fixed_class_order=order)
    for word in words:
        assert word in str(info.value)


def test_task_labels_with_return_task_id(toy):
    train, test = toy()
    bm = nc_benchmark(train, test, 5, return_task_id=True, seed=0)
    for stream in (bm.train_stream, bm.test_stream):
        for i, exp in enumerate(stream):
            assert exp.task_label == i and exp.dataset.tasks == [i]
    plain = nc_benchmark(train, test, 5, seed=0)
    assert {t for e in plain.train_stream for t in e.dataset.tasks} == {0}


def test_class_ids_from_zero_in_each_exp_remaps_train_and_test_alike(toy):
    train, test = toy()
    bm = nc_benchmark(train, test, 5, seed=4, return_task_id=True, class_ids_from_zero_in_each_exp=True)
    order = bm.classes_order_original_ids
    for stream in (bm.train_stream, bm.test_stream):
        for i, exp in enumerate(stream):
            assert exp.classes == [0, 1]
            first, second = order[2 * i], order[2 * i + 1]
            expected = torch.where(exp.dataset.orig == first, 0, 1)
            assert torch.equal(exp.dataset.targets, expected)
            assert set(exp.dataset.orig.tolist()) == {first, second}
    assert bm.classes_order == [0, 1] * 5 and bm.num_classes == 2
    assert bm.class_mapping == {c: j % 2 for j, c in enumerate(order)}


def test_class_ids_from_zero_from_first_exp_numbers_classes_by_appearance(toy):
    train, test = toy()
    bm = nc_benchmark(train, test, 5, seed=4, class_ids_from_zero_from_first_exp=True)
    order = bm.classes_order_original_ids
    assert bm.classes_order == list(range(10))
    assert bm.classes_in_experience == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    position = {c: j for j, c in enumerate(order)}
    for exp in list(bm.train_stream) + list(bm.test_stream):
        assert exp.dataset.targets.tolist() == [position[c] for c in exp.dataset.orig.tolist()]
    with pytest.raises(ValueError, match="exclude each other"):
        nc_benchmark(train, test, 5, class_ids_from_zero_in_each_exp=True, class_ids_from_zero_from_first_exp=True)


def test_uneven_class_counts_give_the_first_experiences_one_class_more(toy):
    train, test = toy()
    assert nc_benchmark(train, test, 3, seed=0).n_classes_per_exp == [4, 3, 3]
    assert nc_benchmark(train, test, 4, seed=0).n_classes_per_exp == [3, 3, 2, 2]
    train7, test7 = toy(n_classes=7)
    assert nc_benchmark(train7, test7, 7, seed=0).n_classes_per_exp == [1] * 7


def test_per_exp_classes_and_first_exp_with_half_classes(toy):
    train, test = toy()
    assert nc_benchmark(train, test, 4, per_exp_classes={0: 4}, seed=0).n_classes_per_exp == [4, 2, 2, 2]
    assert nc_benchmark(train, test, 3, per_exp_classes={2: 1}, seed=0).n_classes_per_exp == [5, 4, 1]
    assert nc_benchmark(train, test, per_exp_classes=[5, 3, 2], seed=0).n_classes_per_exp == [5, 3, 2]
    bm = nc_benchmark(train, test, 3, first_exp_with_half_classes=True, seed=0)
    assert bm.n_classes_per_exp == [5, 3, 2]
    with pytest.raises(ValueError, match="adds up to 9"):
        nc_benchmark(train, test, per_exp_classes=[5, 3, 1])
    with pytest.raises(ValueError, match="not both"):
        nc_benchmark(train, test, 3, per_exp_classes={0: 2}, first_exp_with_half_classes=True)
    with pytest.raises(ValueError, match="left for"):
        nc_benchmark(train, test, 4, per_exp_classes={0: 8})


def test_bad_experience_counts_are_errors(toy):
    train, test = toy(n_classes=4)
    with pytest.raises(ValueError, match="only 4 classes"):
        nc_benchmark(train, test, 5)
    with pytest.raises(ValueError, match="n_experiences must be a positive integer"):
        nc_benchmark(train, test, 0)
    with pytest.raises(ValueError, match="needs n_experiences"):
        nc_benchmark(train, test)


def test_test_set_lacking_an_experience_s_classes_is_an_error(toy):
    train, _ = toy(n_classes=4)
    test = CLDataset.from_tensors(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"test set has no sample of the classes \[2, 3\]"):
        nc_benchmark(train, test, 2, shuffle=False)


def test_transforms_replace_the_datasets_own_by_group(toy):
    train, test = toy()
    bm = nc_benchmark(train, test, 5, seed=0, train_transform=lambda x: x.float() + 1000,
                      eval_transform=lambda x: x.float() - 1000)
    ds = bm.train_stream[0].dataset
    assert ds.train()[0][0].min() >= 1000 and ds.eval()[0][0].max() <= -1000 + 255
    assert bm.test_stream[0].dataset.eval()[0][0].max() <= -1000 + 255


def test_plain_torch_datasets_are_accepted():
    x, y = torch.randn(20, 3), torch.arange(4).repeat(5)
    bm = nc_benchmark(TensorDataset(x, y), TensorDataset(x[:8], y[:8]), 2, shuffle=False)
    assert bm.classes_in_experience == [[0, 1], [2, 3]]
    xb, yb, tb = bm.train_stream[1].dataset[0]
    assert int(yb) in (2, 3) and xb.shape == (3,)
