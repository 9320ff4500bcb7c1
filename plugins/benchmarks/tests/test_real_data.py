"""The classic MNIST-family benchmarks on the real files in <repo>/../shared/data (read-only, never written)."""

from __future__ import annotations

import pytest
import torch

from clkernel import iterate_minibatches
from clkernel_benchmarks import permuted_mnist, rotated_mnist, split_fmnist, split_mnist

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _counts(stream) -> torch.Tensor:
    return sum(torch.bincount(e.dataset.targets, minlength=10) for e in stream)


def test_split_mnist_has_all_samples_in_five_experiences_of_two_classes(shared_data):
    bm = split_mnist(dataset_root=str(shared_data), download=False)
    assert bm.name == "split-mnist" and len(bm.train_stream) == len(bm.test_stream) == 5
    assert sum(len(e.dataset) for e in bm.train_stream) == 60000
    assert sum(len(e.dataset) for e in bm.test_stream) == 10000
    assert _counts(bm.train_stream).tolist() == MNIST_TRAIN and _counts(bm.test_stream).tolist() == MNIST_TEST
    assert all(len(e.classes) == 2 for e in bm.train_stream)
    assert sorted(c for e in bm.train_stream for c in e.classes) == list(range(10))
    for tr, te in zip(bm.train_stream, bm.test_stream):
        assert tr.dataset.classes == te.dataset.classes == tr.classes
        assert len(tr.dataset) == sum(MNIST_TRAIN[c] for c in tr.classes)
    assert bm.input_shape == (1, 28, 28) and bm.num_classes == 10
    exp = bm.train_stream[0]
    assert exp.dataset.is_batched
    x, y, t = next(iterate_minibatches(exp.dataset.train(), 4096, shuffle=True, generator=torch.Generator()))
    assert x.dtype == torch.float32 and x.shape == (4096, 1, 28, 28) and set(y.tolist()) <= set(exp.classes)
    # MNIST's own statistics: about zero mean, unit deviation over the whole training set
    xs = torch.cat([e.dataset.get_batch(torch.arange(0, len(e.dataset), 3))[0] for e in bm.train_stream])
    assert abs(float(xs.mean())) < 0.01 and abs(float(xs.std()) - 1) < 0.01


def test_split_mnist_class_order_follows_seed_and_fixed_order(shared_data):
    a = split_mnist(dataset_root=str(shared_data), download=False, seed=5)
    assert a.classes_order == split_mnist(dataset_root=str(shared_data), download=False, seed=5).classes_order
    assert a.classes_order != split_mnist(dataset_root=str(shared_data), download=False, seed=6).classes_order
    fixed = split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=list(range(10)),
                        return_task_id=True)
    assert fixed.classes_in_experience == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [e.task_label for e in fixed.test_stream] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="misses class"):
        split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=[0, 1, 2])


def test_permuted_mnist_experiences_have_distinct_permutations_and_identical_label_counts(shared_data):
    bm = permuted_mnist(dataset_root=str(shared_data), download=False)
    assert len(bm.train_stream) == len(bm.test_stream) == 10
    perms = [tuple(e.info["permutation"].tolist()) for e in bm.train_stream]
    assert len(set(perms)) == 10 and all(sorted(p) == list(range(784)) for p in perms)
    for stream, expected in ((bm.train_stream, MNIST_TRAIN), (bm.test_stream, MNIST_TEST)):
        for e in stream:
            assert torch.bincount(e.dataset.targets, minlength=10).tolist() == expected
    plain = split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=list(range(10)),
                        n_experiences=1).train_stream[0].dataset
    idx = torch.tensor([0, 1, 59999])
    base = plain.get_batch(idx)[0].flatten(1)
    for e in (bm.train_stream[0], bm.train_stream[9]):
        x = e.dataset.get_batch(idx)[0].flatten(1)
        assert torch.equal(x, base[:, e.info["permutation"]])


def test_rotated_mnist_rotates_every_experience_by_its_angle(shared_data):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    bm = rotated_mnist(dataset_root=str(shared_data), download=False, rotations=[0, 45, 90])
    assert len(bm.train_stream) == 3 and all(len(e.dataset) == 60000 for e in bm.train_stream)
    idx = torch.arange(8)
    base = bm.train_stream[0].dataset.eval().get_batch(idx)[0]
    upright = bm.train_stream[1].dataset.with_transforms(None, None).get_batch(idx)[0]  # raw uint8, unrotated
    assert torch.equal(bm.train_stream[2].dataset.eval().get_batch(idx)[0], base.rot90(1, dims=(-2, -1)))
    rotated = F.rotate(upright, 45.0, interpolation=InterpolationMode.NEAREST)
    assert not torch.equal(rotated, upright)
    norm_rotated = bm.train_stream[1].dataset.eval().get_batch(idx)[0]
    assert torch.allclose(norm_rotated, (rotated.float() / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_split_fmnist_has_all_samples_in_five_experiences_of_two_classes(shared_data):
    bm = split_fmnist(dataset_root=str(shared_data), download=False)
    assert len(bm.train_stream) == 5
    assert _counts(bm.train_stream).tolist() == [6000] * 10 and _counts(bm.test_stream).tolist() == [1000] * 10
    assert all(len(e.dataset) == 12000 and len(e.classes) == 2 for e in bm.train_stream)
    xs = bm.train_stream[0].dataset.get_batch(torch.arange(12000))[0]
    assert xs.shape == (12000, 1, 28, 28) and abs(float(xs.mean())) < 0.5
