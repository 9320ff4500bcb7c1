"""From datasets / tensors, permuted and rotated, online, validation stream, task-incremental."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from clkernel import CLDataset, iterate_minibatches
from clkernel_benchmarks import (OnlineExperience, benchmark_with_validation_stream, dataset_benchmark,
                                 nc_benchmark, ni_benchmark, online_benchmark, permuted_benchmark,
                                 rotated_benchmark, split_online_stream, task_incremental_benchmark,
                                 tensors_benchmark)

# --------------------------------------------------------------------------- from datasets / tensors


def test_dataset_benchmark_one_experience_per_dataset_with_task_labels(toy):
    parts = [toy(n_classes=2, per_class=3, seed=s) for s in range(3)]
    trains, tests = [p[0] for p in parts], [p[1] for p in parts]
    bm = dataset_benchmark(trains, tests, task_labels=True)
    assert len(bm.train_stream) == len(bm.test_stream) == 3
    for i in range(3):
        assert bm.train_stream[i].task_labels == [i] and bm.test_stream[i].dataset.tasks == [i]
        assert len(bm.train_stream[i].dataset) == 6 and len(bm.test_stream[i].dataset) == 4
    assert [e.task_label for e in dataset_benchmark(trains, tests, task_labels=[7, 7, 9]).train_stream] == [7, 7, 9]
    own = [CLDataset.from_tensors(torch.zeros(2, 3), torch.tensor([0, 1]), 5)] * 3
    assert {e.task_label for e in dataset_benchmark(own, own).train_stream} == {5}
    with pytest.raises(ValueError, match="one test dataset per training dataset"):
        dataset_benchmark(trains, tests[:2])
    with pytest.raises(ValueError, match="task_labels must be"):
        dataset_benchmark(trains, tests, task_labels=[0, 1])


def test_tensors_benchmark_keeps_the_batched_path():
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    calls = []

    def transform(batch):
        calls.append(batch.shape[0])
        return batch * 2

    bm = tensors_benchmark([(x, y), (x[:3], y[:3], 4)], [(x[:2], y[:2]), (x[2:], y[2:], 4)],
                           train_transform=transform)
    exp = bm.train_stream[0]
    assert exp.dataset.is_batched and len(exp.dataset) == 6
    assert bm.train_stream[1].task_label == 4 and bm.test_stream[1].task_label == 4
    xb, yb, _ = exp.dataset.get_batch(torch.tensor([5, 0, 3]))
    assert calls == [3] and torch.equal(xb, x[[5, 0, 3]] * 2) and yb.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="train item 0 must be"):
        tensors_benchmark([(x,)], [(x, y)])
    with pytest.raises(ValueError, match="one row per target"):
        tensors_benchmark([(x, y[:3])], [(x, y)])


# --------------------------------------------------------------------------- permuted / rotated


def test_permuted_experiences_apply_distinct_seeded_permutations_batched(toy):
    train, test = toy(n_classes=3, per_class=4)
    calls = []

    def to_float(batch):
        calls.append(tuple(batch.shape))
        return batch.float()

    train, test = train.with_transforms(to_float, to_float), test.with_transforms(to_float, to_float)
    bm = permuted_benchmark(train, test, 4, seed=7)
    perms = [e.info["permutation"] for e in bm.train_stream]
    assert all(sorted(p.tolist()) == list(range(16)) for p in perms)
    assert len({tuple(p.tolist()) for p in perms}) == 4
    assert all(torch.equal(a, b) for a, b in zip(perms, [e.info["permutation"] for e in
                                                         permuted_benchmark(train, test, 4, seed=7).train_stream]))
    assert not torch.equal(perms[0], permuted_benchmark(train, test, 4, seed=8).train_stream[0].info["permutation"])
    raw = train.with_transforms(None, None)
    idx = torch.tensor([3, 1, 8])
    for i, exp in enumerate(bm.train_stream):
        assert exp.dataset.is_batched and len(exp.dataset) == len(train)
        assert torch.equal(exp.dataset.targets, train.targets)
        calls.clear()
        xb, _, _ = exp.dataset.get_batch(idx)
        assert calls == [(3, 1, 4, 4)]  # the dataset's transform ran once, on the whole permuted batch
        expected = raw.get_batch(idx)[0].flatten(-2)[..., perms[i]].reshape(3, 1, 4, 4).float()
        assert torch.equal(xb, expected)
        assert torch.equal(bm.test_stream[i].dataset.eval()[0][0], test.eval()[0][0].flatten()[perms[i]].view(1, 4, 4))
    assert {t for e in bm.train_stream for t in e.dataset.tasks} == {0}
    assert [e.task_label for e in permuted_benchmark(train, test, 3, return_task_id=True).test_stream] == [0, 1, 2]


def test_permutation_also_works_for_per_sample_datasets():
    class Plain(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * i, i % 2

    bm = permuted_benchmark(Plain(), Plain(), 2, seed=0)
    perm = bm.train_stream[1].info["permutation"]
    x, y, _ = bm.train_stream[1].dataset[2]
    assert torch.equal(x.flatten(), (torch.arange(6.0) + 20)[perm]) and int(y) == 0
    batch = next(iterate_minibatches(bm.train_stream[1].dataset, 5, shuffle=False))
    assert batch[0].shape == (5, 2, 3)


def test_rotation_matches_torchvision_and_angles_follow_seed(toy):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    train, test = toy(n_classes=2, per_class=3)
    bm = rotated_benchmark(train, test, rotations=[0, 90, -33.5])
    assert [e.info["rotation"] for e in bm.train_stream] == [0.0, 90.0, -33.5]
    idx = torch.arange(6)
    raw = train.get_batch(idx)[0]
    for exp in bm.train_stream:
        got = exp.dataset.get_batch(idx)[0]
        want = F.rotate(raw, exp.info["rotation"], interpolation=InterpolationMode.NEAREST, fill=0)
        assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert torch.equal(bm.train_stream[1].dataset.get_batch(idx)[0], raw.rot90(1, dims=(-2, -1)))
    angles = rotated_benchmark(train, test, 5, seed=3).info["rotations"]
    assert angles == rotated_benchmark(train, test, 5, seed=3).info["rotations"]
    assert angles != rotated_benchmark(train, test, 5, seed=4).info["rotations"]
    assert all(-180 <= a <= 180 and a == int(a) for a in angles)
    with pytest.raises(ValueError, match="rotations lists 2 angles but n_experiences=3"):
        rotated_benchmark(train, test, 3, rotations=[1, 2])


# --------------------------------------------------------------------------- online


def test_online_split_covers_every_sample_exactly_once(toy):
    train, test = toy(n_classes=4, per_class=5)
    bm = nc_benchmark(train, test, 2, seed=0)  # two experiences of 10 samples
    stream = split_online_stream(bm.train_stream, 3, seed=0)
    assert [len(e.dataset) for e in stream] == [3, 3, 3, 1, 3, 3, 3, 1]
    assert all(isinstance(e, OnlineExperience) for e in stream) and [e.index for e in stream] == list(range(8))
    for origin in bm.train_stream:
        mine = [e for e in stream if e.origin_experience is origin]
        assert [e.subexp_index for e in mine] == [0, 1, 2, 3]
        assert [e.is_first_subexp for e in mine] == [True, False, False, False]
        assert [e.is_last_subexp for e in mine] == [False, False, False, True]
        got = torch.cat([e.dataset.uid for e in mine]).sort().values
        assert torch.equal(got, origin.dataset.uid.sort().values)
        assert all(set(e.classes) <= set(origin.classes) for e in mine)
    assert torch.equal(torch.cat([e.dataset.uid for e in stream]).sort().values, torch.arange(20))


def test_online_shuffle_seed_and_drop_last(toy):
    train, test = toy(n_classes=2, per_class=5)
    bm = ni_benchmark(train, test, 1, shuffle=False)
    ordered = split_online_stream(bm.train_stream, 4, shuffle=False)
    assert [e.dataset.uid.tolist() for e in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    a = [e.dataset.uid.tolist() for e in split_online_stream(bm.train_stream, 4, seed=5)]
    assert a == [e.dataset.uid.tolist() for e in split_online_stream(bm.train_stream, 4, seed=5)]
    assert a != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = split_online_stream(bm.train_stream, 4, shuffle=False, drop_last=True)
    assert [len(e.dataset) for e in dropped] == [4, 4] and dropped[1].is_last_subexp
    with pytest.raises(ValueError, match="experience_size must be a positive integer"):
        split_online_stream(bm.train_stream, 0)


def test_online_benchmark_splits_the_train_stream_only(toy):
    train, test = toy(n_classes=4, per_class=5)
    bm = nc_benchmark(train, test, 2, seed=0)
    online = online_benchmark(bm, 5, seed=1)
    assert len(online.train_stream) == 4 and online.test_stream is bm.test_stream
    assert online.classes_order == bm.classes_order
    with pytest.raises(ValueError, match="no stream 'valid'"):
        online_benchmark(bm, 5, streams=["valid"])


# --------------------------------------------------------------------------- validation stream


@pytest.mark.parametrize("class_balanced", [False, True])
def test_validation_stream_is_disjoint_from_the_new_train_stream(toy, class_balanced):
    train, test = toy(n_classes=4, per_class=10)
    bm = nc_benchmark(train, test, 2, seed=0)
    out = benchmark_with_validation_stream(bm, 0.2, class_balanced=class_balanced, seed=0)
    assert list(out.streams) == ["train", "valid", "test"] and out.test_stream is bm.test_stream
    for old, new, valid in zip(bm.train_stream, out.train_stream, out.valid_stream):
        kept, held = set(new.dataset.uid.tolist()), set(valid.dataset.uid.tolist())
        assert not kept & held and kept | held == set(old.dataset.uid.tolist())
        assert len(held) == 4 and valid.index == old.index
        if class_balanced:
            assert torch.bincount(valid.dataset.targets).tolist().count(2) == 2  # 2 of each of its 2 classes
    again = benchmark_with_validation_stream(bm, 0.2, class_balanced=class_balanced, seed=0)
    assert again.valid_stream[0].dataset.uid.tolist() == out.valid_stream[0].dataset.uid.tolist()


def test_validation_stream_errors(toy):
    train, test = toy(n_classes=2, per_class=2)
    bm = nc_benchmark(train, test, 2, seed=0)  # experiences of 2 samples
    with pytest.raises(ValueError, match=r"benchmark_with_validation_stream: validation_size must be a number in "
                                         r"\[0, 1\), got 1.5"):
        benchmark_with_validation_stream(bm, 1.5)
    with pytest.raises(ValueError, match=r"validation_size must be a number in \(0, 1\), got 0"):
        benchmark_with_validation_stream(bm, 0)
    with pytest.raises(ValueError, match="validation part empty"):
        benchmark_with_validation_stream(bm, 0.1)
    with pytest.raises(ValueError, match="already has a stream 'test'"):
        benchmark_with_validation_stream(bm, 0.5, output_stream="test")


# --------------------------------------------------------------------------- task-incremental


def test_task_incremental_adds_a_task_label_per_experience(toy):
    train, test = toy(n_classes=6, per_class=4)
    bm = nc_benchmark(train, test, 3, seed=0)
    ti = task_incremental_benchmark(bm)
    for stream in (ti.train_stream, ti.test_stream):
        assert [e.task_label for e in stream] == [0, 1, 2]
        assert [e.dataset.tasks for e in stream] == [[0], [1], [2]]
    assert [e.classes for e in ti.train_stream] == [e.classes for e in bm.train_stream]
    assert {t for e in bm.train_stream for t in e.dataset.tasks} == {0}  # the original is untouched
    online = task_incremental_benchmark(online_benchmark(bm, 3, seed=0), task_labels=[10, 11, 12])
    assert [e.task_label for e in online.train_stream] == [10] * 3 + [11] * 3 + [12] * 3
    with pytest.raises(ValueError, match="task_labels has 2 labels"):
        task_incremental_benchmark(bm, task_labels=[0, 1])
