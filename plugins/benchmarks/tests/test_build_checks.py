"""Options that are wrong whatever the data fail when the benchmark is built, before any data is loaded."""

from __future__ import annotations

import pytest

from clkernel.discovery import Registry

from clkernel_benchmarks import registration


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry()
    r.add_module(registration, "benchmarks")
    return r


@pytest.mark.parametrize("option", ["train_transform", "eval_transform"])
def test_a_transform_given_as_text_is_refused_naming_the_option(reg, option):
    with pytest.raises(TypeError, match=f"^split-digits: {option} must be a callable .*got 'abc'$"):
        reg.load("benchmark", "split-digits", **{option: "abc"})
    bm = reg.load("benchmark", "split-digits", **{option: lambda x: x})
    assert bm.num_classes == 10


@pytest.mark.parametrize(("name", "options", "message"), [
    ("split-digits", {"n_experiences": 0}, "split-digits: n_experiences must be a positive integer, got 0"),
    ("split-digits", {"seed": True}, "split-digits: seed must be an integer (or None), got True"),
    ("split-digits", {"fixed_class_order": 3}, "split-digits: fixed_class_order must be a list of distinct class"),
    ("split-digits", {"fixed_class_order": [0, 0, 1]}, "fixed_class_order must be a list of distinct class ids"),
    ("split-digits", {"return_task_id": "yes"}, "split-digits: return_task_id must be true or false, got 'yes'"),
    # these would otherwise download (or load) the data before failing
    ("permuted-mnist", {"n_experiences": 0}, "permuted-mnist: n_experiences must be a positive integer, got 0"),
    ("rotated-mnist", {"rotations": "90"}, "rotated-mnist: rotations must be a list of angles in degrees, got '90'"),
    ("split-cifar10", {"train_transform": "flip"}, "split-cifar10: train_transform must be a callable"),
    ("core50", {"scenario": "nx"}, "core50: scenario must be 'ni' or 'nc', got 'nx'"),
    ("split-mnist", {"dataset_root": 3}, "split-mnist: dataset_root must be a folder, got 3"),
])
def test_bad_options_fail_before_any_data_is_read(reg, name, options, message):
    with pytest.raises((ValueError, TypeError)) as info:
        reg.load("benchmark", name, **options)
    assert message in str(info.value)


def test_a_dataset_root_that_does_not_exist_is_named_when_download_is_off(reg, tmp_path):
    missing = tmp_path / "no-data"
    with pytest.raises(FileNotFoundError, match=f"split-mnist: dataset_root '{missing}' does not exist"):
        reg.load("benchmark", "split-mnist", dataset_root=str(missing), download=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="split-cifar10: dataset_root '.*file' is not a folder"):
        reg.load("benchmark", "split-cifar10", dataset_root=str(tmp_path / "file"), download=False)
    assert not missing.exists()
