"""Entry-point discovery with real distributions on sys.path: loading, broken plugins, clashes, disabling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

import clkernel
from clkernel.discovery import Registry, RegistryError, parse_options, reset_registry

GOOD = '''
import torch
import clkernel

def tiny_mlp(num_classes: int = 2, input_size: int = 4, hidden: int = 8, dropout: float = 0.0):
    """A two-layer MLP for tests."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_size, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))

class Gentle:
    name = "gentle"
    def __init__(self, strength: float = 1.0):
        self.strength = strength
    @clkernel.hookimpl
    def loss_terms(self, state):
        return None

@clkernel.hookimpl
def register_models(register):
    register("tiny-mlp", tiny_mlp, default=True)

@clkernel.hookimpl
def register_plugins(register):
    register("gentle", Gentle, summary="does nothing, gently")
'''

BROKEN = '''
raise ImportError("this plugin needs a library that is not installed")
'''

CLASH = '''
import clkernel

@clkernel.hookimpl
def register_models(register):
    register("tiny-mlp", lambda: None)
    register("other-mlp", lambda: None)
'''


@pytest.fixture
def site(install_dist, monkeypatch):
    path = install_dist("clk-good", "clk_good", GOOD, entry_point="good", version="1.2")
    install_dist("clk-broken", "clk_broken", BROKEN, entry_point="broken", version="0.3")
    monkeypatch.syspath_prepend(str(path))
    reset_registry()
    yield path
    reset_registry()


def test_real_entry_points_are_found_by_name_and_a_broken_one_does_not_stop_them(site):
    with structlog.testing.capture_logs() as logs:
        names = clkernel.available("model")
    assert "tiny-mlp" in names
    model = clkernel.load("model", "tiny-mlp", num_classes=3)
    assert model[-1].out_features == 3
    sources = {s.entry_point: s for s in clkernel.registry().sources}
    assert sources["good"].status == "ok" and sources["good"].components == {"model": ["tiny-mlp"],
                                                                              "plugin": ["gentle"]}
    broken = sources["broken"]
    assert broken.status == "error" and broken.distribution == "clk-broken" and broken.version == "0.3"
    assert "needs a library that is not installed" in broken.error
    warning = next(entry for entry in logs if entry["event"] == "plugin_failed")
    assert warning["log_level"] == "warning" and warning["entry_point"] == "broken"
    assert warning["distribution"] == "clk-broken" and warning["version"] == "0.3" and "ImportError" in warning["error"]


def test_unknown_names_list_the_installed_ones(site):
    with pytest.raises(RegistryError, match=r"unknown model 'tiny-mpl'; installed models: .*tiny-mlp.*clk-broken"):
        clkernel.load("model", "tiny-mpl")
    with pytest.raises(RegistryError, match="unknown component kind 'models'; kinds: benchmark, model"):
        clkernel.available("models")
    with pytest.raises(RegistryError, match="does not take these options.*its options: num_classes, input_size"):
        clkernel.load("model", "tiny-mlp", hiden=3)


def test_name_clash_names_both_distributions(site, install_dist):
    install_dist("clk-clash", "clk_clash", CLASH, entry_point="clash", version="2.0")
    reset_registry()
    assert "other-mlp" in clkernel.available("model")  # the clashing distribution's other names still work
    assert "tiny-mlp" not in clkernel.available("model")
    with pytest.raises(RegistryError, match="registered by two distributions, (clk-good 1.2 and clk-clash 2.0|"
                                            "clk-clash 2.0 and clk-good 1.2)"):
        clkernel.load("model", "tiny-mlp")
    sources = {s.entry_point: s for s in clkernel.registry().sources}
    assert sources["good"].clashes == ["model 'tiny-mlp' is also registered by clk-clash 2.0"]


def test_disable_variable_blocks_entry_points_by_name(site, monkeypatch):
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "good, other")
    reset_registry()
    assert clkernel.available("model") == [] or "tiny-mlp" not in clkernel.available("model")
    assert {s.entry_point: s.status for s in clkernel.registry().sources}["good"] == "disabled"


def test_registration_that_raises_is_recorded_and_leaves_nothing_behind():
    import types

    module = types.ModuleType("half")

    @clkernel.hookimpl
    def register_models(register):
        register("first", lambda: 1)
        raise RuntimeError("second model failed")

    module.register_models = register_models
    reg = Registry()
    source = reg.add_module(module, "half")
    assert source.status == "error" and "second model failed" in source.error
    assert reg.available("model") == []


def test_options_are_parsed_to_the_factory_types(site):
    name, options = parse_options("model", "tiny-mlp:hidden=16,dropout=0.5,num_classes=3")
    assert name == "tiny-mlp" and options == {"hidden": 16, "dropout": 0.5, "num_classes": 3}
    assert isinstance(options["dropout"], float)
    with pytest.raises(RegistryError, match="option hidden='wide' must be of type int"):
        parse_options("model", "tiny-mlp:hidden=wide")
    with pytest.raises(RegistryError, match="has no option 'width'; its options: num_classes"):
        parse_options("model", "tiny-mlp:width=3")


def run_cli(site: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run([sys.executable, "-m", "clkernel.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=120)


def test_plugins_json_lists_every_distribution_with_status(site):
    result = run_cli(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["entry_point"]: r for r in json.loads(result.stdout)}
    assert rows["good"]["distribution"] == "clk-good" and rows["good"]["version"] == "1.2"
    assert rows["good"]["status"] == "ok" and rows["good"]["components"]["model"] == ["tiny-mlp"]
    assert rows["broken"]["status"] == "error" and "not installed" in rows["broken"]["error"]
    assert "plugin_failed" in result.stderr  # diagnostics on stderr, stdout stays JSON


def test_show_prints_summary_and_options(site):
    result = run_cli(site, "show", "model", "tiny-mlp")
    assert result.returncode == 0, result.stderr
    assert "A two-layer MLP for tests." in result.stdout
    assert "hidden: int = 8" in result.stdout and "num_classes: int = 2  (filled by `clkernel run`)" in result.stdout


def test_options_are_typed_even_when_another_annotation_does_not_evaluate():
    from clkernel.discovery import Registry

    def factory(download: bool = False, size: int = 3) -> "NotImportedAtRunTime":  # noqa: F821
        return download, size

    class Module:
        @clkernel.hookimpl
        def register_benchmarks(register):
            register("lazy", factory)

    registry = Registry()
    registry.add_module(Module, "lazy-source")
    clkernel.discovery.reset_registry(registry)
    try:
        assert clkernel.discovery.parse_options("benchmark", "lazy:download=false,size=5") == \
            ("lazy", {"download": False, "size": 5})
    finally:
        clkernel.discovery.reset_registry()
