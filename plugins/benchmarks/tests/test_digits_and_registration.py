"""The embedded split-digits default, the registration module and a real training run through the kernel loop."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from importlib import resources

import pytest
import torch

import clkernel
from clkernel import Naive
from clkernel.discovery import Registry, parse_options, reset_registry
from clkernel_benchmarks import registration, split_digits

DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
NAMES = ["core50", "image-folder", "permuted-mnist", "rotated-mnist", "split-cifar10", "split-cifar100", "split-digits",
         "split-fmnist", "split-mnist", "split-tinyimagenet"]


def test_the_digits_file_ships_with_the_package_intact():
    data = resources.files("clkernel_benchmarks").joinpath("data", "digits.csv.gz").read_bytes()
    assert hashlib.md5(data).hexdigest() == "9b335364a7bfd63947c7480a5bd51f2d"
    readme = resources.files("clkernel_benchmarks").joinpath("data", "README.md").read_text()
    assert "CC BY 4.0" in readme


def test_split_digits_is_a_fixed_stratified_split_in_five_experiences_of_two_classes():
    bm = split_digits()
    assert bm.name == "split-digits" and len(bm.train_stream) == len(bm.test_stream) == 5
    train = sum(torch.bincount(e.dataset.targets, minlength=10) for e in bm.train_stream)
    test = sum(torch.bincount(e.dataset.targets, minlength=10) for e in bm.test_stream)
    assert int(train.sum()) == 1442 and int(test.sum()) == 355
    assert (train + test).tolist() == DIGITS_COUNTS
    assert torch.equal(test, torch.tensor(DIGITS_COUNTS) // 5)  # every fifth image of each class
    assert all(len(e.classes) == 2 for e in bm.train_stream)
    assert bm.input_shape == (1, 8, 8) and bm.num_classes == 10
    x = torch.cat([e.dataset.get_batch(torch.arange(len(e.dataset)))[0] for e in bm.train_stream])
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.02
    again = split_digits(seed=0)
    assert again.classes_order == bm.classes_order != split_digits(seed=1).classes_order
    a, b = bm.test_stream[0].dataset, again.test_stream[0].dataset
    assert torch.equal(a.get_batch(torch.arange(len(a)))[0], b.get_batch(torch.arange(len(b)))[0])


def test_registration_registers_every_benchmark_with_split_digits_as_default():
    reg = Registry()
    source = reg.add_module(registration, "benchmarks")
    assert source.status == "ok", source.error
    assert reg.available("benchmark") == NAMES and reg.defaults("benchmark") == ["split-digits"]
    for name in NAMES:
        comp = reg.get("benchmark", name)
        assert comp.summary and not comp.summary.startswith(" ")
        options = comp.options()
        assert "seed" in options and "train_transform" in options
        assert all(p.default is not inspect.Parameter.empty for p in options.values()), name
        if name not in ("split-digits", "image-folder"):  # image-folder reads the user's own folder (dataset_root)
            assert "dataset_root" in options and "download" in options
    bm = reg.load("benchmark", "split-digits", n_experiences=2, seed=3)
    assert len(bm.train_stream) == 2 and bm.n_classes_per_exp == [5, 5]


def test_registered_stubs_declare_exactly_the_options_of_the_classic_factories():
    from clkernel_benchmarks import classic

    assert sorted(registration.BENCHMARKS) == NAMES
    for name, stub in registration.BENCHMARKS.items():
        real = getattr(classic, stub.__name__)
        assert stub.__name__ == name.replace("-", "_")
        ours = inspect.signature(stub, eval_str=True).parameters
        theirs = inspect.signature(real, eval_str=True).parameters
        own = [str(p) for key, p in ours.items() if key not in registration.VALIDATION_OPTIONS]
        assert own == [str(p) for p in theirs.values()], name
        assert [str(p) for p in ours.values()][len(own):] == ["valid_size: float = 0.0",
                                                              "valid_class_balanced: bool = True"], name
        assert inspect.getdoc(stub).split("\n")[0] == inspect.getdoc(real).split("\n")[0], name


def test_importing_the_registration_module_imports_neither_torch_nor_the_benchmarks():
    code = ("import sys, clkernel_benchmarks.registration as r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
            "or m == 'clkernel_benchmarks.classic'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_options_parse_from_the_command_line_form():
    reg = Registry()
    reg.add_module(registration, "benchmarks")
    reset_registry(reg)
    try:
        name, options = parse_options("benchmark", "split-mnist:fixed_class_order=[1,0,2,3,4,5,6,7,8,9],"
                                                   "download=false,dataset_root=/data/x,seed=4")
        assert name == "split-mnist"
        assert options == {"fixed_class_order": [1, 0, 2, 3, 4, 5, 6, 7, 8, 9], "download": False,
                           "dataset_root": "/data/x", "seed": 4}
        _, options = parse_options("benchmark", "rotated-mnist:rotations=[0, 45.5]")
        assert options == {"rotations": [0, 45.5]}
    finally:
        reset_registry()


def test_the_entry_point_finds_the_installed_package():
    reset_registry()
    try:
        if "split-digits" not in clkernel.available("benchmark"):
            pytest.skip("clkernel-benchmarks is not installed (pip install -e plugins/benchmarks)")
        assert "split-digits" in clkernel.registry().defaults("benchmark")
        assert len(clkernel.load("benchmark", "split-digits").train_stream) == 5
    finally:
        reset_registry()


def test_split_digits_trains_through_the_kernel_loop():
    torch.manual_seed(0)
    bm = split_digits(fixed_class_order=list(range(10)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=32, train_epochs=3,
                     device="cpu", generator=torch.Generator().manual_seed(0))
    for exp in bm.train_stream:
        strategy.train(exp)
    with torch.no_grad():
        x, y, _ = bm.test_stream[4].dataset.eval().get_batch(torch.arange(len(bm.test_stream[4].dataset)))
        last = (model(x).argmax(1) == y).float().mean()
        x0, y0, _ = bm.test_stream[0].dataset.eval().get_batch(torch.arange(len(bm.test_stream[0].dataset)))
        first = (model(x0).argmax(1) == y0).float().mean()
    assert float(last) > 0.9 and float(first) < 0.5  # learns the last experience, forgets the first


def test_valid_size_carves_a_stratified_validation_stream_out_of_each_training_experience():
    reg = Registry()
    reg.add_module(registration, "benchmarks")
    reset_registry(reg)
    try:
        name, options = parse_options("benchmark", "split-digits:valid_size=0.1,seed=2")
        bm = reg.load("benchmark", name, **options)
    finally:
        reset_registry()
    plain = split_digits(seed=2)
    assert list(bm.streams) == ["train", "valid", "test"] and bm.name == "split-digits"
    assert len(bm.streams["valid"]) == len(bm.train_stream) == 5
    for old, train, valid in zip(plain.train_stream, bm.train_stream, bm.streams["valid"]):
        assert train.index == valid.index == old.index and valid.classes == old.classes
        old_x = old.dataset.get_batch(torch.arange(len(old.dataset)))[0].flatten(1)
        train_x = train.dataset.get_batch(torch.arange(len(train.dataset)))[0].flatten(1)
        valid_x = valid.dataset.get_batch(torch.arange(len(valid.dataset)))[0].flatten(1)
        assert len(train_x) + len(valid_x) == len(old_x)
        rows = {tuple(r) for r in train_x.tolist()}
        assert not any(tuple(r) in rows for r in valid_x.tolist())  # disjoint (the digits have no duplicates here)
        per_class = torch.bincount(old.dataset.targets, minlength=10)
        held = torch.bincount(valid.dataset.targets, minlength=10)
        assert held.tolist() == [int(n * 0.1 + 0.5) for n in per_class.tolist()]  # 10% of each class, rounded
    assert torch.equal(bm.test_stream[0].dataset.targets, plain.test_stream[0].dataset.targets)
    again = registration.split_digits(valid_size=0.1, seed=2)
    assert torch.equal(again.streams["valid"][3].dataset.targets, bm.streams["valid"][3].dataset.targets)
    x3 = bm.streams["valid"][3].dataset.get_batch(torch.arange(4))[0]
    assert torch.equal(again.streams["valid"][3].dataset.get_batch(torch.arange(4))[0], x3)
    assert list(registration.split_digits().streams) == ["train", "test"]  # valid_size=0: no validation stream
    unbalanced = registration.split_digits(valid_size=0.25, valid_class_balanced=False)
    assert [len(e.dataset) for e in unbalanced.streams["valid"]] == [
        int(0.25 * len(e.dataset) + 0.5) for e in split_digits().train_stream]


@pytest.mark.parametrize("options, message", [
    ({"valid_size": 1.0}, r"split-digits: valid_size must be a number in \[0, 1\), got 1.0"),
    ({"valid_size": -0.1}, "split-digits: valid_size must be"),
    ({"valid_size": "x"}, "split-digits: valid_size must be"),
    ({"valid_size": 0.001}, r"split-digits: valid_size=0.001: .*leaves its validation part empty"),
    ({"valid_size": 0.1, "valid_class_balanced": 1}, "split-digits: valid_class_balanced must be true or false"),
])
def test_bad_validation_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        registration.split_digits(**options)
