"""CLDataset: data attributes, lazy subset/concat, transform groups, the batched path; streams and benchmarks."""

from __future__ import annotations


import pytest
import torch
from torch.utils.data import TensorDataset

from clkernel import Benchmark, CLDataset, Experience, Stream, iterate_minibatches


def tensors(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.arange(n) % 5


def test_items_are_x_y_t_from_tensors_and_from_a_torch_dataset():
    x, y = tensors()
    for ds in (CLDataset.from_tensors(x, y, 2), CLDataset.from_dataset(TensorDataset(x, y), task_labels=2)):
        xi, yi, ti = ds[4]
        assert torch.equal(xi, x[4]) and yi == y[4] and ti == 2
        assert len(ds) == 10 and ds.classes == [0, 1, 2, 3, 4] and ds.tasks == [2]
        assert torch.equal(ds[-1][0], x[9])
        with pytest.raises(IndexError, match="out of range"):
            ds[10]


def test_attributes_propagate_through_subset_and_concat():
    x, y = tensors()
    a = CLDataset.from_tensors(x, y, torch.arange(10) % 2, weight=torch.arange(10) * 10)
    b = CLDataset.from_dataset(TensorDataset(x + 100, y), task_labels=7, weight=torch.full((10,), -1))
    sub = a.subset([9, 3, 3])
    assert sub.targets.tolist() == [4, 3, 3] and sub.task_labels.tolist() == [1, 1, 1]
    assert sub.weight.tolist() == [90, 30, 30]
    both = (sub + b.subset([0, 1])).subset([4, 0])
    assert both.weight.tolist() == [-1, 90] and both.task_labels.tolist() == [7, 1]
    assert torch.equal(both[0][0], x[1] + 100) and torch.equal(both[1][0], x[9])
    with pytest.raises(AttributeError, match="no attribute or data attribute 'colour'"):
        both.colour


def test_concat_keeps_only_attributes_that_all_parts_have():
    x, y = tensors()
    a = CLDataset.from_tensors(x, y, weight=torch.ones(10))
    b = CLDataset.from_tensors(x, y)
    assert set((a + b).attributes) == {"targets", "task_labels"}


def iter_minibatches_of(ds):
    from clkernel import iterate_minibatches

    return iterate_minibatches(ds, len(ds), shuffle=False)


def test_thousands_of_successive_concats_and_subsets_keep_indexing_flat():
    """Nested wrappers would need one Python frame per level: 3,000 levels exceed the recursion limit."""
    x, y = tensors(50)
    base = CLDataset.from_tensors(x, y)
    ds = base.subset([0])
    for i in range(3000):
        ds = ds + base.subset([i % 50]) if i % 2 else ds.subset(torch.arange(len(ds)))
    assert len(ds) == 1501
    assert torch.equal(ds[1500][0], x[2999 % 50]) and int(ds[1500][1]) == int(y[2999 % 50])
    xb, yb, _ = next(iter_minibatches_of(ds))
    assert xb.shape[0] == len(ds) and torch.equal(yb, ds.targets)


def test_train_and_eval_views_apply_their_transforms():
    x, y = tensors()
    ds = CLDataset.from_tensors(x, y, transform=lambda b: b + 1, eval_transform=lambda b: b * 0)
    assert torch.equal(ds[0][0], x[0] + 1)
    assert torch.equal(ds.eval()[0][0], torch.zeros(3))
    assert torch.equal(ds.eval().train()[0][0], x[0] + 1)
    assert ds.eval().subset([2]).group == "eval"
    wrapped = CLDataset.from_dataset(TensorDataset(x, y), transform=lambda s: s - 1)
    assert torch.equal(wrapped.train()[3][0], x[3] - 1) and torch.equal(wrapped.eval()[3][0], x[3])
    mixed = ds + wrapped  # each part keeps its own transforms
    assert torch.equal(mixed[0][0], x[0] + 1) and torch.equal(mixed[10][0], x[0] - 1)
    replaced = mixed.with_transforms(eval_transform=lambda v: v * 2).eval()
    assert torch.equal(replaced[10][0], x[0] * 2)


def test_batched_path_returns_the_same_samples_as_per_item_indexing():
    x, y = tensors(20)
    calls = []

    def batched(b):
        calls.append(len(b))
        return b * 2

    a = CLDataset.from_tensors(x, y, 1, transform=batched)
    b = CLDataset.from_tensors(x + 5, y, 3, transform=batched)
    ds = (a.subset(torch.arange(0, 20, 2)) + b).subset(torch.randperm(30, generator=torch.Generator().manual_seed(1)))
    assert ds.is_batched
    idx = torch.tensor([0, 7, 29, 3, 15])
    bx, by, bt = ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    assert torch.equal(bx, torch.stack([it[0] for it in items]))
    assert torch.equal(by, torch.stack([it[1] for it in items])) and torch.equal(bt, torch.stack([it[2] for it in items]))
    calls.clear()
    first_ten = a.subset(torch.arange(10))
    batches = list(iterate_minibatches(first_ten, 4, shuffle=False))
    assert calls == [4, 4, 2]  # one transform call per minibatch, on the whole minibatch
    assert torch.equal(torch.cat([b[0] for b in batches]), x[:10] * 2)


def test_minibatches_over_a_plain_torch_dataset_use_a_dataloader():
    x, y = tensors(10)
    ds = CLDataset.from_dataset(TensorDataset(x, y))
    assert not ds.is_batched
    batches = list(iterate_minibatches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen[:, 0].tolist()) == sorted(x[:, 0].tolist())


def test_classes_class_subset_and_splits():
    x, y = tensors(10)
    ds = CLDataset.from_tensors(x, y, torch.arange(10) // 5)
    assert ds.class_subset([1, 3]).targets.tolist() == [1, 3, 1, 3]
    by_class = ds.split_by_class()
    assert list(by_class) == [0, 1, 2, 3, 4] and all(len(d) == 2 for d in by_class.values())
    by_task = ds.split_by_task()
    assert list(by_task) == [0, 1] and by_task[1].task_labels.tolist() == [1] * 5
    relabelled = ds.with_attribute("targets", ds.targets + 10)
    assert relabelled[0][1] == 10 and relabelled.classes == [10, 11, 12, 13, 14]


def test_bad_data_is_rejected_with_a_clear_message():
    x, y = tensors(10)
    with pytest.raises(ValueError, match="'targets' has 9 values, expected one per sample \\(10\\)"):
        CLDataset.from_tensors(x, y[:9])
    with pytest.raises(ValueError, match="'weight' has 3 values"):
        CLDataset.from_tensors(x, y, weight=torch.ones(3))
    with pytest.raises(ValueError, match="empty dataset"):
        CLDataset.from_tensors(x[:0], y[:0])
    with pytest.raises(ValueError, match="empty dataset"):
        Experience(0, TensorDataset(x[:0], y[:0]))
    with pytest.raises(TypeError, match="expects x as a tensor"):
        CLDataset.from_tensors([1, 2], y)


def test_stream_is_iterable_indexable_and_slices_keep_experience_indices():
    x, y = tensors(10)
    ds = CLDataset.from_tensors(x, y)
    stream = Stream("train", [Experience(i, ds.class_subset([i])) for i in range(5)])
    assert len(stream) == 5 and [e.index for e in stream] == [0, 1, 2, 3, 4]
    assert stream[2].classes == [2] and stream[2].stream is stream
    part = stream[1:4:2]
    assert isinstance(part, Stream) and part.name == "train" and [e.index for e in part] == [1, 3]
    assert stream[-1].index == 4
    bench = Benchmark({"train": stream, "valid": stream[:2]})
    assert bench.train_stream is stream and len(bench.valid_stream) == 2
    assert bench.num_classes == 5 and bench.input_shape == (3,)
    with pytest.raises(AttributeError, match="streams: train, valid"):
        bench.test_stream


def test_experience_knows_its_classes_and_task_labels():
    x, y = tensors(10)
    exp = Experience(3, CLDataset.from_tensors(x, y, torch.arange(10) % 2))
    assert exp.classes == [0, 1, 2, 3, 4] and exp.task_labels == [0, 1]
    with pytest.raises(ValueError, match="not exactly one"):
        exp.task_label
    assert Experience(0, CLDataset.from_tensors(x, y, 4)).task_label == 4
