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
    """A two-layer MLP for tests.

    hidden: width of the hidden layer.
    """
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
    with pytest.raises(RegistryError, match=r"^unknown model 'tiny-mpl'; installed models: .*tiny-mlp.*; did you "
                                            r"mean 'tiny-mlp'\?; broken plugins \(see `clkernel plugins`\): "
                                            r"clk-broken 0.3$"):
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
    with pytest.raises(RegistryError) as error:
        clkernel.load("model", "tiny-mlp")
    message = str(error.value)
    assert "model 'tiny-mlp' is registered by " in message and "clk-good 1.2" in message and "clk-clash 2.0" in message
    assert "CLKERNEL_DISABLE_PLUGINS=clk-good" in message and "CLKERNEL_DISABLE_PLUGINS=clk-clash" in message
    sources = {s.entry_point: s for s in clkernel.registry().sources}
    assert sources["good"].status == sources["clash"].status == "clash"
    assert sources["good"].clashes == ["model 'tiny-mlp' is also registered by clk-clash 2.0; set "
                                       "CLKERNEL_DISABLE_PLUGINS=clk-good to disable this one"]
    assert sources["clash"].clashes == ["model 'tiny-mlp' is also registered by clk-good 1.2; set "
                                        "CLKERNEL_DISABLE_PLUGINS=clk-clash to disable this one"]


def test_a_third_holder_of_a_name_updates_the_clash_instead_of_repeating_it(site, install_dist):
    install_dist("clk-clash", "clk_clash", CLASH, entry_point="clash", version="2.0")
    install_dist("clk-clash-too", "clk_clash_too", CLASH, entry_point="clash-too", version="3.0")
    reset_registry()
    sources = {s.entry_point: s for s in clkernel.registry().sources}
    tiny = [c for c in sources["good"].clashes if c.startswith("model 'tiny-mlp'")]
    assert len(tiny) == 1 and "clk-clash 2.0" in tiny[0] and "clk-clash-too 3.0" in tiny[0]
    assert len(sources["clash"].clashes) == 2  # tiny-mlp with two others, other-mlp with clash-too


def test_plugins_command_shows_both_clashing_packages_and_the_value_that_disables_one(site, install_dist):
    install_dist("clk-clash", "clk_clash", CLASH, entry_point="clash", version="2.0")
    rows = {r["entry_point"]: r for r in json.loads(run_cli(site, "plugins", "--json").stdout)}
    assert rows["good"]["status"] == rows["clash"]["status"] == "clash"
    assert "set CLKERNEL_DISABLE_PLUGINS=clk-clash to disable this one" in rows["clash"]["clashes"][0]
    text = run_cli(site, "plugins").stdout
    assert "clash  (clk-clash 2.0)  clash" in text and "CLKERNEL_DISABLE_PLUGINS=clk-good" in text
    # the value given works, in any case and with '_' for '-'
    result = run_cli(site, "plugins", "--json", env={"CLKERNEL_DISABLE_PLUGINS": "CLK_Clash"})
    rows = {r["entry_point"]: r for r in json.loads(result.stdout)}
    assert rows["clash"]["status"] == "disabled" and rows["good"]["status"] == "ok" and not rows["good"]["clashes"]
    assert "unknown_disabled_plugin" not in result.stderr


def test_disable_variable_blocks_entry_points_by_name(site, monkeypatch):
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "good, broken")
    reset_registry()
    with structlog.testing.capture_logs() as logs:
        assert "tiny-mlp" not in clkernel.available("model")
    assert {s.entry_point: s.status for s in clkernel.registry().sources}["good"] == "disabled"
    assert not logs  # a disabled broken plugin is not even imported


@pytest.mark.parametrize("value", ["clk-good", "CLK_GOOD", "Clk.Good", " GOOD "])
def test_disable_variable_takes_distribution_names_too_in_any_case(site, monkeypatch, value):
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", f"{value},clkernel_EWC")
    reset_registry()
    with structlog.testing.capture_logs() as logs:
        statuses = {s.entry_point: s.status for s in clkernel.registry().sources}
    assert statuses["good"] == statuses["ewc"] == "disabled" and statuses["replay"] == "ok"
    assert not [entry for entry in logs if entry["event"] == "unknown_disabled_plugin"]


def test_an_unknown_value_of_the_disable_variable_is_a_warning_naming_it(site, monkeypatch):
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "good,clk-goood")
    reset_registry()
    with structlog.testing.capture_logs() as logs:
        clkernel.registry()
    warning = next(entry for entry in logs if entry["event"] == "unknown_disabled_plugin")
    assert warning["log_level"] == "warning" and warning["value"] == "clk-goood"
    assert warning["variable"] == "CLKERNEL_DISABLE_PLUGINS" and {"good", "clk-good", "ewc"} <= set(warning["known"])
    result = run_cli(site, "--log-format", "json", "plugins", "--json", env={"CLKERNEL_DISABLE_PLUGINS": "nonesuch"})
    assert result.returncode == 0
    logged = [json.loads(line) for line in result.stderr.splitlines() if "unknown_disabled_plugin" in line]
    assert logged and logged[0]["value"] == "nonesuch"


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


def test_a_misspelt_registration_hook_is_named_with_the_hook_meant():
    import types

    module = types.ModuleType("typo")

    @clkernel.hookimpl
    def register_plugin(register):  # register_plugins
        register("never", lambda: 1)

    module.register_plugin = register_plugin
    reg = Registry()
    source = reg.add_module(module, "typo")
    assert source.status == "error"
    assert "'register_plugin' is not a registration hook (did you mean 'register_plugins'?" in source.error
    assert reg.available("plugin") == []


def test_options_are_parsed_to_the_factory_types(site):
    name, options = parse_options("model", "tiny-mlp:hidden=16,dropout=0.5,num_classes=3")
    assert name == "tiny-mlp" and options == {"hidden": 16, "dropout": 0.5, "num_classes": 3}
    assert isinstance(options["dropout"], float)
    with pytest.raises(RegistryError, match="option hidden='wide' must be of type int"):
        parse_options("model", "tiny-mlp:hidden=wide")
    with pytest.raises(RegistryError, match="has no option 'width'; its options: num_classes"):
        parse_options("model", "tiny-mlp:width=3")


def test_option_keys_misspelt_or_given_twice(site):
    with pytest.raises(RegistryError, match=r"^plugin 'replay' has no option 'mem_sise'; its options: mem_size, .*; "
                                            r"did you mean 'mem_size'\?$"):
        parse_options("plugin", "replay:mem_sise=5")
    with pytest.raises(RegistryError, match=r"^plugin 'replay': option 'mem_size' is given twice$"):
        parse_options("plugin", "replay:mem_size=10,mem_size=20")
    with pytest.raises(RegistryError, match=r"^plugin 'replay': option 'mem_size' is given twice$"):
        parse_options("plugin", "replay: mem_size=10, mem_size =10")


@pytest.mark.parametrize("spec", ["", " ", ":hidden=3"])
def test_an_empty_name_is_an_error_not_a_lookup(site, spec):
    with pytest.raises(RegistryError, match=r"^empty model name; installed models: .*tiny-mlp"):
        parse_options("model", spec)
    with pytest.raises(RegistryError, match="^empty plugin name; installed plugins: "):
        clkernel.registry().get("plugin", spec.partition(":")[0])


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
    lines = result.stdout.splitlines()
    assert lines[1:4] == ["  A two-layer MLP for tests.", "  hidden: width of the hidden layer.", "options:"], lines
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
