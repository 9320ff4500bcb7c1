"""BiC passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_bic_conforms():
    results = check_training_plugin(name="bic", options={"mem_size": 100, "stage2_epochs": 20})
    assert [r.status for r in results] == ["passed"] * 4
