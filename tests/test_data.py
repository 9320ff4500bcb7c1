"""CLDataset: data attributes, lazy subset/concat, transform groups, the batched path; streams and benchmarks."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

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
    assert torch.equal(by, torch.stack([it[1] for it in items]))
    assert torch.equal(bt, torch.stack([it[2] for it in items]))
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


# ----------------------------------------------------------------- label dtypes (issue 10, item 3)


def test_uint8_targets_of_30_classes_become_int64_and_give_the_right_confusion_matrix():
    """30 classes x 10 samples, predicted as the next class: in uint8, ``y * 30 + p`` wraps past 255."""
    y = torch.arange(30, dtype=torch.uint8).repeat(10)
    ds = CLDataset.from_tensors(torch.randn(300, 2, generator=torch.Generator().manual_seed(0)), y)
    assert ds.targets.dtype == torch.int64 and ds.classes == list(range(30))
    _, yb, tb = next(iterate_minibatches(ds, 300, shuffle=False))
    assert yb.dtype == torch.int64 and tb.dtype == torch.int64
    pred = (yb + 1) % 30
    confusion = torch.bincount(yb * 30 + pred, minlength=900).reshape(30, 30)
    expected = torch.zeros(30, 30, dtype=torch.long)  # by hand: row c has its 10 samples in column c + 1 (mod 30)
    for c in range(30):
        expected[c, (c + 1) % 30] = 10
    assert torch.equal(confusion, expected)
    assert torch.bincount(ds.targets).tolist() == [10] * 30


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                                   torch.float16, torch.float32, torch.float64])
def test_any_integral_labels_become_int64_on_every_construction_path(dtype):
    values = torch.tensor([0, 1, 1, 0], dtype=dtype)
    x = torch.zeros(4, 2)
    built = [CLDataset.from_tensors(x, values, values),
             CLDataset.from_dataset(TensorDataset(x, values), task_labels=values),
             CLDataset.from_dataset(TensorDataset(x, values), targets=values, task_labels=values),
             CLDataset.from_tensors(x, torch.zeros(4)).with_attribute("targets", values)
             .with_attribute("task_labels", values)]
    for ds in built:
        assert ds.targets.dtype == ds.task_labels.dtype == torch.int64
        assert ds.targets.tolist() == ds.task_labels.tolist() == [0, 1, 1, 0]
        assert ds[1][1].dtype == torch.int64 and ds.get_batch(torch.arange(4))[2].dtype == torch.int64


def test_float_task_labels_are_int_task_ids_a_multi_head_model_can_look_up():
    ds = CLDataset.from_tensors(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.ones(4))
    assert ds.tasks == [1] and type(ds.tasks[0]) is int and ds.task_labels.dtype == torch.int64
    heads = torch.nn.ModuleDict({"1": torch.nn.Linear(2, 2)})  # heads keyed by str(task), as multi-head models do
    assert heads[str(ds.tasks[0])] is heads["1"]
    assert list(ds.split_by_task()) == [1]


def test_other_integer_attributes_become_int64_floats_and_bools_keep_their_dtype():
    ds = CLDataset.from_tensors(torch.zeros(3, 2), [0, 1, 2], weight=torch.ones(3), count=torch.tensor(
        [200, 250, 255], dtype=torch.uint8), mask=torch.tensor([True, False, True]), offset=-1)
    assert ds.weight.dtype == torch.float32 and ds.mask.dtype == torch.bool
    assert ds.count.dtype == torch.int64 and int(ds.count.sum()) == 705  # 200 + 250 + 255, no uint8 wrap
    assert ds.offset.tolist() == [-1, -1, -1]  # other attributes may be negative


def _from_tensors(**kwargs):
    return CLDataset.from_tensors(torch.zeros(4, 2), kwargs.get("y", [0, 1, 2, 3]), kwargs.get("t", 0))


REFUSED = {
    "fraction": (lambda: _from_tensors(y=[0, 0.5, 1, 2]), ValueError, "'targets' must hold whole numbers.*0.5 at "
                 "sample 1"),
    "fractional-task": (lambda: _from_tensors(t=torch.tensor([0.0, 0.0, 1.5, 1.0])), ValueError,
                        "'task_labels' must hold whole.*1.5"),
    "nan": (lambda: _from_tensors(y=torch.tensor([0.0, float("nan"), 1.0, 2.0])), ValueError, "'targets'.*nan"),
    "strings": (lambda: _from_tensors(y=["cat", "dog", "cat", "dog"]), TypeError, "'targets' must be numbers"),
    "one-hot": (lambda: _from_tensors(y=torch.eye(4)), ValueError, "'targets' must be one integer id per sample.*"
                "one-hot"),
    "negative": (lambda: _from_tensors(y=[0, 1, -1, 2]), ValueError, "'targets' must hold ids 0, 1, 2, ..., got -1 "
                 "at sample 2"),
    "negative-task": (lambda: _from_tensors(t=-3), ValueError, "'task_labels' must hold ids.*-3"),
    "dataset-items": (lambda: CLDataset.from_dataset(TensorDataset(torch.zeros(2, 1), torch.tensor([0.5, 1.0]))),
                      ValueError, "'targets' must hold whole numbers"),
    "dataset-tasks": (lambda: CLDataset.from_dataset(TensorDataset(torch.zeros(2, 1)), targets=[0, 1],
                                                     task_labels=[0.25, 1]), ValueError,
                      "'task_labels' must hold whole numbers"),
    "with-one-hot": (lambda: _from_tensors().with_attribute("targets", torch.nn.functional.one_hot(torch.arange(4))),
                     ValueError, "'targets' must be one integer id per sample"),
    "with-negative-task": (lambda: _from_tensors().with_attribute("task_labels", [0, 0, -1, 0]), ValueError,
                           "'task_labels' must hold ids"),
    "other-strings": (lambda: _from_tensors().with_attribute("colour", ["red"] * 4), TypeError,
                      "'colour' must be numbers"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_labels_that_are_not_ids_are_refused_naming_the_attribute(case):
    build, error, match = REFUSED[case]
    with pytest.raises(error, match=match):
        build()


# ----------------------------------------------------------------- wrapped datasets' labels (issue 10, item 4)


class VisionLike(torch.utils.data.Dataset):
    """torchvision's shape: ``data``, ``targets``, ``transform``, ``target_transform``; items ``(x, int label)``."""

    def __init__(self, targets, transform=None, target_transform=None):
        self.targets = torch.tensor(targets)
        self.data = torch.arange(len(targets) * 2, dtype=torch.float32).reshape(-1, 2)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x, y = self.data[i], int(self.targets[i])
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y


