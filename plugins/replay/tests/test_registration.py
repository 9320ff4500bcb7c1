"""Registration: the four plugins by name, their options, bad options."""

from __future__ import annotations

import pytest

from clkernel.discovery import Registry
from clkernel_replay import GDumb, Joint, Replay, registration


def registry():
    reg = Registry()
    source = reg.add_module(registration, "replay")
    assert source.status == "ok", source.error
    return reg


def test_registers_replay_gdumb_cumulative_and_joint():
    reg = registry()
    assert reg.available("plugin") == ["cumulative", "gdumb", "joint", "replay"]
    assert set(reg.get("plugin", "replay").options()) == {"mem_size", "batch_size_mem", "task_balanced",
                                                         "storage_policy", "seed"}
    assert reg.get("plugin", "replay").summary.startswith("Experience replay")


def test_factories_build_configured_plugins():
    reg = registry()
    replay = reg.load("plugin", "replay", mem_size=500, batch_size_mem=32, storage_policy="class_balanced")
    assert isinstance(replay, Replay) and replay.mem_size == 500 and replay.batch_size_mem == 32
    assert type(replay.storage_policy).__name__ == "ClassBalancedBuffer"
    assert replay.storage_policy.max_size == 500
    herding = reg.load("plugin", "replay", mem_size=50, storage_policy="herding")
    assert type(herding.storage_policy.selection).__name__ == "HerdingSelection"
    assert isinstance(reg.load("plugin", "gdumb", mem_size=10), GDumb)
    assert isinstance(reg.load("plugin", "joint"), Joint)


def test_bad_options_are_reported_with_their_name():
    reg = registry()
    with pytest.raises(ValueError, match="mem_size must be a positive integer, got -500"):
        reg.load("plugin", "replay", mem_size=-500)
    with pytest.raises(LookupError, match="memory"):
        reg.load("plugin", "replay", memory=3)
