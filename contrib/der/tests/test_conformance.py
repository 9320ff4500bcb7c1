"""DER and DER++ pass the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("name, options", [
    ("der", {"mem_size": 50, "alpha": 0.5}),
    ("derpp", {"mem_size": 50, "alpha": 0.5, "beta": 1.0, "storage_policy": "class_balanced"}),
])
def test_der_conforms(name, options):
    results = check_training_plugin(name=name, options=options)
    assert [r.status for r in results] == ["passed"] * 4
