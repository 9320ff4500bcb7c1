"""MIR passes the kernel's conformance kit (:mod:`clkernel.testing`), resuming inside an experience too."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_mir_conforms():
    results = check_training_plugin(name="mir", options={"mem_size": 50, "subsample": 20, "batch_size_mem": 8})
    assert [r.status for r in results] == ["passed"] * 4
