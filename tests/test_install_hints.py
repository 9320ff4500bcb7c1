"""Unknown names: the distribution that provides a first-party name, did-you-mean, and the table kept current."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import clkernel
from clkernel.discovery import FIRST_PARTY, KINDS, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY_NAMES = [(kind, name, dist) for kind, dists in FIRST_PARTY.items() for dist, names in dists.items()
                     for name in names.split()]


def third_party_only() -> Registry:
    """A registry with one non-first-party plugin, as when no first-party package is installed."""

    class Module:
        @clkernel.hookimpl
        def register_plugins(register):
            register("gentle", lambda: None)

    registry = Registry()
    registry.add_module(Module, "gentle")
    return registry


def test_table_matches_the_registrations_of_the_installed_first_party_packages(monkeypatch):
    """Every package under plugins/ is in the table, with exactly the names its entry points register."""
    monkeypatch.delenv("CLKERNEL_DISABLE_PLUGINS", raising=False)
    packages = {tomllib.loads(p.read_text())["project"]["name"] for p in ROOT.glob("plugins/*/pyproject.toml")}
    table: dict[str, dict[str, list[str]]] = {}
    for kind, dists in FIRST_PARTY.items():
        assert kind in KINDS
        for dist, names in dists.items():
            table.setdefault(dist, {})[kind] = sorted(names.split())
    assert set(table) == packages
    registered: dict[str, dict[str, list[str]]] = {}
    for source in Registry.from_entry_points().sources:
        if source.distribution in packages:
            assert source.status == "ok", (source.entry_point, source.error)
            for kind, names in source.components.items():
                registered.setdefault(source.distribution, {}).setdefault(kind, []).extend(names)
    assert {d: {k: sorted(n) for k, n in kinds.items()} for d, kinds in registered.items()} == table
    assert len(FIRST_PARTY_NAMES) == len({(kind, name) for kind, name, _ in FIRST_PARTY_NAMES})


@pytest.mark.parametrize("kind, name, dist", FIRST_PARTY_NAMES, ids=lambda v: str(v))
def test_every_first_party_name_not_installed_names_its_distribution(kind, name, dist):
    with pytest.raises(RegistryError) as error:
        third_party_only().get(kind, name)
    installed = "gentle" if kind == "plugin" else "(none)"
    assert str(error.value) == (f"unknown {kind} {name!r}; installed {kind}s: {installed}; {name!r} is provided by "
                                f"{dist}: pip install {dist}")


def test_issue_examples():
    registry = third_party_only()
    with pytest.raises(RegistryError, match="^unknown plugin 'ewc'; installed plugins: gentle; 'ewc' is provided by "
                                            "clkernel-ewc: pip install clkernel-ewc$"):
        registry.get("plugin", "ewc")
    with pytest.raises(RegistryError, match="'pnn' is provided by clkernel-pnn: pip install clkernel-pnn$"):
        registry.get("model", "pnn")
    with pytest.raises(RegistryError, match=r"; did you mean 'replay'\?; 'replay' is provided by clkernel-replay: "
                                            r"pip install clkernel-replay$"):
        registry.load("plugin", "repaly")


def test_did_you_mean_over_installed_names_ignores_case_and_gives_up_on_nonsense(monkeypatch):
    monkeypatch.delenv("CLKERNEL_DISABLE_PLUGINS", raising=False)
    registry = Registry.from_entry_points()
    with pytest.raises(RegistryError, match=r"^unknown plugin 'repaly'; installed plugins: .*; did you mean "
                                            r"'replay'\?$"):
        registry.get("plugin", "repaly")
    with pytest.raises(RegistryError, match=r"; did you mean 'pnn'\?$"):
        registry.get("model", "PNN")
    with pytest.raises(RegistryError, match=r"^unknown logger 'zzzzzz'; installed loggers: [a-z, ]+$"):
        registry.get("logger", "zzzzzz")


def test_a_disabled_first_party_package_is_named_as_disabled(monkeypatch):
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "clkernel-ewc")
    with pytest.raises(RegistryError, match="'ewc' is provided by clkernel-ewc, which CLKERNEL_DISABLE_PLUGINS "
                                            "disables$"):
        Registry.from_entry_points().get("plugin", "ewc")
    env = {**os.environ, "CLKERNEL_DISABLE_PLUGINS": "ewc"}
    result = subprocess.run([sys.executable, "-m", "clkernel.cli", "show", "plugin", "ewc"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "ewc")
    installed = Registry.from_entry_points().available("plugin")
    assert "ewc" not in installed and "replay" in installed
    assert result.stderr.strip().splitlines()[-1] == (
        f"clkernel show: error: unknown plugin 'ewc'; installed plugins: {', '.join(installed)}; 'ewc' "
        "is provided by clkernel-ewc, which CLKERNEL_DISABLE_PLUGINS disables")


def test_a_near_name_that_clashes_gets_no_install_hint():
    registry = Registry()
    for source in ("one", "two"):
        registry.add_module(type("Module", (), {"register_plugins": staticmethod(clkernel.hookimpl(
            lambda register: register("replay", lambda: None)))}), source)
    with pytest.raises(RegistryError, match=r"^unknown plugin 'repaly'; installed plugins: \(none\); did you mean "
                                            r"'replay'\?$"):
        registry.get("plugin", "repaly")
    with pytest.raises(RegistryError, match="CLKERNEL_DISABLE_PLUGINS=one or CLKERNEL_DISABLE_PLUGINS=two"):
        registry.get("plugin", "replay")


def test_an_installed_package_that_does_not_register_a_name_says_so():
    registry = Registry()
    registry.add_module(type("Old", (), {}), clkernel.discovery.PluginSource("lwf", "clkernel-lwf", "0.1"))
    with pytest.raises(RegistryError, match="'lwf' is provided by clkernel-lwf, but the installed clkernel-lwf 0.1 "
                                            "does not register it: pip install -U clkernel-lwf$"):
        registry.get("plugin", "lwf")
