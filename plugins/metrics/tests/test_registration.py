"""Registration: the names `clkernel run --metric` accepts, their options and defaults."""

from __future__ import annotations

import os

import pytest

from clkernel.discovery import Registry

from clkernel_metrics import Evaluator
from clkernel_metrics import registration

NAMES = ["accuracy", "accuracy-matrix", "bwt", "cl", "class-accuracy", "confusion-matrix", "cpu", "default", "disk",
         "forgetting", "fwt", "gpu", "loss", "ram", "timing", "top-k"]


def test_every_name_builds_an_evaluator_plugin(tmp_path):
    reg = Registry()
    source = reg.add_module(registration, "metrics")
    assert source.status == "ok", source.error
    assert reg.available("metric") == NAMES
    assert reg.defaults("metric") == ["default"]
    for name in NAMES:
        options = {"run_dir": tmp_path} if name == "disk" else {}
        plugin = reg.load("metric", name, **options)
        assert isinstance(plugin, Evaluator) and plugin.name == ("default-metrics" if name == "default" else name)
        assert plugin.needs_initial_eval(None) is (name in ("fwt", "cl"))  # the kernel asks every plugin
        plugin.after_run(None)  # releases the RAM sampling thread
    assert "num_classes" in reg.get("metric", "confusion-matrix").options()  # filled by `clkernel run`


def test_bad_options_are_named():
    reg = Registry()
    reg.add_module(registration, "metrics")
    with pytest.raises(ValueError, match="top-k: k must be a positive integer"):
        reg.load("metric", "top-k", k=0)
    with pytest.raises(ValueError, match="max RAM: every must be a positive number, got 0"):
        reg.load("metric", "ram", every=0)
    with pytest.raises(ValueError, match="default metrics: running_every must be a positive integer"):
        reg.load("metric", "default", running_every=-1)
    with pytest.raises(ValueError, match="disk: give paths"):
        reg.load("metric", "disk")
    with pytest.raises(ValueError, match="acc: choose at least one of"):
        reg.load("metric", "accuracy", epoch=False, experience=False, stream=False)


def test_cli_option_parsing_of_the_installed_entry_point(tmp_path):
    from clkernel.discovery import parse_options, reset_registry

    reset_registry()
    try:
        try:
            parsed = parse_options("metric", "accuracy:minibatch=true,every=5")
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"clkernel-metrics is not installed in this environment: {e}")
        assert parsed == ("accuracy", {"minibatch": True, "every": 5})
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        paths = f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}"
        name, options = parse_options("metric", f"disk:paths={paths}")
        assert options == {"paths": paths}
        evaluator = registration.disk(**options)
        meter = evaluator.metrics[0].make(None)  # the DiskUsage of one period
        assert [str(p) for p in meter.paths] == [str(tmp_path / "a"), str(tmp_path / "b")]
    finally:
        reset_registry()
