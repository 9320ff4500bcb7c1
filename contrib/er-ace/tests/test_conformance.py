"""ER-ACE and ER-AML pass the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("name, options", [
    ("er-ace", {"mem_size": 50}),
    ("er-aml", {"mem_size": 50, "temperature": 0.2, "storage_policy": "class_balanced"}),
])
def test_er_ace_conforms(name, options):
    results = check_training_plugin(name=name, options=options)
    assert [r.status for r in results] == ["passed"] * 4