class Relabelled(VisionLike):
    """Labels differ from ``.targets`` with no ``target_transform``: the items are the truth."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, y + 10


RAW = [7, 2, 1, 0, 4, 1, 4]


@pytest.mark.parametrize("dataset, expected", [
    (VisionLike(RAW), RAW),
    (VisionLike(RAW, target_transform=lambda y: 9 - y), [2, 7, 8, 9, 5, 8, 5]),  # 9 - RAW, by hand
    (Relabelled(RAW), [17, 12, 11, 10, 14, 11, 14]),
    (Relabelled(RAW, target_transform=lambda y: 9 - y), [12, 17, 18, 19, 15, 18, 15]),
])
def test_labels_of_a_wrapped_dataset_are_the_ones_its_items_carry(dataset, expected):
    ds = CLDataset.from_dataset(dataset)
    assert ds.targets.tolist() == expected and ds.targets.dtype == torch.int64
    assert [int(ds[i][1]) for i in range(len(ds))] == [dataset[i][1] for i in range(len(dataset))] == expected
    batches = list(iterate_minibatches(ds, 3, shuffle=False))
    assert torch.cat([b[1] for b in batches]).tolist() == expected
    assert torch.equal(torch.cat([b[0] for b in batches]), dataset.data)
    assert CLDataset.from_dataset(dataset, targets=RAW).targets.tolist() == RAW  # explicit targets still win


SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "MNIST" / "raw"


def test_real_mnist_target_transform_gives_the_dataset_s_labels():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST not found in {SHARED_MNIST} (nothing downloads in tests)")
    mnist = torchvision.datasets.MNIST(SHARED_MNIST.parents[1], train=False, download=False,
                                       transform=torchvision.transforms.PILToTensor(),
                                       target_transform=lambda y: 9 - y)
    ds = CLDataset.from_dataset(mnist)
    assert mnist[0][1] == 2 and int(ds[0][1]) == 2  # the first test digit is a 7
    assert torch.equal(ds.targets, 9 - mnist.targets)
    _, yb, _ = next(iterate_minibatches(ds.subset(torch.arange(64)), 64, shuffle=False))
    assert yb.tolist() == [mnist[i][1] for i in range(64)]


# ----------------------------------------------------------------- sources a view keeps (issue 10, item 5)


def test_a_subset_keeps_only_the_sources_its_samples_use_and_reads_them_right():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 2, generator=g) for _ in range(6)]
    alive = [weakref.ref(x) for x in xs]
    ds = CLDataset.from_tensors(xs[0], [0, 1, 2], part=0)
    for k in range(1, 6):
        ds = ds + CLDataset.from_tensors(xs[k], [0, 1, 2], part=k)
    picks = [16, 4, 10, 3, 17]  # samples of parts 5, 1, 3, 1, 5: (part, row) = divmod(pick, 3)
    kept = ds.subset(picks)
    expected = torch.stack([xs[p // 3][p % 3] for p in picks])
    del xs, ds
    gc.collect()
    assert [k for k, ref in enumerate(alive) if ref() is not None] == [1, 3, 5]
    assert kept.part.tolist() == [5, 1, 3, 1, 5]
    assert torch.equal(kept.get_batch(torch.arange(5))[0], expected)
    assert torch.equal(torch.stack([kept[i][0] for i in range(5)]), expected)
    again = (kept + kept.subset([1])).subset([5, 0])  # the same sources twice, then one left
    assert torch.equal(again.get_batch(torch.arange(2))[0], expected[[1, 0]])
    one = kept.subset([2])
    del kept, again
    gc.collect()
    assert [k for k, ref in enumerate(alive) if ref() is not None] == [3]
    assert torch.equal(one[0][0], expected[2]) and torch.equal(next(iter_minibatches_of(one))[0], expected[[2]])
