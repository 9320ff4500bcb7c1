"""Every loader on tiny files written in the dataset's own format (the path a user who downloads takes), and
the errors for missing data."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from clkernel import iterate_minibatches
from clkernel_benchmarks import (DatasetNotFoundError, core50, default_data_root, permuted_mnist, rotated_mnist,
                                 split_cifar10, split_cifar100, split_fmnist, split_mnist, split_tinyimagenet)
from clkernel_benchmarks.transforms import RandomCropFlip

# --------------------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("factory, folder, mean, std", [
    (split_mnist, "MNIST", 0.1307, 0.3081), (split_fmnist, "FashionMNIST", 0.2860, 0.3530)])
def test_mnist_family_from_tiny_idx_files(tmp_path, write_mnist, factory, folder, mean, std):
    arrays = write_mnist(tmp_path, folder)
    bm = factory(dataset_root=str(tmp_path), download=False, fixed_class_order=list(range(10)))
    assert [len(e.dataset) for e in bm.train_stream] == [6] * 5 and [len(e.dataset) for e in bm.test_stream] == [2] * 5
    exp = bm.train_stream[2]
    assert exp.classes == [4, 5] and exp.dataset.is_batched
    x, y, _ = exp.dataset.eval().get_batch(torch.arange(len(exp.dataset)))
    positions = np.flatnonzero(np.isin(arrays["train-labels"], [4, 5]))
    expected = (torch.from_numpy(arrays["train-images"][positions]).float()[:, None] / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5) and y.tolist() == arrays["train-labels"][positions].tolist()


def test_permuted_and_rotated_mnist_from_tiny_files(tmp_path, write_mnist):
    write_mnist(tmp_path)
    perm = permuted_mnist(dataset_root=str(tmp_path), download=False, n_experiences=3, seed=1)
    assert len(perm.train_stream) == 3 and all(len(e.dataset) == 30 for e in perm.train_stream)
    rot = rotated_mnist(dataset_root=str(tmp_path), download=False, rotations=[10, 20])
    assert [e.info["rotation"] for e in rot.test_stream] == [10.0, 20.0]
    assert rot.train_stream[1].dataset.get_batch(torch.arange(4))[0].shape == (4, 1, 28, 28)


def test_missing_data_without_download_says_where_it_looked_and_how_to_fix_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        split_mnist(dataset_root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "download=True" in message and "--data-root" in message and "CLKERNEL_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_offline_download_failure_says_how_to_fix_it(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        split_fmnist(dataset_root=str(tmp_path), download=True)
    message = str(info.value)
    assert "downloading it failed" in message and "no network" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "CLKERNEL_DATA" in message


def test_dataset_root_defaults_to_clkernel_data_then_a_user_cache(tmp_path, monkeypatch, write_mnist):
    monkeypatch.setenv("CLKERNEL_DATA", str(tmp_path / "from-env"))
    assert default_data_root() == tmp_path / "from-env"
    with pytest.raises(DatasetNotFoundError, match=r"from \$CLKERNEL_DATA"):
        split_mnist(download=False)
    write_mnist(tmp_path / "from-env")
    assert len(split_mnist(download=False).train_stream) == 5
    monkeypatch.delenv("CLKERNEL_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.platform", "linux")
    assert default_data_root() == tmp_path / "cache" / "clkernel" / "data"


# --------------------------------------------------------------------------- CIFAR


def test_split_cifar10_from_tiny_pickled_batches(tmp_path, write_cifar):
    written = write_cifar(tmp_path, "CIFAR10", per_class=2)
    bm = split_cifar10(dataset_root=str(tmp_path), download=False, fixed_class_order=list(range(10)))
    assert [len(e.dataset) for e in bm.train_stream] == [20] * 5  # 5 batch files x 2 per class x 2 classes
    assert [len(e.dataset) for e in bm.test_stream] == [2] * 5
    assert bm.input_shape == (3, 32, 32)
    rows, labels = written["test"][0]
    x, y, _ = bm.test_stream[0].dataset.eval().get_batch(torch.arange(2))
    assert y.tolist() == labels[:2]
    red = torch.from_numpy(rows[0, :1024].reshape(32, 32)).float()  # CIFAR rows: red plane, green, blue
    assert torch.allclose(x[0, 0], (red / 255 - 0.4914) / 0.2023, atol=1e-5)
    torch.manual_seed(0)
    xt, _, _ = bm.train_stream[0].dataset.train().get_batch(torch.arange(20))
    assert xt.shape == (20, 3, 32, 32) and xt.dtype == torch.float32  # random crop and flip, batched


def test_split_cifar100_from_tiny_pickled_files(tmp_path, write_cifar):
    write_cifar(tmp_path, "CIFAR100", classes=4, per_class=3)
    bm = split_cifar100(dataset_root=str(tmp_path), download=False, n_experiences=2, seed=0)
    assert [len(e.dataset) for e in bm.train_stream] == [6, 6] and bm.num_classes == 4


def test_cifar_missing_and_offline(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        split_cifar10(dataset_root=str(tmp_path), download=False)
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="downloading it failed"):
        split_cifar100(dataset_root=str(tmp_path), download=True)


def test_random_crop_flip_is_a_per_sample_window_of_the_padded_batch():
    x = torch.randint(0, 256, (64, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(RandomCropFlip(0, flip=False)(x), x)
    flipped = RandomCropFlip(0)(x)
    same, mirrored = (flipped == x).flatten(1).all(1), (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    out = RandomCropFlip(2, flip=False)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):
        windows = [padded[i, :, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


# --------------------------------------------------------------------------- Tiny ImageNet and CORe50


def test_split_tinyimagenet_from_tiny_jpeg_files(tmp_path, write_tinyimagenet):
    write_tinyimagenet(tmp_path, n_classes=4, per_class=2)
    bm = split_tinyimagenet(dataset_root=str(tmp_path), download=False, n_experiences=2,
                            fixed_class_order=[0, 1, 2, 3])
    assert [len(e.dataset) for e in bm.train_stream] == [4, 4] and [len(e.dataset) for e in bm.test_stream] == [2, 2]
    assert bm.classes_in_experience == [[0, 1], [2, 3]] and not bm.train_stream[0].dataset.is_batched
    x, y, _ = next(iterate_minibatches(bm.test_stream[1].dataset.eval(), 8, shuffle=False))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [2, 3]
    red = (x[:, 0].mean(dim=(1, 2)) * 0.2302 + 0.4802) * 255  # class c is solid colour (40c, 255-40c, 128)
    assert torch.allclose(red, torch.tensor([80.0, 120.0]), atol=4)


def test_tinyimagenet_missing_data(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        split_tinyimagenet(dataset_root=str(tmp_path), download=False)
    assert str(tmp_path / "tiny-imagenet-200") in str(info.value) and "download=True" in str(info.value)


def test_core50_ni_one_experience_per_training_session(tmp_path, write_core50):
    write_core50(tmp_path, sessions=(1, 2, 4, 3, 7), objects=(1, 2, 6, 11), frames=2)
    bm = core50(dataset_root=str(tmp_path), download=False, seed=0)
    assert len(bm.train_stream) == 3 and len(bm.test_stream) == 1
    assert sorted(bm.info["sessions_order"]) == [1, 2, 4]
    for exp, session in zip(bm.train_stream, bm.info["sessions_order"]):
        assert exp.dataset.session.unique().tolist() == [session] and len(exp.dataset) == 8
        assert exp.classes == [0, 1, 5, 10]
    test = bm.test_stream[0].dataset
    assert sorted(test.session.unique().tolist()) == [3, 7] and len(test) == 16
    x, y, _ = next(iterate_minibatches(test.eval(), 16, shuffle=False))
    assert x.shape == (16, 3, 4, 4)
    green = (x[:, 1].mean(dim=(1, 2)) * 0.224 + 0.456) * 255  # written as 10 * session
    assert torch.allclose(green, (test.session * 10).float(), atol=1)


def test_core50_nc_objects_and_categories(tmp_path, write_core50):
    write_core50(tmp_path, sessions=(1, 3), objects=(1, 2, 6, 11), frames=1)
    bm = core50(dataset_root=str(tmp_path), download=False, scenario="nc", n_experiences=2,
                fixed_class_order=[0, 1, 5, 10])
    assert bm.classes_in_experience == [[0, 1], [5, 10]]
    cats = core50(dataset_root=str(tmp_path), download=False, scenario="nc", n_experiences=3, object_level=False)
    assert sorted(c for g in cats.classes_in_experience for c in g) == [0, 1, 2]
    with pytest.raises(ValueError, match="scenario must be"):
        core50(dataset_root=str(tmp_path), download=False, scenario="nic")
    with pytest.raises(ValueError, match="scenario='nc' only"):
        core50(dataset_root=str(tmp_path), download=False, return_task_id=True)


def test_core50_missing_data(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as info:
        core50(dataset_root=str(tmp_path), download=False)
    assert str(tmp_path / "core50_128x128") in str(info.value)
