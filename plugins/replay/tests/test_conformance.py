"""The replay package's training plugins pass the kernel's conformance kit (:mod:`clkernel.testing`).

Cumulative and Joint are checked too: they are registered training plugins whose state (the experiences seen,
the streams trained on) must survive a checkpoint like any other. Composing them with replay is not a method
anyone would run, but it must work mechanically, which is what the kit's ``compose`` check asks.
"""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin
from clkernel_replay import Replay, ReservoirSamplingBuffer

CASES = {
    "replay": {},
    "replay-class-balanced-task-balanced": {"storage_policy": "class_balanced", "task_balanced": True},
    "replay-reservoir": {"storage_policy": "reservoir", "batch_size_mem": 8},
    "replay-greedy-class-balanced": {"storage_policy": "greedy_class_balanced"},
    "replay-random": {"storage_policy": "random", "seed": 3},
    "replay-herding": {"storage_policy": "herding"},
    "replay-closest-to-center": {"storage_policy": "closest_to_center"},
    "gdumb": {"mem_size": 150},
    "cumulative": {},
    "joint": {},
}


@pytest.mark.parametrize("case", CASES)
def test_registered_plugin_conforms(case):
    name = case.split("-")[0]
    results = check_training_plugin(name=name, options=CASES[case])
    assert [r.status for r in results] == ["passed"] * 4


def test_replay_built_around_a_policy_object_conforms():
    check_training_plugin(lambda: Replay(mem_size=60, storage_policy=ReservoirSamplingBuffer(60)))
