"""RAR passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("name, options", [
    ("rar", {"mem_size": 50, "repeats": 2, "max_shift": 1}),
    ("rar", {"mem_size": 50, "repeats": 1, "max_shift": 1, "flip": True, "storage_policy": "class_balanced"}),
])
def test_rar_conforms(name, options):
    results = check_training_plugin(name=name, options=options)
    assert [r.status for r in results] == ["passed"] * 4
