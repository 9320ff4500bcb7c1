"""Bad options fail when the metric is built (before training), with a message naming the option and value."""

from __future__ import annotations

import os

import pytest

from clkernel.discovery import Registry

from clkernel_metrics import Evaluator, registration


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry()
    r.add_module(registration, "metrics")
    return r


def test_top_k_refuses_k_above_the_benchmarks_class_count(reg):
    assert "num_classes" in reg.get("metric", "top-k").options()  # filled by `clkernel run`
    with pytest.raises(ValueError, match=r"^top-k: k must be at most the number of classes \(10\), got 100$"):
        reg.load("metric", "top-k", k=100, num_classes=10)
    assert isinstance(reg.load("metric", "top-k", k=10, num_classes=10), Evaluator)
    assert isinstance(reg.load("metric", "top-k", k=100), Evaluator)  # Python use: no class count to check
    with pytest.raises(ValueError, match="top-k: k must be a positive integer, got True"):
        reg.load("metric", "top-k", k=True, num_classes=10)


def test_confusion_matrix_refuses_a_bool_class_count(reg):
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got True"):
        reg.load("metric", "confusion-matrix", num_classes=True)


def test_disk_refuses_folders_that_do_not_exist(reg, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"disk: paths: no such folder: '{missing}'"):
        reg.load("metric", "disk", paths=str(missing))
    with pytest.raises(FileNotFoundError, match="no such folders: .*'/nonexistent-a', '/nonexistent-b'"):
        reg.load("metric", "disk", paths=f"/nonexistent-a{os.pathsep}/nonexistent-b{os.pathsep}{tmp_path}")
    with pytest.raises(TypeError, match="disk: paths must be a folder, .*got 3"):
        reg.load("metric", "disk", paths=3)
    with pytest.raises(ValueError, match="disk: paths names no folder"):
        reg.load("metric", "disk", paths=os.pathsep)
    plugin = reg.load("metric", "disk", paths=[str(tmp_path)])
    assert isinstance(plugin, Evaluator)
    plugin.after_run(None)
