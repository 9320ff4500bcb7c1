"""MNIST-family files already unpacked are read without torchvision, as torchvision reads them; a truncated or
foreign file is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from clkernel_benchmarks.datasets import load_mnist_family


def test_unpacked_files_are_read_as_torchvision_reads_them_without_importing_it(tmp_path, write_mnist):
    write_mnist(tmp_path, folder="FashionMNIST", n_train_per_class=2, n_test_per_class=1)
    x_train, y_train, x_test, y_test = load_mnist_family("FashionMNIST", tmp_path, False, "split-fmnist")
    import torchvision.datasets

    for train, x, y in ((True, x_train, y_train), (False, x_test, y_test)):
        reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=train, download=False)
        assert x.dtype == torch.uint8 and x.shape == (len(reference.data), 1, 28, 28)
        assert torch.equal(x[:, 0], reference.data) and y.dtype == torch.long and torch.equal(y, reference.targets)
    code = ("import json, sys; from pathlib import Path; from clkernel_benchmarks.datasets import load_mnist_family; "
            f"x = load_mnist_family('FashionMNIST', Path({str(tmp_path)!r}), False, 'split-fmnist')[0]; "
            "print(json.dumps([list(x.shape), 'torchvision' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[20, 1, 28, 28], False]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:-10], r"has 15686 bytes where its header announces 15696: the file is truncated"),
    (lambda data: b"\x00\x00\x0d" + data[3:], r"is not an IDX file of unsigned bytes \(its first bytes are 00000d03"),
    (lambda data: b"", r"is not an IDX file of unsigned bytes \(its first bytes are missing"),
])
def test_a_truncated_or_foreign_file_is_refused_naming_it(tmp_path, write_mnist, damage, message):
    write_mnist(tmp_path, n_train_per_class=2)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=f"split-mnist: {path}.*{message}"):
        load_mnist_family("MNIST", tmp_path, False, "split-mnist")
