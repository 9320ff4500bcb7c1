"""iCaRL passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_icarl_conforms():
    results = check_training_plugin(name="icarl", options={"mem_size": 40})
    assert [r.status for r in results] == ["passed"] * 4
