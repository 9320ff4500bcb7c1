"""GSS-greedy passes the kernel's conformance kit (:mod:`clkernel.testing`), resuming inside an experience too."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_gss_conforms():
    results = check_training_plugin(name="gss", options={"mem_size": 50, "mem_strength": 5})
    assert [r.status for r in results] == ["passed"] * 4
